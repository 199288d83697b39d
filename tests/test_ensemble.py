import numpy as np
import pytest

from orandnet_lib.methods.cams import CamStore, CamStoreWriter, sweep_store, sweep_stream
from orandnet_lib.methods.ensemble import fuse, fused_cams, write_fused_store
from orandnet_lib.core.errors import DataError
from orandnet_lib.data.voc import VOCDataset

A = np.array([[0.0, 0.5], [1.0, 0.2]])
B = np.array([[0.4, 0.5], [0.0, 1.0]])
C = np.array([[0.5, 1.0], [0.5, 0.5]])


def test_two_maps_by_hand():
    np.testing.assert_allclose(fuse([A, B], "or"), [[0.4, 0.75], [1.0, 1.0]])
    np.testing.assert_allclose(fuse([A, B], "and"), [[0.0, 0.25], [0.0, 0.2]])
    np.testing.assert_allclose(fuse([A, B], "mean"), [[0.2, 0.5], [0.5, 0.6]])
    np.testing.assert_allclose(fuse([A, B], "max"), [[0.4, 0.5], [1.0, 1.0]])
    np.testing.assert_allclose(fuse([A, B], "min"), [[0.0, 0.5], [0.0, 0.2]])


def test_three_maps_and_offset():
    # OR of three: 1 - (1-a)(1-b)(1-c); at (0,0): 1 - 1 * 0.6 * 0.5 = 0.7
    np.testing.assert_allclose(fuse([A, B, C], "or")[0, 0], 0.7)
    np.testing.assert_allclose(fuse([A, B, C], "and")[0, 1], 0.25)
    # offset 0.15 on the second map, clipped to 1: B' = [[0.55, 0.65], [0.15, 1.0]]
    np.testing.assert_allclose(fuse([A, B], "and", offsets=[0.0, 0.15]), [[0.0, 0.325], [0.15, 0.2]])
    np.testing.assert_allclose(fuse([A, B], "or", offsets=[0.0, 0.15]), [[0.55, 0.825], [1.0, 1.0]])


def test_ordering_of_operators_on_random_maps():
    rng = np.random.default_rng(0)
    maps = [rng.random((3, 5, 6)) for _ in range(3)]
    o, mx, mean, mn, a = (fuse(maps, op) for op in ("or", "max", "mean", "min", "and"))
    assert np.all(o >= mx - 1e-7) and np.all(mx >= mean - 1e-7) and np.all(mean >= mn - 1e-7) and np.all(mn >= a - 1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="operator"):
        fuse([A], "xor")
    with pytest.raises(ValueError, match="differ in shape"):
        fuse([A, np.zeros((3, 3))], "or")
    with pytest.raises(ValueError, match="offsets"):
        fuse([A, B], "or", offsets=[0.1])


def _store(path, items):
    with CamStoreWriter(path, {"split": "train"}) as w:
        for image_id, cams, ids in items:
            w.add(image_id, cams, np.array(ids))
    return CamStore(path)


def test_fused_store_round_trip_and_sweep(tmp_path, tiny_voc):
    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(1)
    items_a, items_b = [], []
    for image_id in ds.ids:
        labels = ds.load(image_id).labels
        ids = np.flatnonzero(labels) + 1
        items_a.append((image_id, rng.random((len(ids), 20, 24)), ids))
        items_b.append((image_id, rng.random((len(ids), 20, 24)), ids))
    sa, sb = _store(tmp_path / "a", items_a), _store(tmp_path / "b", items_b)
    out = CamStore(write_fused_store({"a": sa, "b": sb}, ds.ids, "and", tmp_path / "and", offsets={"b": 0.15}))
    assert out.meta["operator"] == "and" and out.meta["offsets"] == {"b": 0.15}
    for (image_id, a, ids), (_, b, _) in zip(items_a, items_b):
        cams, got_ids = out[image_id]
        np.testing.assert_allclose(cams, a * np.clip(b + 0.15, 0, 1), atol=2e-3)
        assert got_ids.tolist() == ids.tolist()
    streamed = sweep_stream(fused_cams({"a": sa, "b": sb}, ds.ids, "and", {"b": 0.15}), ds)
    stored = sweep_store(out, ds)
    np.testing.assert_allclose(streamed.miou, stored.miou, atol=0.02)


def test_sources_that_disagree_on_classes_are_refused(tmp_path):
    sa = _store(tmp_path / "a", [("x", np.zeros((1, 2, 2)), [1])])
    sb = _store(tmp_path / "b", [("x", np.zeros((1, 2, 2)), [2])])
    with pytest.raises(DataError, match="x: CAM store .* has classes \\[2\\]"):
        list(fused_cams({"a": sa, "b": sb}, ["x"], "or"))


def test_variants_in_one_pass_match_separate_sweeps(tmp_path, tiny_voc):
    from orandnet_lib.methods.ensemble import standard_variants, sweep_variants

    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(2)
    items = {"cnn": [], "vit": []}
    for image_id in ds.ids:
        ids = np.flatnonzero(ds.load(image_id).labels) + 1
        for k in items:
            items[k].append((image_id, rng.random((len(ids), 20, 24)), ids))
    stores = {k: _store(tmp_path / k, v) for k, v in items.items()}
    variants = standard_variants(["cnn", "vit"], offset_source="vit", offset=0.15)
    assert list(variants) == ["cnn", "vit", "mean", "max", "or", "and", "or+offset", "and+offset"]
    sweeps = sweep_variants(stores, ds, variants, progress=False)
    np.testing.assert_array_equal(sweeps["cnn"].matrices, sweep_store(stores["cnn"], ds).matrices)
    alone = sweep_stream(fused_cams(stores, ds.ids, "and", {"vit": 0.15}), ds)
    np.testing.assert_array_equal(sweeps["and+offset"].matrices, alone.matrices)


def test_error_overlap_counts_shared_mistakes(tmp_path):
    from orandnet_lib.core.metrics import ErrorOverlap

    gt = np.array([[0, 0, 1, 1]])
    a = np.array([[1, 0, 1, 0]])  # FP of class 1 at pixel 0, FN of class 1 at pixel 3
    b = np.array([[1, 1, 0, 0]])  # FP of class 1 at pixels 0 and 1, FN at pixels 2 and 3
    ov = ErrorOverlap(2)
    ov.update(a, b, gt)
    t = ov.table()
    assert t["fp_a"][1] == 1 and t["fp_b"][1] == 2 and t["fp_shared"][1] == 1
    assert t["fp_jaccard"][1] == pytest.approx(1 / 2)
    assert t["fn_a"][1] == 1 and t["fn_b"][1] == 2 and t["fn_shared"][1] == 1
    assert t["fn_jaccard"][1] == pytest.approx(1 / 2)


def test_an_unknown_operator_is_refused_with_the_known_ones():
    from orandnet_lib.core.errors import ConfigError
    from orandnet_lib.methods.ensemble import OPERATORS, standard_operators

    with pytest.raises(ConfigError, match="unknown ensemble operator 'xor'; known: mean, max, or, and, min"):
        fuse([A, B], "xor")
    assert OPERATORS.names() == ["mean", "max", "or", "and", "min"]
    assert standard_operators() == ["mean", "max", "or", "and"]  # min is not a standard variant


@pytest.fixture
def geometric_mean():
    """A toy operator, registered for one test: the geometric mean of the maps."""
    from orandnet_lib.methods.ensemble import OPERATORS

    OPERATORS.add("geo", lambda stack: np.prod(stack, axis=0) ** (1.0 / len(stack)), label="geometric mean",
                  standard=True, offset=True)
    yield "geo"
    OPERATORS.remove("geo")


def test_a_registered_operator_is_used_by_fuse_and_the_standard_variants(geometric_mean, tmp_path, tiny_voc):
    from orandnet_lib.methods.ensemble import OPERATORS, standard_variants, sweep_variants

    np.testing.assert_allclose(fuse([A, B], "geo"), np.sqrt(A * B), atol=1e-7)
    variants = standard_variants(["cnn", "vit"], offset_source="vit", offset=0.15)
    assert list(variants) == ["cnn", "vit", "mean", "max", "or", "and", "geo", "or+offset", "and+offset",
                              "geo+offset"]
    maps = {"cnn": A, "vit": B}
    np.testing.assert_allclose(variants["geo+offset"].compute(maps), np.sqrt(A * np.clip(B + 0.15, 0, 1)), atol=1e-6)
    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(3)
    items = {k: [] for k in ("cnn", "vit")}
    for image_id in ds.ids:
        ids = np.flatnonzero(ds.load(image_id).labels) + 1
        for k in items:
            items[k].append((image_id, rng.random((len(ids), 20, 24)), ids))
    stores = {k: _store(tmp_path / k, v) for k, v in items.items()}
    sweeps = sweep_variants(stores, ds, variants, progress=False)
    alone = sweep_stream(fused_cams(stores, ds.ids, "geo"), ds)
    np.testing.assert_array_equal(sweeps["geo"].matrices, alone.matrices)
    OPERATORS.remove("geo")
    assert "geo" not in standard_variants(["cnn", "vit"])


def test_and_and_or_are_compared_with_each_source_at_its_own_recall(tmp_path, tiny_voc):
    """Without an offset the plain AND and OR are compared; each source's best-mIoU recall is
    where AND's precision is read, None where AND's curve does not reach it."""
    from orandnet_lib.core.metrics import equal_recall
    from orandnet_lib.methods.ensemble import compare_to_sources, standard_variants, sweep_variants

    ds = VOCDataset(tiny_voc, "train")
    rng = np.random.default_rng(4)
    items = {"cnn": [], "vit": []}
    for image_id in ds.ids:
        ids = np.flatnonzero(ds.load(image_id).labels) + 1
        for k, scale in (("cnn", 1.0), ("vit", 0.5)):
            items[k].append((image_id, scale * rng.random((len(ids), 20, 24)), ids))
    stores = {k: _store(tmp_path / k, v) for k, v in items.items()}
    sweeps = sweep_variants(stores, ds, standard_variants(["cnn", "vit"]), progress=False)
    facts = compare_to_sources(sweeps, ["cnn", "vit"])
    best = {n: s.best() for n, s in sweeps.items()}
    assert (facts["and_name"], facts["or_name"]) == ("and", "or")
    assert facts["top"] == max(best, key=lambda n: best[n]["miou"]) and facts["top_miou"] == best[facts["top"]]["miou"]
    assert {facts["weak"], facts["top_single"]} == {"cnn", "vit"}
    assert facts["weak_miou"] <= facts["top_single_miou"] and facts["and_miou"] == best["and"]["miou"]
    for a in facts["at_recall"]:
        expected = equal_recall(sweeps["and"], sweeps[a["source"]])
        assert a["recall"] == best[a["source"]]["recall"] == expected["recall"]
        assert a["precision"] == (None if np.isnan(expected["precision"]) else expected["precision"])
    assert facts["and_more_precise"] == all(equal_recall(sweeps["and"], sweeps[n])["difference"] > 0 for n in ("cnn", "vit"))
    assert facts["or_highest_recall"] == facts["highest_recall"].startswith("or")
    assert facts["highest_recall_value"] == max(b["recall"] for b in best.values())
