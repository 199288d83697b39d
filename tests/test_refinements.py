"""The refinement registry: the registered refinements keep the numbers of the functions
they wrap, and a new refinement is one function plus one registration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from orandnet_lib.core.errors import ConfigError
from orandnet_lib.methods.refine import (REFINEMENTS, RefineInputs, adaptive_avg_pool, cam_probabilities,
                                         crf_probabilities, random_walk, resize_bilinear, transition_matrix)


def inputs(**changes) -> RefineInputs:
    rng = np.random.default_rng(0)
    base = RefineInputs(image=rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
                        cams=rng.random((2, 16, 20)).astype(np.float32), class_ids=np.array([1, 3]), background=0.3,
                        boundary=rng.random((4, 5)), settings={"beta": 10.0, "exp_times": 3, "radius": 2,
                                                               "crf_iterations": 2})
    return dataclasses.replace(base, **changes)


def test_registered_names_labels_and_attributes():
    assert REFINEMENTS.names()[:3] == ["cam", "crf", "rw"]
    assert [REFINEMENTS.label(n) for n in ("cam", "crf", "rw")] == ["CAM", "dense CRF", "random walk"]
    assert REFINEMENTS.entry("rw").attrs["needs_boundary"] is True
    assert REFINEMENTS.entry("crf").attrs["uses_background"] is True
    with pytest.raises(ConfigError, match="known: cam, crf, rw"):
        REFINEMENTS.get("nope")


def test_the_refinements_are_the_wrapped_numerics():
    x = inputs()
    np.testing.assert_array_equal(REFINEMENTS.get("cam")(x), x.cams)
    q = crf_probabilities(x.image, cam_probabilities(x.cams, 0.3), 2)
    np.testing.assert_array_equal(REFINEMENTS.get("crf")(x), q[1:] / np.maximum(q[1:] + q[:1], 1e-8))
    walked = random_walk(adaptive_avg_pool(x.cams, (4, 5)) * (1 - x.boundary), transition_matrix(x.boundary, 2, 10.0),
                         3)
    up = np.maximum(resize_bilinear(walked, (16, 20)), 0).astype(np.float32)
    expected = up / up.max()  # IRN's: one maximum over all classes and pixels
    out = REFINEMENTS.get("rw")(x)
    np.testing.assert_array_equal(out, expected)
    assert out.shape == x.cams.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="boundary"):
        REFINEMENTS.get("rw")(inputs(boundary=None))


def test_a_new_refinement_is_scored_and_written_by_stage_4(tiny_voc, tmp_path):
    from orandnet_lib.core.keys import ArtifactKey, read_key
    from orandnet_lib.data.voc import VOCDataset
    from orandnet_lib.methods.cams import CamStore, CamStoreWriter
    from orandnet_lib.methods.refinement import refine_variant
    from orandnet_lib.stages import s4_refinement as s4

    ds = VOCDataset(tiny_voc, "train")
    with CamStoreWriter(tmp_path / "cams") as w:
        for i in ds.ids:
            mask = ds.load_mask(i)
            ids = np.flatnonzero(ds.load(i).labels) + 1
            w.add(i, np.stack([(mask == k).astype(np.float32) * 0.8 + 0.1 for k in ids]), ids)
    store = CamStore(tmp_path / "cams")

    @REFINEMENTS.register("square", label="squared CAM", settings=())
    def square(x: RefineInputs) -> np.ndarray:
        return x.cams ** 2

    try:
        key = ArtifactKey("pseudo_masks", {"refinement": "square"}, data="tiny")
        r = refine_variant(store, ds, tmp_path / "pm", key, refinements=("cam", "square"),
                           pseudo_mask_refinement="square", background=0.25, operating_point=0.5, settings={},
                           workers=2, progress=False)
        assert set(r.scores) == {"cam", "square"} and r.pseudo_masks["refinement"] == "square"
        assert read_key(tmp_path / "pm")["digest"] == key.digest
        p = s4.Params(variants=("cnn",), refinements=("cam", "square"), pseudo_mask_refinement="square")
        assert s4.artifact_keys(p, {"train": "d"}, {"cams:cnn_train": "u"})["pseudo_masks:cnn"].spec == \
            {"refinement": "square", "background": 0.25, "threshold_rule": "fixed", "reference_background": 0.15,
             "operating_point_rule": "otsu", "min_ignore_band": 0.1}
    finally:
        REFINEMENTS.remove("square")
