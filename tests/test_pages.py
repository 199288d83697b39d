"""The results page names refinements by their registry labels and takes the paper's numbers
from core.paper: a newly registered refinement appears in it with no edit."""

import pytest

from orandnet_lib.book.pages import results_page
from orandnet_lib.core import paper
from orandnet_lib.methods.refine import REFINEMENTS


def scores(miou, threshold=0.25, **extra):
    return {"miou": miou, "precision": miou + 10, "recall": miou + 20, "threshold": threshold, **extra}


@pytest.fixture
def toy_refinement():
    REFINEMENTS.add("toy_blur", lambda x: x.cams, label="toy blur")
    yield "toy_blur"
    REFINEMENTS.remove("toy_blur")


def summary_of(refinements):
    return {
        "profile": "smoke", "seed": 0,
        "refinement": {"cnn": {r: scores(40.0 + i) for i, r in enumerate(refinements)}},
        "pseudo_masks": {"cnn": scores(44.0, refinement="rw"), "orandnet": scores(45.0, refinement="rw")},
        "segmentation": {"cnn": {"curriculum": {"miou": 30.0, "precision": 40.0, "recall": 50.0, "seeds": [0, 1],
                                                "miou_std": 1.0, "per_seed": []}}},
        "segmentation_headline": {"baseline": "cnn", "other": "orandnet", "schedule": "curriculum",
                                  "difference": {"n": 3, "mean": 2.0, "se": 0.577, "t": 3.46, "df": 2, "p": 0.074,
                                                 "low": -0.48, "high": 4.48}},
        "precision_vs_miou": {"fits": {}, "fit_schedule": "curriculum",
                              "gain": {"paper": paper.GAIN, "ours": 2.0, "paired": None}},
    }


def test_results_page_lists_every_refinement_by_its_label(toy_refinement):
    page = results_page(summary_of(["cam", "crf", "rw", toy_refinement]))
    for label in ("CAM", "dense CRF", "random walk", "toy blur"):
        assert f"| cnn / {label} |" in page
    assert "| cnn / toy blur | 43.0 | 53.0 | 63.0 | 0.2 |" in page
    assert "## Pseudo-masks written for segmentation" in page and "| orandnet | random walk | 45.0 |" in page
    assert "+2.0 ± 0.6 points" in page  # the paired headline difference


def test_results_page_takes_the_papers_numbers_from_core_paper():
    page = results_page(summary_of(["cam"]))
    assert f"paper {paper.GAIN:+.1f}" in page and "+6.8" in page
    assert paper.ARXIV in page and "| IRN | 48.3 | 66.5 | 63.5 | 64.8 |" in page


def test_results_page_reads_the_earlier_pseudo_mask_layout():
    old = {"profile": "smoke", "pseudo_masks": {"cnn": {"cam": scores(10.0), "rw_fixed": scores(12.0)}}}
    page = results_page(old)
    assert "| cnn / CAM | 10.0 |" in page and "| cnn / rw_fixed | 12.0 |" in page
