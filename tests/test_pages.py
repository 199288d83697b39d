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
        "segmentation_paired": [
            {"comparison": "orandnet − cnn", "measure": "mIoU", "n": 3, "mean": 2.0, "se": 0.577, "t": 3.464, "df": 2,
             "p": 0.0742, "low": -0.484, "high": 4.484},
            {"comparison": "and+offset − cnn", "measure": "mIoU", "n": 3, "mean": 1.0, "se": 1.0, "t": 1.0, "df": 2,
             "p": 0.4226, "low": -3.303, "high": 5.303},
            {"comparison": "orandnet − and+offset", "measure": "mIoU", "n": 1, "mean": 1.0, "se": float("nan"),
             "t": float("nan"), "df": float("nan"), "p": float("nan"), "low": float("nan"), "high": float("nan")}],
        "segmentation_schedules": [
            {"comparison": "cnn: curriculum − constant", "measure": "small-object recall", "n": 2, "mean": -3.5,
             "se": 1.5, "t": -2.333, "df": 1, "p": 0.2577, "low": -22.56, "high": 15.56}],
        "segmentation_seeds": "The seeds (0, 1, 2) vary DeepLab only.",
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


def test_results_page_lists_the_paired_differences():
    page = results_page(summary_of(["cam"]))
    assert "### Paired differences of the headline sets" in page
    assert "| comparison | measure | seeds | mean difference | standard error | t | df | p | 95 % interval |" in page
    assert "| orandnet − cnn | mIoU | 3 | 2.00 | 0.58 | 3.46 | 2 | 0.074 | -0.48 to 4.48 |" in page
    assert "| and+offset − cnn | mIoU | 3 | 1.00 | 1.00 | 1.00 | 2 | 0.423 | -3.30 to 5.30 |" in page
    assert "| orandnet − and+offset | mIoU | 1 | 1.00 | - | - | - | - | - to - |" in page
    assert "| cnn: curriculum − constant | small-object recall | 2 | -3.50 | 1.50 | -2.33 | 1 | 0.258 |" in page
    assert "vary DeepLab only" in page


def test_results_page_prints_the_papers_gain_with_its_context_and_the_fits_with_intervals():
    summary = summary_of(["cam"])
    summary["precision_vs_miou"]["fits"] = {
        "precision": {"coef": {"intercept": 4.333, "precision": 0.4}, "se": {"intercept": 5.2, "precision": 0.115},
                      "low": {"intercept": -61.7, "precision": -1.067}, "high": {"intercept": 70.4, "precision": 1.867},
                      "p": {"intercept": 0.56, "precision": 0.179}, "r2": 0.92, "n": 3, "dof": 1},
        "precision + recall": {"error": "2 regressor(s) need at least 5 pseudo-mask sets, this run has 3", "n": 3}}
    summary["precision_vs_miou"]["fit_unit"] = "one point per pseudo-mask set"
    page = results_page(summary)
    assert paper.CONTEXT in page and f"paper {paper.GAIN:+.1f} (" in page
    assert "| precision | precision | 0.400 | 0.115 | -1.067 to 1.867 | 0.179 | 3 |" in page
    assert "*precision + recall*: not fitted (2 regressor(s) need at least 5" in page
    assert "Fitted on one point per pseudo-mask set (curriculum schedule)." in page


def test_repository_buttons_follow_the_checkouts_public_remote(tmp_path):
    import subprocess

    from orandnet_lib.book.pages import book_config, repository_url

    from conftest import REPO

    (tmp_path / "_config.yml").write_text((REPO / "_config.yml").read_text())
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert repository_url(tmp_path) is None and book_config(tmp_path, None) is None
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", "git@github.com:someone/orandnet-book.git"],
                   check=True)
    url = repository_url(tmp_path)
    assert url == "https://github.com/someone/orandnet-book"
    config = book_config(tmp_path, url)
    assert "  url: https://github.com/someone/orandnet-book\n" in config
    assert "use_repository_button: true" in config and "use_issues_button: true" in config
    import yaml

    parsed = yaml.safe_load(config)
    assert parsed["repository"] == {"url": url, "path_to_book": ".", "branch": "book-executed"}
    assert parsed["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert parsed["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    workflow = (REPO / ".github" / "workflows" / "book.yml").read_text()
    assert "git push --force origin HEAD:book-executed" in workflow  # the branch the launch buttons open
