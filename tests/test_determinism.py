"""Same seed, same profile, same machine: the same numbers. The session's smoke run (every stage
notebook executed by papermill) and a second full smoke run in another folder, its stages' recipes
run in this process (`orandnet run --in-process`), every model trained again (the pretrained
backbones come from the session's cache, so a pretraining's own determinism is tested beside it),
must give identical summaries up to the timings and memory figures: the run is deterministic, and
a stage's recipe computes what its notebook computes."""

import json

import pytest

from orandnet_lib.book.runner import Runner
from orandnet_lib.recipes import run_recipe

from conftest import REPO, stable

pytestmark = pytest.mark.slow


def test_two_smoke_runs_with_one_seed_give_identical_summaries(smoke_run, tmp_path):
    first, _ = smoke_run
    second = Runner("smoke", root=REPO, run_dir=tmp_path / "runs", book_dir=tmp_path / "book", progress=False,
                    log=lambda m: None, recipes=run_recipe, in_process=True).run()
    assert second.executed == first.executed
    assert not list(tmp_path.rglob("*.ipynb")), "a run in process executes no notebook and publishes nothing"
    manifest = json.loads((tmp_path / "runs" / "04_refinement" / "manifest.json").read_text())
    assert manifest["execution"] == "in-process" and manifest["cpu_time_s"] > 0 and manifest["peak_rss_mb"] > 0
    a, b = stable(first.summary, drop=("stages",)), stable(second.summary, drop=("stages",))
    assert set(a) == set(b)
    for key in a:
        assert a[key] == b[key], f"summary section {key!r} differs between two runs of one seed"


def test_a_pretraining_twice_gives_the_same_weights(tmp_path, monkeypatch):
    """Two pretrainings of one recipe on one machine, each into its own cache: the same bytes of
    weights, so a cache built on one machine and rebuilt on another hold the same starting point."""
    import torch

    from orandnet_lib.methods import pretrain

    shape = {"channels": [8, 16, 24, 32], "layers": [1, 1, 1, 1]}
    states = []
    for run in ("first", "second"):
        monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / run))
        path = pretrain.weights_file("aux-broad-smoke", "cnn", "resnet18", shape, progress=False, log=lambda m: None)
        states.append(torch.load(path, weights_only=False))
    a, b = states
    assert stable(a["history"]) == stable(b["history"])  # every epoch's loss and accuracy, times aside
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
