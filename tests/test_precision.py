"""A profile's bf16 = "auto": bfloat16 only on a CPU that computes it in hardware, resolved before
a stage makes its artifact keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orandnet_lib.core import precision
from orandnet_lib.core.errors import ConfigError


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_auto_follows_the_cpus_bfloat16_units(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.resolve_bf16("auto") is expected
    assert precision.resolve_bf16(True) is True and precision.resolve_bf16(False) is False


def test_a_torch_without_the_probes_counts_as_no_bfloat16_units(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert precision.native_bf16() is False


def test_another_value_is_an_error_that_names_it():
    with pytest.raises(ConfigError, match="'fast'"):
        precision.resolve_bf16("fast")


@pytest.mark.parametrize("native", [True, False])
def test_the_runner_hands_the_stage_the_precision_that_runs_and_says_why(monkeypatch, native):
    from conftest import REPO
    from orandnet_lib.book.runner import Runner

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    runner = Runner("default", root=REPO, progress=False, log=lambda m: None)
    params = runner.params_for("01_classifiers_and_cams", Path())
    assert runner.base_profile["stages"]["01_classifiers_and_cams"]["cnn_bf16"] == "auto"
    assert params["cnn_bf16"] is native  # a bool, so the artifact keys hold what ran
    box = runner.parameters_box("01_classifiers_and_cams", params)
    row = next(line for line in box.splitlines() if line.startswith("| `cnn_bf16`"))
    assert f"`{native!r}`" in row and ("computes" if native else "has no") in row


def test_the_training_loop_refuses_an_unresolved_precision():
    from orandnet_lib.core.train import TrainConfig, fit

    model = torch.nn.Linear(2, 1)
    data = torch.utils.data.TensorDataset(torch.zeros(4, 2), torch.zeros(4, 1))
    with pytest.raises(ConfigError, match="'auto'"):
        fit(model, data, lambda m, b: m(b[0]).sum(), TrainConfig(epochs=1, batch_size=2, bf16="auto"),  # type: ignore[arg-type]
            progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_the_pretraining_recipe_trains_and_keys_in_the_precision_this_cpu_runs(monkeypatch, native):
    """Where the CPU has bfloat16 units the recipe's key is what it always was (caches stay valid);
    elsewhere the CNN trains in fp32 and the key says so, so the two weights never share a file."""
    import dataclasses

    from orandnet_lib.core.keys import ArtifactKey
    from orandnet_lib.methods import pretrain

    monkeypatch.setattr(pretrain, "native_bf16", lambda: native)
    recipe = pretrain.AUX_RECIPES.get("aux")
    assert recipe.bf16_kinds == ("cnn",)
    assert recipe.train_config("cnn").bf16 is native and recipe.train_config("vit").bf16 is False
    before = {**dataclasses.asdict(recipe), "version": pretrain.RECIPE_VERSION}  # the key's recipe until now
    del before["catalogue"], before["exclude"]  # the first recipe's key never held them
    same = ArtifactKey("pretrained", {"recipe": recipe.to_dict()}).digest == ArtifactKey("pretrained", {"recipe": before}).digest
    assert same is native
