"""The CAM-method and classifier-kind registries: unknown names are refused with the known
ones, and a registered entry is used with no other edit."""

import numpy as np
import pytest
import torch

from orandnet_lib.core.errors import ConfigError
from orandnet_lib.data.voc import VOCDataset
from orandnet_lib.methods.cams import CAM_METHODS, CamStore, cam_function, compute_store
from orandnet_lib.nets.classifiers import CLASSIFIER_KINDS, CNNCAM, create_classifier

SMALL_RESNET = {"backbone": "resnet18", "backbone_kwargs": {"channels": (8, 16, 16, 32), "layers": (1, 1, 1, 1)}}


def test_unknown_cam_method_and_classifier_kind_are_refused_with_the_known_ones():
    model = create_classifier("cnn", 3, **SMALL_RESNET)
    with pytest.raises(ConfigError, match="unknown CAM method 'scorecam'; known: cam, gradcam, attribution"):
        cam_function(model, "scorecam")
    with pytest.raises(ConfigError, match="CNNCAM has no Grad-CAM"):
        cam_function(model, "gradcam")
    with pytest.raises(ConfigError, match="unknown classifier kind 'mlp'; known: cnn, vit"):
        create_classifier("mlp", 3)
    assert CAM_METHODS.label("gradcam") == "Grad-CAM" and CLASSIFIER_KINDS.names() == ["cnn", "vit"]


@pytest.fixture
def doubled_cam():
    """A toy CAM method, registered for one test: twice the CAM head."""
    CAM_METHODS.add("double", lambda model: (lambda x: 2 * model.cam(x)), label="doubled CAM")
    yield "double"
    CAM_METHODS.remove("double")


def test_a_registered_cam_method_is_used_by_compute_store(doubled_cam, tiny_voc, tmp_path):
    torch.manual_seed(0)
    ds = VOCDataset(tiny_voc, "train")
    model = create_classifier("cnn", ds.num_classes - 1, **SMALL_RESNET).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cam_function(model, "double")(x), 2 * model.cam(x))
    doubled = CamStore(compute_store(model, ds, tmp_path / "double", scales=(1.0,), method="double", progress=False))
    plain = CamStore(compute_store(model, ds, tmp_path / "plain", scales=(1.0,), progress=False))
    assert doubled.meta["method"] == "double"
    for image_id in ds.ids:  # max-normalised: doubling changes nothing but proves the method ran
        np.testing.assert_allclose(doubled[image_id][0], plain[image_id][0], atol=2e-3)


def test_a_registered_classifier_kind_is_built_from_a_spec():
    from orandnet_lib.methods.cam_classifier import ClassifierSpec, build

    seen = {}

    def tiny(num_classes, **kwargs):
        seen.update(kwargs)
        return CNNCAM(num_classes, **{k: v for k, v in kwargs.items() if k != "img_size"})

    CLASSIFIER_KINDS.add("tiny", tiny, label="a toy kind", spec_kwargs=("img_size",))
    try:
        model = build(ClassifierSpec(kind="tiny", backbone="resnet18", crop_size=40,
                                     backbone_kwargs={"channels": [8, 16, 16, 32]}), 4)
    finally:
        CLASSIFIER_KINDS.remove("tiny")
    assert isinstance(model, CNNCAM) and model.classifier.out_channels == 4
    assert seen["img_size"] == 40 and "pool" not in seen  # only the spec fields the kind asks for
    assert seen["backbone_kwargs"] == {"channels": (8, 16, 16, 32)}  # lists from TOML become tuples
