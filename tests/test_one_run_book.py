"""A book comes from one run: experiments in other run folders leave its chapters alone."""

from __future__ import annotations

import json

import pytest

from orandnet_lib.book.runner import Runner, book_runs, check_one_run
from orandnet_lib.core.errors import ConfigError

from conftest import REPO, requires_fashion_mnist


@requires_fashion_mnist
def test_an_experiment_in_another_run_folder_leaves_the_book_untouched(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notebooks").symlink_to(REPO / "notebooks")
    quiet = dict(root=project, progress=False, log=lambda m: None)
    Runner("smoke", run_dir=project / "runs" / "smoke", **quiet).run(only="00_dataset")
    chapter = project / "book" / "executed" / "00_dataset.ipynb"
    published = chapter.read_bytes()
    stamp = json.loads(published)["metadata"]["orandnet_run"]
    assert stamp["run_dir"] == "runs/smoke" and stamp["profile"] == "smoke" and stamp["data"].startswith("embedded:")
    first_cells = [c["source"] for c in json.loads(published)["cells"][:2]]
    assert "From run `runs/smoke`" in "".join(first_cells[1]), "the chapter states its run under the title"

    experiment = Runner("smoke", run_dir=tmp_path / "experiment", overrides=["00_dataset.n_examples=2"], **quiet)
    assert experiment.run(only="00_dataset").executed == ["00_dataset"]
    assert chapter.read_bytes() == published, "an experiment must not publish into the book"
    Runner("smoke", run_dir=tmp_path / "experiment", publish=True, overrides=["00_dataset.n_examples=2"],
           **quiet).run(only="00_dataset")
    nb = json.loads(chapter.read_text())
    assert nb["metadata"]["orandnet_run"]["run_dir"] == str(tmp_path / "experiment")
    # One parameters box; the defaults cell and papermill's injected cell (absolute paths) are not rendered.
    for cell in nb["cells"]:
        tags = set(cell["metadata"].get("tags", []))
        if tags & {"parameters", "injected-parameters"}:
            assert "remove-cell" in tags
    box = next("".join(c["source"]) for c in nb["cells"] if "run-parameters" in c["metadata"].get("tags", []))
    assert "| `n_examples` | `2` | **-p override** |" in box and "| `splits` | `['train', 'val']` | notebook default |" in box
    shown = "".join("".join(c["source"]) for c in nb["cells"]
                    if not {"remove-cell"} & set(c["metadata"].get("tags", [])))
    assert str(tmp_path) not in shown, "no absolute path of this machine in a rendered cell's source"
    assert "## Try it" in "".join(nb["cells"][-1]["source"]), "the chapter ends with an experiment to run"


def _chapter(folder, stage, run_dir):
    nb = {"cells": [], "metadata": {"orandnet_run": {"run_dir": run_dir, "profile": "smoke", "data": "embedded:x"}},
          "nbformat": 4, "nbformat_minor": 5}
    (folder / f"{stage}.ipynb").write_text(json.dumps(nb))


def test_building_from_chapters_of_two_runs_is_refused_naming_them(tmp_path):
    _chapter(tmp_path, "00_dataset", "runs/smoke")
    _chapter(tmp_path, "01_classifiers_and_cams", "runs/smoke")
    check_one_run(tmp_path)
    _chapter(tmp_path, "02_or_and_ensembles", "/elsewhere/experiment")
    assert book_runs(tmp_path)["/elsewhere/experiment (profile smoke, data embedded:x)"] == ["02_or_and_ensembles"]
    with pytest.raises(ConfigError, match=r"2 different runs .*runs/smoke \(profile smoke.*00_dataset, "
                                          r"01_classifiers_and_cams; /elsewhere/experiment .*02_or_and_ensembles"):
        check_one_run(tmp_path)
