"""`orandnet compare`: what differs between two runs."""

from __future__ import annotations

import math
import shutil

import pytest
from scipy import stats as scipy_stats

from orandnet_lib import cli
from orandnet_lib.book.compare import compare_runs, format_comparison, seed_difference, welch_difference
from orandnet_lib.book.runner import Runner
from orandnet_lib.recipes import run_recipe

from conftest import REPO


def test_welch_difference_by_hand():
    d = welch_difference([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    # means 2 and 4; variances of the means 1/3 and 4/3; df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    assert d["mean"] == pytest.approx(2.0) and d["se"] == pytest.approx(math.sqrt(5 / 3))
    assert d["df"] == pytest.approx(50 / 17)
    assert d["low"] < 0 < d["high"]  # three seeds each: this difference is not resolved


def test_runs_with_the_same_seeds_are_compared_seed_by_seed():
    a, b = {0: 1.0, 1: 2.0, 2: 4.0}, {0: 2.0, 1: 2.5, 2: 5.0}
    d = seed_difference(a, b)
    # differences 1, 0.5, 1: mean 5/6, sd sqrt(1/12), se sqrt(1/12)/sqrt(3) = 1/6, t = 5 on 2 df
    assert d["test"] == "paired" and d["n"] == 3 and d["df"] == 2
    assert d["mean"] == pytest.approx(5 / 6) and d["se"] == pytest.approx(1 / 6) and d["t"] == pytest.approx(5.0)
    assert d["low"] == pytest.approx(5 / 6 - scipy_stats.t.ppf(0.975, 2) / 6) and d["low"] > 0  # resolved: Welch's is not
    assert welch_difference(list(a.values()), list(b.values()))["low"] < 0
    same = seed_difference(a, a)
    assert (same["mean"], same["se"], same["low"], same["high"]) == (0.0, 0.0, 0.0, 0.0)
    other_seeds = seed_difference({0: 1.0, 1: 2.0}, {1: 1.0, 2: 2.0})  # no pairs by design: Welch on all four
    assert other_seeds["test"] == "welch" and other_seeds["mean"] == 0.0 and other_seeds["low"] < 0


@pytest.mark.slow
def test_two_smoke_runs_that_differ_in_one_parameter(smoke_run, tmp_path, capsys):
    result, base = smoke_run
    other = tmp_path / "epochs1"
    shutil.copytree(base / "runs", other)
    rerun = Runner("smoke", root=REPO, run_dir=other, book_dir=tmp_path / "book", progress=False, log=lambda m: None,
                   overrides=["05_segmentation_curriculum.epochs=1"], recipes=run_recipe, in_process=True).run()
    assert rerun.executed == ["05_segmentation_curriculum", "06_precision_vs_miou"]
    c = compare_runs(base / "runs", other)
    assert c.params == [("05_segmentation_curriculum", "epochs", 2, 1)]
    changed = {k for k, _, _, d in c.metrics if d != 0}
    assert any(k.startswith("segmentation.") and k.endswith(".miou") for k in changed)
    assert not any(k.startswith(("cams.", "classifiers.", "pseudo_masks.")) for k in changed), "upstream is shared"
    seeded = dict(c.seeded)
    assert seeded["segmentation.cnn.curriculum.miou"]["test"] == "paired"  # both trained seeds 0 and 1
    assert "segmentation.cnn.curriculum.miou" in seeded and seeded["segmentation.cnn.curriculum.miou"]["low"] <= \
        seeded["segmentation.cnn.curriculum.miou"]["mean"] <= seeded["segmentation.cnn.curriculum.miou"]["high"]
    text = format_comparison(c)
    assert "| 05_segmentation_curriculum | `epochs` | `2` | `1` |" in text
    capsys.readouterr()
    assert cli.main(["compare", str(base / "runs"), str(other), "--out", str(tmp_path / "compare.md")]) == 0
    assert capsys.readouterr().out.strip() == (tmp_path / "compare.md").read_text().strip()
    assert cli.main(["compare", str(tmp_path / "missing"), str(other)]) == 2


@pytest.mark.slow
def test_the_book_renders_a_comparison_page(smoke_run, tmp_path):
    from orandnet_lib.book.pages import write_pages

    result, base = smoke_run
    project = tmp_path / "project"
    (project / "runs").mkdir(parents=True)
    (project / "notebooks").symlink_to(REPO / "notebooks")
    shutil.copytree(base / "runs", project / "runs" / "smoke")
    shutil.copytree(base / "runs", project / "runs" / "other")
    written = write_pages(project, "smoke", out_dir=tmp_path / "generated", compare=project / "runs" / "other")
    page = (tmp_path / "generated" / "compare.md").read_text()
    assert tmp_path / "generated" / "compare.md" in written
    assert page.startswith("# Compare runs") and "None: the two runs were made with the same parameters." in page
    assert "A: `runs/smoke`" in page and "B: `runs/other`" in page and str(tmp_path) not in page
    default = write_pages(project, "smoke", out_dir=tmp_path / "plain")
    assert "make book PROFILE=smoke COMPARE=runs/<other>" in (tmp_path / "plain" / "compare.md").read_text()
    assert len(default) == 5
