"""The paper's reported numbers, in one place with their citation.

Chapters 05 and 06 and the results page compare this run with these numbers; none of them
types a number of the paper itself. Source: PASCAL VOC 2012 results as reported in the paper
(mIoU %, "-" where it reports none: NaN here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TITLE = "Precision matters: Precision-aware ensemble for weakly supervised semantic segmentation"
ARXIV = "2406.19638"
VENUE = "AAAI 2024 workshop"
CITATION = f"ORANDNet, \"{TITLE}\", arXiv {ARXIV} ({VENUE})"
URL = f"https://arxiv.org/abs/{ARXIV}"
DATASET = "PASCAL VOC 2012"

NA = math.nan


@dataclass(frozen=True)
class Reported:
    """One method's reported mIoU (%) on PASCAL VOC 2012."""

    cam_train: float = NA  # CAMs scored on VOC train
    pseudo_mask_train: float = NA  # refined pseudo-masks on VOC train
    segmentation_val: float = NA  # DeepLab trained on the pseudo-masks, VOC val
    segmentation_test: float = NA  # ... VOC test


REPORTED: dict[str, Reported] = {
    "IRN": Reported(48.3, 66.5, 63.5, 64.8),
    "AMN": Reported(NA, 72.2, 70.7, 70.6),
    "MCTformer": Reported(61.7, 69.1, 71.9, 71.6),
    "ORANDNet (R50 + ViT)": Reported(NA, NA, 70.3, 72.1),
    "ORANDNet (AMN + MCTformer)": Reported(NA, NA, 72.2, 72.9),
}

BASELINE = "IRN"  # the single-CNN pipeline ORANDNet builds on
ORANDNET = "ORANDNet (R50 + ViT)"  # the paper's headline: a ResNet-50 and a ViT

#: ORANDNet's headline gain in segmentation mIoU (val) over the IRN baseline: +6.8.
GAIN = REPORTED[ORANDNET].segmentation_val - REPORTED[BASELINE].segmentation_val


def comparison() -> dict[str, float]:
    """The paper's side of the 'against the paper' table (same row names as this run's)."""
    base, orn = REPORTED[BASELINE], REPORTED[ORANDNET]
    return {"baseline pseudo-mask mIoU (train)": base.pseudo_mask_train,
            "baseline segmentation mIoU (val)": base.segmentation_val,
            "ORANDNet segmentation mIoU (val)": orn.segmentation_val,
            "gain in segmentation mIoU": GAIN}


#: The offset the official code adds to the ViT CAM before its ensembles (tuned there for its LRP maps).
OFFICIAL_OFFSET = 0.15

#: What the paper's gain was measured on, printed wherever it sits beside this run's gain: the
#: numbers are not comparable, and one reported run carries no uncertainty to compare against.
#: (The official code's ViT is DeiT-B/16 with ImageNet weights, ``pretrained=True`` in its
#: network/vit.py; its CNN is IRN's ImageNet-pretrained ResNet-50.)
CONTEXT = (f"their setting, not this run's: {DATASET} photographs, classifiers pretrained on ImageNet "
           "(a ResNet-50 and a ViT), one reported run per number, with no seed spread, standard error "
           "or interval")


def headline_facts() -> dict[str, object]:
    """The paper's headline as facts for prose (``paper`` in chapter 5's findings), with its context."""
    base, orn = REPORTED[BASELINE], REPORTED[ORANDNET]
    return {"gain": GAIN, "dataset": DATASET, "baseline": BASELINE, "arxiv": ARXIV,
            "baseline_miou": base.segmentation_val, "orandnet_miou": orn.segmentation_val, "context": CONTEXT}


def gain_with_context() -> str:
    """The paper's gain as it may sit beside ours: the number and what it was measured on."""
    return f"paper {GAIN:+.1f} ({CONTEXT})"
