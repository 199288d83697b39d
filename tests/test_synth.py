import filecmp
import gzip
import struct

import numpy as np
import pytest

from orandnet_lib.data import fashion_mnist
from orandnet_lib.data import synth
from orandnet_lib.core.errors import DataError
from orandnet_lib.data.voc import VOCDataset

from conftest import requires_fashion_mnist


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_errors(tmp_path, monkeypatch):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    for split, stem in (("train", "train"), ("test", "t10k")):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.array([3, 9]))
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path))
    x, y = fashion_mnist.load("test")
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 9]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*not found.*apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.load("test")
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere does not exist"):
        fashion_mnist.load("train")


def test_config_validation():
    with pytest.raises(ValueError, match="not in Fashion-MNIST"):
        synth.SceneConfig(classes=("tshirt", "unicorn"))
    with pytest.raises(ValueError, match="unknown generator parameters"):
        synth.SceneConfig.from_dict({"image_size": 64, "colour": "red"})
    assert synth.SceneConfig.from_dict({"object_size": [0.1, 0.2]}).object_size == (0.1, 0.2)


@requires_fashion_mnist
def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = synth.SceneConfig(image_size=40, n_train=6, n_val=2, seed=11)
    a = synth.generate(tmp_path / "a", cfg, progress=False)
    b = synth.generate(tmp_path / "b", cfg, progress=False)
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors
    other = synth.generate(tmp_path / "c", synth.SceneConfig(image_size=40, n_train=6, n_val=2, seed=12), progress=False)
    assert (a / "JPEGImages" / "train_00000.jpg").read_bytes() != (other / "JPEGImages" / "train_00000.jpg").read_bytes()


@requires_fashion_mnist
def test_generation_is_cached_and_regenerated_on_config_change(tmp_path):
    cfg = synth.SceneConfig(image_size=32, n_train=3, n_val=1)
    root = synth.generate(tmp_path / "d", cfg, progress=False)
    stamp = (root / "dataset.json").stat().st_mtime_ns
    synth.generate(root, cfg, progress=False)
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    assert synth.is_cached(root, cfg)
    bigger = synth.SceneConfig(image_size=32, n_train=4, n_val=1)
    assert not synth.is_cached(root, bigger)
    synth.generate(root, bigger, progress=False)
    assert len(VOCDataset(root, "train")) == 4


@requires_fashion_mnist
def test_masks_are_exact(monkeypatch):
    """On a black background with no noise, blur or distractors, an image pixel is non-black
    exactly where the mask is foreground."""
    cfg = synth.SceneConfig(image_size=64, n_train=1, n_val=0, noise_std=0, background_blur=0,
                            distractors_per_scene=(0, 0), objects_per_scene=(2, 3))
    src = synth.load_sources(["train"])
    monkeypatch.setattr(synth, "background", lambda *a: np.zeros((64, 64, 3), np.float32))
    for i in range(20):
        image, mask, meta = synth.make_scene(i, "train", cfg, src)
        np.testing.assert_array_equal(image.max(axis=2) > 0, mask > 0)
        in_mask = {cfg.classes[k - 1] for k in np.unique(mask) if k}
        assert in_mask == {o["class"] for o in meta["objects"]}
        for o in meta["objects"]:
            assert o["area"] > 0


@requires_fashion_mnist
def test_context_bias_extremes_pick_the_background(monkeypatch):
    src = synth.load_sources(["train"])
    always = synth.SceneConfig(image_size=32, context_bias=1.0)
    never = synth.SceneConfig(image_size=32, context_bias=0.0)
    for i in range(30):
        meta = synth.make_scene(i, "train", always, src)[2]
        assert meta["background"] == synth.PHOTOS[always.classes.index(meta["anchor"])] and meta["preferred_background"]
        assert not synth.make_scene(i, "train", never, src)[2]["preferred_background"]


def test_a_scene_does_not_depend_on_the_scenes_made_before_it(smoke_benchmark):
    """Scene 7 made alone equals scene 7 made after scenes 0-6 (each scene has its own generator)."""
    cfg = synth.SceneConfig(image_size=48, n_train=12, n_val=4, seed=3)  # the smoke_benchmark fixture's config
    ds = VOCDataset(smoke_benchmark, "train")
    _, mask, meta = synth.make_scene(7, "train", cfg, synth.load_sources(["train"]))
    np.testing.assert_array_equal(mask, ds.load_mask("train_00007"))
    assert meta == synth.read_scenes(smoke_benchmark)["train_00007"]
