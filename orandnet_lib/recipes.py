"""The stages' recipes run in this process, without their notebooks: ``orandnet run --in-process``.

Each stage module ends with ``run(stage, p)``, the recipe in its notebook's order without the
tables and figures. The runner (``book/``, below ``stages/``) cannot import the stage modules, so
the entry points hand it :func:`run_recipe`. The numbers are the notebooks' (tests/test_determinism.py
compares a notebook run with an in-process one); what is saved is a kernel start and the imports
of every stage (about 10 s each on two cores), and what is lost is the chapters.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

from . import stages
from .book.stage import open_stage
from .core import store
from .core.errors import ConfigError

# Stage name -> its module under orandnet_lib/stages, imported when first needed: a module imports torch
# and timm (seconds), which a run of notebooks, or of stages without a module, never needs in this process.
STAGE_MODULES: dict[str, str] = {
    "00_dataset": "s0_dataset", "01_classifiers_and_cams": "s1_classifiers", "02_or_and_ensembles": "s2_ensembles",
    "03_orandnet": "s3_orandnet", "04_refinement": "s4_refinement", "05_segmentation_curriculum": "s5_segmentation",
    "06_precision_vs_miou": "s6_precision"}


def stage_module(name: str) -> ModuleType | None:
    """Stage ``name``'s module, or None for a stage that has none (it runs with its notebook only)."""
    module = STAGE_MODULES.get(name)
    return None if module is None else importlib.import_module(f"{stages.__name__}.{module}")


def run_recipe(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run stage ``name``'s recipe with the values a notebook run would be given (the runner's
    plan: the notebook's defaults, the profile, the overrides); returns what it recorded."""
    module = stage_module(name)
    if module is None:
        raise ConfigError(f"stage {name} has no recipe module in orandnet_lib/stages (stages with one: "
                          f"{', '.join(STAGE_MODULES)}); run it with its notebook")
    stage = open_stage(name, params["profile"], params["data_root"], params["run_dir"], params["seed"])
    return module.run(stage, stage.params(module.Params, params))


def check_recipe(name: str, params: dict[str, Any]) -> None:
    """Stage ``name``'s check of how its parameters combine (its module's ``check(p)``, if any),
    before any stage runs: a bad combination stops ``orandnet run`` at once, not after the stages
    before it. ``params`` as for :func:`run_recipe`; a stage without a module is not checked."""
    module = stage_module(name)
    check = getattr(module, "check", None)
    if module is None or check is None:
        return
    fields = [f.name for f in dataclasses.fields(module.Params)]
    p = store.dataclass_from_dict(module.Params, {k: params[k] for k in fields if k in params}, f"{name} parameters")
    try:
        check(p)
    except ValueError as e:
        raise ConfigError(f"stage {name}: {e}") from None
