"""The rest of the bad-input catalogue (the others live beside their modules: test_voc for
data folders, test_profiles / test_runner for profiles and parameters, test_store and
test_models_cams for atomic writes and NaN in CAM stores)."""

import numpy as np
import pytest
import torch

from orandnet_lib.methods.cams import CamStore, compute_store, sweep_store
from orandnet_lib.core.errors import DataError
from orandnet_lib.nets.classifiers import create_classifier
from orandnet_lib.methods.segmentation import DeepLab
from orandnet_lib.core.train import load_weights
from orandnet_lib.data.voc import VOCDataset, VOCWriter

from conftest import write_tiny_voc

SMALL = {"backbone": "resnet18", "backbone_kwargs": {"channels": (8, 8, 16, 16), "layers": (1, 1, 1, 1)}}


def test_checkpoint_of_another_class_count_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    trained = create_classifier("cnn", 20, **SMALL)  # a 21-name VOC run
    path = tmp_path / "cnn-voc.pt"
    torch.save({"model": trained.state_dict()}, path)
    mine = create_classifier("cnn", 6, **SMALL)  # labels.txt with 7 names
    with pytest.raises(ValueError, match=r"cnn-voc\.pt: layer 'classifier.weight' has shape \(20, 16, 1, 1\).*another number of classes"):
        load_weights(mine, path)
    seg = DeepLab(7, "resnet18", head="aspp", rates=(1,), backbone_kwargs=SMALL["backbone_kwargs"])
    torch.save({"model": DeepLab(21, "resnet18", head="aspp", rates=(1,), backbone_kwargs=SMALL["backbone_kwargs"]).state_dict()},
               tmp_path / "deeplab.pt")
    with pytest.raises(ValueError, match="another number of classes"):
        load_weights(seg, tmp_path / "deeplab.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(mine, tmp_path / "missing.pt")


def test_an_image_without_foreground_flows_through_cams_and_scores(tmp_path):
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    with VOCWriter(root, ("background", "disc")) as w:
        mask = np.zeros((16, 16), np.uint8)
        w.add("train", "only_background", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mask)
        mask2 = mask.copy()
        mask2[4:10, 4:10] = 1
        w.add("train", "with_disc", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), mask2)
    ds = VOCDataset(root, "train")
    assert ds.load("only_background").labels.sum() == 0
    torch.manual_seed(0)
    model = create_classifier("cnn", 1, **SMALL)
    store = CamStore(compute_store(model, ds, tmp_path / "cams", scales=(1.0,), progress=False))
    cams, ids = store["only_background"]
    assert cams.shape == (0, 16, 16) and ids.size == 0
    best = sweep_store(store, ds).best()  # the background-only image counts as all background
    assert 0 <= best["miou"] <= 100


def test_cam_store_from_another_dataset_or_split_is_refused(tmp_path):
    a = VOCDataset(write_tiny_voc(tmp_path / "a"), "train")
    b_root = write_tiny_voc(tmp_path / "b", size=(20, 24))
    (b_root / "ImageSets" / "Segmentation" / "train.txt").write_text("train_0\ntrain_1\n")  # same ids, other data
    b = VOCDataset(b_root, "train")
    torch.manual_seed(0)
    model = create_classifier("cnn", a.num_classes - 1, **SMALL)
    store = CamStore(compute_store(model, a, tmp_path / "cams", scales=(1.0,), progress=False))
    sweep_store(store, a)  # its own dataset: fine
    with pytest.raises(DataError, match="computed on another dataset"):
        sweep_store(store, b)
    with pytest.raises(DataError, match="computed on split 'train', not 'val'"):
        sweep_store(store, VOCDataset(a.root, "val"))
