"""The stages' recipes run in this process, without their notebooks: ``orandnet run --in-process``.

Each stage module ends with ``run(stage, p)``, the recipe in its notebook's order without the
tables and figures. The runner (``book/``, below ``stages/``) cannot import the stage modules, so
the entry points hand it :func:`run_recipe`. The numbers are the notebooks' (tests/test_determinism.py
compares a notebook run with an in-process one); what is saved is a kernel start and the imports
of every stage (about 10 s each on two cores), and what is lost is the chapters.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

from .book.stage import open_stage
from .core import store
from .core.errors import ConfigError
from .stages import (s0_dataset, s1_classifiers, s2_ensembles, s3_orandnet, s4_refinement, s5_segmentation,
                     s6_precision)

RECIPES: dict[str, ModuleType] = {m.STAGE: m for m in (s0_dataset, s1_classifiers, s2_ensembles, s3_orandnet,
                                                       s4_refinement, s5_segmentation, s6_precision)}


def run_recipe(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run stage ``name``'s recipe with the values a notebook run would be given (the runner's
    plan: the notebook's defaults, the profile, the overrides); returns what it recorded."""
    if name not in RECIPES:
        raise ConfigError(f"stage {name} has no recipe module in orandnet_lib/stages (stages with one: "
                          f"{', '.join(RECIPES)}); run it with its notebook")
    module = RECIPES[name]
    stage = open_stage(name, params["profile"], params["data_root"], params["run_dir"], params["seed"])
    return module.run(stage, stage.params(module.Params, params))


def check_recipe(name: str, params: dict[str, Any]) -> None:
    """Stage ``name``'s check of how its parameters combine (its module's ``check(p)``, if any),
    before any stage runs: a bad combination stops ``orandnet run`` at once, not after the stages
    before it. ``params`` as for :func:`run_recipe`; a stage without a module is not checked."""
    module = RECIPES.get(name)
    check = getattr(module, "check", None)
    if check is None:
        return
    fields = [f.name for f in dataclasses.fields(module.Params)]
    p = store.dataclass_from_dict(module.Params, {k: params[k] for k in fields if k in params}, f"{name} parameters")
    try:
        check(p)
    except ValueError as e:
        raise ConfigError(f"stage {name}: {e}") from None
