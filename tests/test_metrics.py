import numpy as np
import pytest

from orandnet_lib.core.metrics import ConfusionMatrix, Scores, ThresholdSweep, cam_to_mask


def test_confusion_matrix_by_hand_with_ignore():
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 2, 0, 1]])
    cm = ConfusionMatrix(3).update(pred, gt).matrix
    # rows = ground truth, columns = prediction; the pixel labelled 255 is not counted.
    expected = np.array([[1, 1, 1],
                         [0, 2, 0],
                         [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)
    s = Scores.from_matrix(cm)
    np.testing.assert_allclose(s.precision, [1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(s.recall, [1 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(s.iou, [1 / 4, 2 / 3, 1 / 3])
    assert s.miou == pytest.approx((1 / 4 + 2 / 3 + 1 / 3) / 3)
    assert s.summary()["precision"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)


def test_confusion_accumulates_and_absent_class_is_left_out_of_means():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    cm.update(np.array([1, 1]), np.array([1, 0]))
    np.testing.assert_array_equal(cm.matrix[:2, :2], [[1, 1], [0, 2]])
    s = cm.scores()
    assert np.isnan(s.iou[2]) and np.isnan(s.iou[3])  # classes 2, 3 never occur
    assert s.miou == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_confusion_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).update(np.array([2]), np.array([0]))


def test_cam_to_mask_uses_only_given_classes_and_background_score():
    cams = np.array([[[0.9, 0.2], [0.5, 0.1]],
                     [[0.1, 0.6], [0.5, 0.05]]], dtype=np.float32)
    mask = cam_to_mask(cams, [3, 7], background_score=0.3)
    # pixel (1,0): tie 0.5 / 0.5 goes to the first class; (1,1): both below 0.3
    np.testing.assert_array_equal(mask, [[3, 7], [3, 0]])
    np.testing.assert_array_equal(cam_to_mask(cams, [3, 7], background_score=0.9), [[0, 0], [0, 0]])
    assert cam_to_mask(np.zeros((0, 2, 2)), [], 0.1).tolist() == [[0, 0], [0, 0]]


def _brute_force(cams_list, ids_list, gts, thresholds, c):
    out = []
    for t in thresholds:
        cm = ConfusionMatrix(c)
        for cams, ids, gt in zip(cams_list, ids_list, gts):
            cm.update(cam_to_mask(cams, ids, t), gt)
        out.append(cm.matrix)
    return np.stack(out)


def test_sweep_matches_per_threshold_evaluation():
    rng = np.random.default_rng(1)
    cams_list, ids_list, gts = [], [], []
    for k in range(5):
        ids = np.sort(rng.choice(np.arange(1, 5), size=1 + k % 3, replace=False))
        cams_list.append(rng.random((len(ids), 7, 9)).astype(np.float32))
        ids_list.append(ids)
        gt = rng.integers(0, 5, size=(7, 9))
        gt[rng.random((7, 9)) < 0.1] = 255
        gts.append(gt)
    cams_list.append(np.zeros((0, 7, 9), np.float32))  # an image without foreground classes
    ids_list.append(np.zeros(0, int))
    gts.append(np.zeros((7, 9), int))
    thresholds = np.linspace(0, 0.95, 20)
    sweep = ThresholdSweep(5, thresholds)
    for cams, ids, gt in zip(cams_list, ids_list, gts):
        sweep.update(cams, ids, gt)
    np.testing.assert_array_equal(sweep.result().matrices, _brute_force(cams_list, ids_list, gts, thresholds, 5))


def test_sweep_best_and_crossover_on_constructed_case():
    # One object of class 1 on the left half. The CAM is 0.8 on the object, 0.5 on the
    # column next to it and 0.2 elsewhere: thresholds below 0.5 spill onto background.
    gt = np.zeros((4, 8), int)
    gt[:, :4] = 1
    cam = np.full((1, 4, 8), 0.2, np.float32)
    cam[0, :, :4] = 0.8
    cam[0, :, 4] = 0.5
    sweep = ThresholdSweep(2, [0.1, 0.3, 0.6, 0.9])
    sweep.update(cam, [1], gt)
    r = sweep.result()
    # t=0.1: everything is class 1 -> IoU(bg)=0, IoU(1)=16/32. t=0.3: one spill column:
    # IoU(1)=16/20, IoU(bg)=12/16. t=0.6: exact. t=0.9: nothing predicted.
    np.testing.assert_allclose(r.miou, [(0 + 0.5) / 2, (0.8 + 0.75) / 2, 1.0, (0.5 + 0) / 2])
    assert r.best_index == 2
    assert r.best()["threshold"] == pytest.approx(60.0)
    # precision: t=0.1 -> bg undefined, class 1: 16/32 = 0.5; recall: bg 0, class 1: 1 -> 0.5
    # so mean precision (0.5) already reaches mean recall (0.5) at the first threshold.
    assert r.precision[0] == pytest.approx(0.5) and r.recall[0] == pytest.approx(0.5)
    assert r.crossover_index == 0


def test_crossover_is_first_threshold_where_precision_reaches_recall():
    gt = np.zeros((1, 10), int)
    gt[0, :2] = 1
    cam = np.array([[[0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3]]], np.float32)
    sweep = ThresholdSweep(2, [0.2, 0.45, 0.7])
    sweep.update(cam, [1], gt)
    r = sweep.result()
    # t=0.2: all pixels class 1 -> precision (bg undefined, 2/10) = 0.2, recall (0, 1) = 0.5
    # t=0.45: 4 pixels class 1 -> precision (6/6, 2/4) = 0.75, recall (6/8, 1) = 0.875
    # t=0.7: exact -> 1 and 1: the first threshold where precision reaches recall.
    np.testing.assert_allclose(r.precision, [0.2, 0.75, 1.0])
    np.testing.assert_allclose(r.recall, [0.5, 0.875, 1.0])
    assert r.crossover_index == 2
    assert r.crossover()["threshold"] == pytest.approx(70.0)


def test_sweep_rejects_unsorted_thresholds():
    with pytest.raises(ValueError):
        ThresholdSweep(2, [0.5, 0.1])


def test_seed_quality_counts_confident_labels_by_hand():
    # Same 1 x 10 row: class 1 on the first two pixels, the CAM falls off to the right.
    gt = np.zeros((1, 10), int)
    gt[0, :2] = 1
    cam = np.array([[[0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3]]], np.float32)
    sweep = ThresholdSweep(2, [0.2, 0.45, 0.7, 0.95])
    sweep.update(cam, [1], gt)
    q = sweep.result().seed_quality()
    # t=0.2: all 10 marked foreground, 2 right; t=0.45: 4 marked, 2 right, 6 background all right;
    # t=0.7: 2 marked, both right; t=0.95: no foreground, 10 background of which 8 right.
    np.testing.assert_allclose(q["fg_share"], [1.0, 0.4, 0.2, 0.0])
    np.testing.assert_allclose(q["fg_precision"], [0.2, 0.5, 1.0, np.nan])
    np.testing.assert_allclose(q["bg_share"], [0.0, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(q["bg_precision"], [np.nan, 1.0, 1.0, 0.8])


def test_precision_at_recall_and_the_area_under_the_curve_by_hand():
    from orandnet_lib.core.metrics import SweepResult, equal_recall, pr_auc, precision_at_recall

    # recall falls 90 -> 60 -> 30 as the background score rises; precision rises 40 -> 60 -> 90
    assert precision_at_recall([90, 60, 30], [40, 60, 90], 75) == 50.0
    assert precision_at_recall([90, 60, 30], [40, 60, 90], 60) == 60.0
    assert np.isnan(precision_at_recall([90, 60, 30], [40, 60, 90], 95))  # beyond the curve: not extrapolated
    # trapezoids over recall 30..90: (30 * (90 + 60) / 2 + 30 * (60 + 40) / 2) / 100 = 37.5
    assert pr_auc([90, 60, 30], [40, 60, 90]) == 37.5
    assert pr_auc([0, 100], [50, 50]) == 50.0
    # a sweep counts its empty class maps and the classes it never predicts
    sweep = ThresholdSweep(3, [0.2, 0.6])
    gt = np.array([[1, 1, 2, 0]])
    sweep.update(np.array([[[0.9, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]]), [1, 2], gt)
    result = sweep.result()
    assert (result.maps, result.empty_maps, result.empty_share) == (2, 1, 50.0)
    assert result.at(0)["unpredicted"] == 1  # class 2 is in the ground truth, never predicted
    a = equal_recall(result, result)
    assert a["precision"] == a["baseline_precision"] and a["difference"] == 0.0
    described = result.describe()
    assert described["curve"]["recall"] == list(np.round(100 * result.recall, 2)) and described["empty_maps"] == 50.0
    assert isinstance(SweepResult(np.array([0.5]), result.matrices[:1]).empty_share, float)
