"""Profiles are data: a TOML file per profile (``smoke``, ``default``, ``paper``) holding the
seed, where the data comes from and the parameters of each stage notebook.

Overrides use dotted keys, as on the command line: ``seed=1``,
``generator.n_train=500``, ``00_dataset.n_examples=4``. Values are parsed as Python
literals (never evaluated); a value that is not a literal is taken as a string.
"""

from __future__ import annotations

import ast
import copy
import os
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from ..core import store
from ..core.paths import display_path, project_root  # noqa: F401 (re-exported: the runner and the CLI read them here)
from ..data import synth
from ..core.errors import ConfigError
from ..data.voc import check_layout

def _profile_names() -> tuple[str, ...]:
    """The built-in profiles: every .toml in the profiles folder, smallest first as the README lists them."""
    found = {p.name.removesuffix(".toml") for p in resources.files("orandnet_lib.book").joinpath("profiles").iterdir()
             if p.name.endswith(".toml")}
    order = ("smoke", "default", "extended", "paper")
    return tuple(sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n)))


PROFILE_NAMES = _profile_names()


def load_profile(name: str) -> dict[str, Any]:
    """The named built-in profile, or a TOML file when ``name`` is a path."""
    if name.endswith(".toml") or os.sep in name:
        path = Path(name)
        if not path.exists():
            raise ConfigError(f"profile file {path} does not exist")
        text = path.read_text()
    elif name in PROFILE_NAMES:
        text = resources.files("orandnet_lib.book").joinpath(f"profiles/{name}.toml").read_text()
    else:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)} or give a .toml path")
    try:
        profile = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"profile {name!r}: invalid TOML ({e})") from e
    base = profile.pop("extends", None)
    if base is not None:  # a profile that starts from another and changes some of its values
        if base == Path(name).stem:
            raise ConfigError(f"profile {name!r} extends itself")
        profile = store.deep_merge(load_profile(base), profile)
        profile.pop("name", None)
    profile.setdefault("seed", 0)
    profile.setdefault("replicates", 1)
    if not isinstance(profile["replicates"], int) or isinstance(profile["replicates"], bool) or profile["replicates"] < 1:
        raise ConfigError(f"profile {name!r}: replicates must be a positive integer, got {profile['replicates']!r}")
    profile.setdefault("data", {})
    profile.setdefault("stages", {})
    profile["name"] = Path(name).stem
    source = profile["data"].get("source", "embedded")
    if source not in ("embedded", "voc"):
        raise ConfigError(f"profile {name!r}: data.source must be 'embedded' or 'voc', got {source!r}")
    return profile


TOML_BOOLEANS = {"true": True, "false": False}  # the profiles' spelling, so a value copied from one works


def parse_value(text: str) -> Any:
    """A command-line value as a Python literal (1, 0.5, [1, 2], True, 'x'), or a TOML boolean
    (true, false); else the string."""
    if text in TOML_BOOLEANS:
        return TOML_BOOLEANS[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``stage.key=value`` -> (['stage', 'key'], value)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. 00_dataset.n_examples=4)")
    return key.strip().split("."), parse_value(value.strip())


def apply_overrides(profile: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of the profile with overrides applied. ``seed`` and ``generator.*`` change
    the run and the data; ``<stage>.<param>`` changes a stage notebook's parameter (checked
    against the notebook's parameters cell by the runner)."""
    out = copy.deepcopy(profile)
    for item in overrides:
        path, value = parse_override(item)
        if path == ["seed"]:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"seed must be an integer, got {value!r}")
            out["seed"] = value
        elif path == ["replicates"]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"replicates must be a positive integer, got {value!r}")
            out["replicates"] = value
        elif path[0] == "generator" and len(path) == 2:
            out["data"].setdefault("generator", {})[path[1]] = value
            embedded_config(out)  # validates name and value now, not halfway through a run
        elif len(path) == 2 and path[0][:2].isdigit():
            out["stages"].setdefault(path[0], {})[path[1]] = value
        else:
            raise ConfigError(
                f"override {item!r}: the key must be 'seed', 'replicates', 'generator.<knob>' or '<stage>.<parameter>' "
                "(a stage is a notebook's file stem, e.g. 00_dataset)"
            )
    if out["data"].get("source", "embedded") == "embedded":
        config = embedded_config(out)
        if config != embedded_config(profile):
            # Other scenes get a folder of their own: generated into the profile's folder they
            # would replace its data, and every run on it would regenerate and re-run.
            root = out["data"].get("root", f"data/{out.get('name', 'embedded')}")
            out["data"]["root"] = f"{root}-{config.fingerprint()[:8]}"
    return out


def embedded_config(profile: dict[str, Any]) -> synth.SceneConfig:
    """The generator config of an embedded profile (its seed is the profile's seed)."""
    values = dict(profile["data"].get("generator", {}))
    values.setdefault("seed", profile["seed"])
    try:
        return synth.SceneConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"profile {profile['name']!r}, data.generator: {e}") from e


def data_root(profile: dict[str, Any], override: str | os.PathLike[str] | None = None,
              root: Path | None = None) -> Path:
    """Where the profile's data lives: the override when given, else ``data.root``
    (relative to the project root)."""
    if override:
        return Path(override).resolve()
    path = Path(profile["data"].get("root", f"data/{profile['name']}"))
    return path if path.is_absolute() else (root or project_root()) / path


def prepare_data(profile: dict[str, Any], override: str | os.PathLike[str] | None = None,
                 progress: bool = True) -> Path:
    """Resolve the data root and, for an embedded profile without an override, generate the
    benchmark there (a no-op when the cached copy matches the config)."""
    path = data_root(profile, override)
    if override is None and profile["data"].get("source", "embedded") == "embedded":
        synth.generate(path, embedded_config(profile), progress=progress)
    check_layout(path)
    return path


