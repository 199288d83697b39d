"""Every artifact is keyed by everything that determines it.

Walks every parameter of every stage in every profile: changing a parameter must change the
key of at least one artifact the stage writes, unless the stage declares it in NOT_IN_KEYS
with a reason (presentation, evaluation recomputed every run, processes). The recipes take
their checkpoint and store names from the same ``artifact_keys`` this test calls.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from orandnet_lib import stages as stages_pkg
from orandnet_lib.book import profiles
from orandnet_lib.book.runner import COMMON_PARAMETERS, notebook_parameters
from orandnet_lib.core import store

REPO = Path(__file__).resolve().parents[1]
STAGE_MODULES = sorted(m.name for m in pkgutil.iter_modules(stages_pkg.__path__) if m.name[:1] == "s" and m.name[1].isdigit())


class Salted(Mapping[str, str]):
    """Any name -> a fake digest that changes with the salt (data fingerprints, upstream keys)."""

    def __init__(self, salt: str):
        self.salt = salt

    def __getitem__(self, name: str) -> str:
        return store.hash_obj([self.salt, name])[:16]

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def perturbed(value: Any) -> Any:
    """A different value of the same shape."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if isinstance(value, str):
        return f"{value}-changed" if value else "changed"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            new = max(value) + 1
        elif value and not all(isinstance(v, str) for v in value):
            new = value[-1]
        else:
            new = "x-changed"
        return type(value)([*value, new])
    if isinstance(value, dict):
        return {**value, "x_changed": next(iter(value.values()), 1)}
    if value is None:
        return 1
    raise TypeError(f"no perturbation for {value!r}")


def stage_params(module: Any, profile: str) -> Any:
    notebook = REPO / "notebooks" / f"{module.STAGE}.ipynb"
    values = notebook_parameters(notebook)
    values.update(profiles.load_profile(profile)["stages"].get(module.STAGE, {}))
    values["seed"] = profiles.load_profile(profile)["seed"]
    fields = {f.name for f in dataclasses.fields(module.Params)}
    expected = set(values) - set(COMMON_PARAMETERS) | {"seed"}
    assert fields == expected, f"{module.__name__}.Params differs from the notebook's parameters cell: " \
                               f"only in Params {sorted(fields - expected)}, only in the notebook {sorted(expected - fields)}"
    return store.dataclass_from_dict(module.Params, {k: v for k, v in values.items() if k in fields}, module.STAGE)


def digests(keys: Mapping[str, Any]) -> dict[str, str]:
    return {name: key.digest for name, key in keys.items()}


@pytest.mark.parametrize("profile", profiles.PROFILE_NAMES)
@pytest.mark.parametrize("module_name", STAGE_MODULES)
def test_every_parameter_changes_the_key_of_an_artifact(module_name: str, profile: str):
    module = importlib.import_module(f"orandnet_lib.stages.{module_name}")
    p = stage_params(module, profile)
    names = {f.name for f in dataclasses.fields(p)}
    stale = sorted(set(module.NOT_IN_KEYS) - names)
    assert not stale, f"{module_name}.NOT_IN_KEYS names no parameter: {stale}"
    assert all(isinstance(why, str) and why for why in module.NOT_IN_KEYS.values()), "each exemption gives its reason"
    data, upstream = Salted("data"), Salted("upstream")
    base = digests(module.artifact_keys(p, data, upstream))
    if not base:
        assert set(module.NOT_IN_KEYS) == names, f"{module_name} writes no artifact: every parameter must be exempt"
        return
    unkeyed = []
    for name in sorted(names - set(module.NOT_IN_KEYS)):
        changed = dataclasses.replace(p, **{name: perturbed(getattr(p, name))})
        if digests(module.artifact_keys(changed, data, upstream)) == base:
            unkeyed.append(name)
    assert not unkeyed, f"{module_name} ({profile}): changing {unkeyed} changes no artifact key"


@pytest.mark.parametrize("module_name", STAGE_MODULES)
def test_changed_inputs_change_every_key_that_reads_them(module_name: str):
    module = importlib.import_module(f"orandnet_lib.stages.{module_name}")
    p = stage_params(module, "smoke")
    keys = module.artifact_keys(p, Salted("data"), Salted("upstream"))
    other_data = digests(module.artifact_keys(p, Salted("data-2"), Salted("upstream")))
    other_upstream = digests(module.artifact_keys(p, Salted("data"), Salted("upstream-2")))
    internal = {key.digest for key in keys.values()}  # e.g. stage 1's CAM stores read its own classifiers
    for name, key in keys.items():
        if key.data:
            assert other_data[name] != key.digest, f"{module_name}: {name} ignores a change of its data"
        if set(key.upstream.values()) - internal:
            assert other_upstream[name] != key.digest, f"{module_name}: {name} ignores a change upstream"
        assert key.data or key.upstream, f"{module_name}: {name} is keyed by neither data nor upstream artifacts"
