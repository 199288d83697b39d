"""The paper profile end to end on a tiny VOC-layout folder with the 21 VOC names, on CPU:
every stage runs with the paper's code paths (SegmentationClassAug and train_aug, the attribution CAMs of
a DeiT-shaped ViT with class-token pooling, ASPP, random scaling, crops, multi-scale + flip
testing with CRF), with sizes made small through -p overrides and no downloads; then the same
stages' recipes in process, which must give the same numbers."""

import numpy as np
import pytest

from orandnet_lib.book.runner import Runner
from orandnet_lib.data.voc import VOC_CLASSES, VOCWriter
from orandnet_lib.recipes import run_recipe

from conftest import REPO, stable

pytestmark = pytest.mark.slow
SMALL_RESNET = "{'channels': [8, 8, 16, 16], 'layers': [1, 1, 1, 1]}"
OVERRIDES = [
    "00_dataset.n_examples=2",
    "01_classifiers_and_cams.crop_size=32", "01_classifiers_and_cams.cnn_backbone='resnet18'",
    f"01_classifiers_and_cams.cnn_backbone_kwargs={SMALL_RESNET}", "01_classifiers_and_cams.cnn_pretrained=''",
    "01_classifiers_and_cams.cnn_epochs=1", "01_classifiers_and_cams.cnn_batch_size=2",
    "01_classifiers_and_cams.vit_backbone_kwargs={'embed_dim': 32, 'depth': 1, 'num_heads': 2}",
    "01_classifiers_and_cams.vit_pretrained=''", "01_classifiers_and_cams.vit_epochs=1",
    "01_classifiers_and_cams.vit_batch_size=2", "01_classifiers_and_cams.vit_warmup_steps=1",
    "01_classifiers_and_cams.cam_scales=[1.0, 0.5]", "01_classifiers_and_cams.n_examples=2",
    "02_or_and_ensembles.n_examples=2",
    "03_orandnet.encoder='small'", "03_orandnet.pretrained=''", "03_orandnet.widths=[4, 8, 8]", "03_orandnet.epochs=1",
    "03_orandnet.batch_size=2", "03_orandnet.max_steps=20",  # the official 5000 steps of one image, as 20
    "04_refinement.boundary_backbone='resnet18'", f"04_refinement.boundary_backbone_kwargs={SMALL_RESNET}",
    "04_refinement.boundary_pretrained=''", "04_refinement.epochs=1", "04_refinement.batch_size=2",
    "04_refinement.crf_iterations=2", "04_refinement.n_examples=2", "04_refinement.workers=1",
    "05_segmentation_curriculum.backbone='resnet18'", f"05_segmentation_curriculum.backbone_kwargs={SMALL_RESNET}",
    "05_segmentation_curriculum.pretrained=''", "05_segmentation_curriculum.rates=[1, 2]",
    "05_segmentation_curriculum.crop_size=32", "05_segmentation_curriculum.epochs=1",
    "05_segmentation_curriculum.batch_size=2", "05_segmentation_curriculum.seeds=[0, 1]",
    "05_segmentation_curriculum.eval_crf_iterations=2", "05_segmentation_curriculum.n_examples=2",
    "06_precision_vs_miou.crf_iterations=2", "06_precision_vs_miou.widget_images=1",
    "06_precision_vs_miou.widget_thresholds=[0.3, 0.6]",
]


def write_tiny_pascal(root):
    """Ten photos-to-be of two sizes with VOC's 21 names (no labels.txt, as VOC ships),
    SegmentationClass for train / val and SegmentationClassAug with a train_aug list."""
    rng = np.random.default_rng(0)
    with VOCWriter(root, VOC_CLASSES) as writer:
        for split, n in (("train", 6), ("val", 4)):
            for i in range(n):
                h, w = (36, 44) if i % 2 else (44, 36)
                image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
                mask = np.zeros((h, w), np.uint8)
                for c, colour in ((1 + i % 3, (230, 40, 40)), (15, (40, 40, 230))):
                    y, x = rng.integers(0, min(h, w) - 14, 2)
                    mask[y : y + 14, x : x + 14] = c
                    image[y : y + 14, x : x + 14] = colour
                mask[y - 1 if y else 0, x : x + 14] = 255  # an ignored border, as VOC's
                writer.add(split, f"2007_{split}{i:03d}", image, mask)
    aug = root / "SegmentationClassAug"
    aug.mkdir()
    for png in (root / "SegmentationClass").glob("*.png"):
        (aug / png.name).write_bytes(png.read_bytes())
    sets = root / "ImageSets" / "Segmentation"
    (sets / "train_aug.txt").write_text((sets / "train.txt").read_text())
    (root / "labels.txt").unlink(missing_ok=True)
    return root


def test_paper_profile_runs_end_to_end_on_a_tiny_voc_folder(tmp_path):
    root = write_tiny_pascal(tmp_path / "VOC2012")
    runner = Runner("paper", root=REPO, data_root=root, run_dir=tmp_path / "runs", book_dir=tmp_path / "book",
                    overrides=OVERRIDES, progress=False, log=lambda m: None)
    result = runner.run()
    assert result.executed[-1] == "06_precision_vs_miou" and len(result.executed) == 7
    s = result.summary
    assert s["dataset"]["classes"][15] == "person" and len(s["dataset"]["classes"]) == 21
    assert s["classifiers"]["vit"]["spec"]["cam_method"] == "attribution"
    assert set(s["segmentation"]) == {"gt", "cnn", "and+offset", "orandnet"}
    assert s["segmentation"]["cnn"]["curriculum"]["seeds"] == [0, 1]
    for entry in (s["segmentation"]["gt"]["constant"], s["pseudo_masks"]["cnn"]):
        assert 0 <= entry["miou"] <= 100
    # the stages' recipes in process, every model trained again: the notebooks' numbers (attribution CAMs,
    # the fixed offset, ORANDNet's max_steps, ASPP, multi-scale + flip + CRF testing included)
    again = Runner("paper", root=REPO, data_root=root, run_dir=tmp_path / "in_process", overrides=OVERRIDES,
                   progress=False, log=lambda m: None, recipes=run_recipe, in_process=True).run()
    assert again.executed == result.executed
    assert stable(again.summary, drop=("stages",)) == stable(s, drop=("stages",))
