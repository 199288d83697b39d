"""Every chapter's 'Try it' command is one the CLI accepts, for every stage."""

from __future__ import annotations

import shlex

import pytest

from orandnet_lib.book import profiles
from orandnet_lib.book.runner import check_parameters, discover_stages
from orandnet_lib.book.try_it import try_it

from conftest import REPO


@pytest.mark.parametrize("stage", discover_stages(REPO / "notebooks"))
def test_try_it_command_is_valid(stage):
    text = try_it(stage, "default")
    assert text is not None, f"{stage} has no 'Try it' experiment"
    command = text.split("```bash\n")[1].split("\n```")[0]
    run, compare = command.replace("\\\n", " ").splitlines()
    words = shlex.split(run)
    assert words[1:3] == ["run", "--profile"] and "--run-dir" in words
    override = words[words.index("-p") + 1]
    profile = profiles.apply_overrides(profiles.load_profile("default"), [override])
    key = override.partition("=")[0]
    if not key.startswith("generator."):
        target, name = key.split(".")
        assert target == stage
        check_parameters(stage, REPO / "notebooks" / f"{stage}.ipynb", {name: profile["stages"][stage][name]})
    assert shlex.split(compare)[1:] == ["compare", "runs/default", f"runs/try-{stage[:2]}"]
