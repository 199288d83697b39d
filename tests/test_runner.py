"""The runner's skip / re-run logic on a tiny project of two quick notebooks."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from orandnet_lib.core import store
from orandnet_lib.core.errors import ConfigError, StageFailed
from orandnet_lib.book.runner import Runner

COMMON = 'profile = "x"\ndata_root = ""\nrun_dir = ""\nseed = 0\n'


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(COMMON + params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path, tiny_voc):
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\n")
    _notebook(root / "notebooks" / "00_first.ipynb", "x = 1\n",
              "from orandnet_lib.book.stage import open_stage\n"
              "from orandnet_lib.data.voc import VOCDataset\n"
              "stage = open_stage('00_first', profile, data_root, run_dir, seed)\n"
              "n = len(VOCDataset(data_root, 'train'))\n"
              "(stage.dir / 'out.txt').write_text(str(x * n))\n"
              "stage.record(metrics={'x': x}, summary={'first': {'product': x * n}})\n")
    _notebook(root / "notebooks" / "01_second.ipynb", "y = 2\nfail = False\n",
              "from orandnet_lib.book.stage import open_stage\n"
              "stage = open_stage('01_second', profile, data_root, run_dir, seed)\n"
              "value = int((stage.upstream('00_first').dir / 'out.txt').read_text())\n"
              "if fail:\n    raise ValueError('boom in second')\n"
              "stage.record(summary={'second': {'value': value + y}})\n")
    profile = {"name": "t", "seed": 0, "data": {"source": "voc", "root": str(tiny_voc)}, "stages": {}}
    return root, profile


def _runner(project, overrides=(), **kw):
    root, profile = project
    return Runner(profile, root=root, run_dir=root / "runs", book_dir=root / "book" / "executed",
                  overrides=overrides, progress=False, log=lambda m: None, **kw)


def test_run_skip_and_rerun_downstream(project):
    first = _runner(project).run()
    assert first.executed == ["00_first", "01_second"] and first.skipped == []
    assert first.summary["first"]["product"] == 3 and first.summary["second"]["value"] == 5
    root = project[0]
    manifest = store.read_manifest(root / "runs" / "00_first")
    assert manifest["params"]["x"] == 1 and manifest["inputs"]["data"].startswith("voc:")
    assert manifest["wall_time_s"] > 0 and manifest["peak_rss_mb"] > 0 and "torch" in manifest["versions"]
    assert (root / "book" / "executed" / "01_second.ipynb").exists()
    assert json.loads((root / "runs" / "summary.json").read_text())["second"]["value"] == 5

    again = _runner(project).run()
    assert again.executed == [] and again.skipped == ["00_first", "01_second"]

    # A downstream parameter re-runs only that stage.
    changed = _runner(project, ["01_second.y=10"]).run()
    assert changed.executed == ["01_second"] and changed.summary["second"]["value"] == 13

    # An upstream parameter re-runs it and everything downstream.
    upstream = _runner(project, ["01_second.y=10", "00_first.x=2"]).run()
    assert upstream.executed == ["00_first", "01_second"] and upstream.summary["second"]["value"] == 16
    second_manifest = store.read_manifest(root / "runs" / "01_second")
    assert second_manifest["inputs"]["00_first"] == store.manifest_hash(root / "runs" / "00_first")


def test_changed_data_reruns_everything(project, tiny_voc):
    _runner(project).run()
    (tiny_voc / "ImageSets/Segmentation/train.txt").write_text("train_0\n")
    result = _runner(project).run()
    assert result.executed == ["00_first", "01_second"] and result.summary["first"]["product"] == 1


def test_only_and_from(project):
    with pytest.raises(ConfigError, match="reads stage 00_first, which has not completed"):
        _runner(project).run(only="01_second")
    assert _runner(project).run(only="00_first").executed == ["00_first"]
    assert _runner(project).run(start_from="01_second").executed == ["01_second"]
    assert _runner(project).run(only="00_first", force=True).executed == ["00_first"]
    with pytest.raises(ConfigError, match="--only '02_third': no such stage"):
        _runner(project).run(only="02_third")


def test_failed_stage_is_not_marked_complete(project):
    root = project[0]
    _runner(project).run()
    with pytest.raises(StageFailed, match="stage 01_second failed in cell .*ValueError: boom in second"):
        _runner(project, ["01_second.fail=True"]).run()
    assert store.read_manifest(root / "runs" / "01_second") is None
    assert (root / "runs" / "01_second" / "01_second.failed.ipynb").exists()
    assert "01_second" not in json.loads((root / "runs" / "summary.json").read_text())["stages"]
    # Fixing the parameter runs it again and clears the failure.
    assert _runner(project).run().executed == ["01_second"]
    assert not (root / "runs" / "01_second" / "01_second.failed.ipynb").exists()


@pytest.mark.parametrize("override, message", [
    ("01_second.z=1", "stage 01_second: unknown parameter 'z'"),
    ("01_second.y='two'", "parameter 'y' must be int .* got str 'two'"),
    ("01_second.fail=1", "parameter 'fail' must be bool"),
    ("03_nothing.a=1", r"unknown stage\(s\) \['03_nothing'\]"),
])
def test_bad_parameters_fail_before_anything_runs(project, override, message):
    with pytest.raises(ConfigError, match=message):
        _runner(project, [override]).run()
    assert not (project[0] / "runs" / "00_first").exists()


def test_a_replicate_runs_the_upstream_stages_with_its_own_seed_on_the_same_data(project):
    """The runner of replicate r: the profile with seed r, the embedded data's seed kept, stages 0-4
    only, into <run>/replicates/r<r>, publishing nothing; the segmentation stage gets N."""
    from orandnet_lib.book.runner import REPLICATE_READER, REPLICATED_STAGES
    from orandnet_lib.book.stage import replicate_dir

    root, profile = project
    embedded = {**profile, "replicates": 3, "data": {"source": "embedded", "generator": {"image_size": 32}}}
    runner = Runner(embedded, root=root, run_dir=root / "runs", progress=False, log=lambda m: None)
    sub = runner.replicate_runner(2)
    assert sub.profile["seed"] == 2 and sub.replicates == 1 and not sub.publishes
    assert sub.profile["data"]["generator"]["seed"] == 0  # the same scenes as replicate 0
    assert sub.run_dir == replicate_dir(root / "runs", 2) == root / "runs" / "replicates" / "r2"
    assert set(sub.stages) <= set(REPLICATED_STAGES)
    # given the stages' recipes (as `orandnet run` is), a replicate runs them in process: its chapters are never read
    assert not sub.in_process
    fast = Runner(embedded, root=root, run_dir=root / "runs", progress=False, log=lambda m: None, recipes=_recipes)
    assert not fast.in_process and fast.replicate_runner(1).in_process and fast.replicate_runner(1).recipes is _recipes
    from conftest import REPO

    smoke = Runner("smoke", root=REPO, progress=False, log=lambda m: None)  # the real stages: the reader gets N
    assert smoke.replicates == 2 and smoke.params_for(REPLICATE_READER, Path())["replicates"] == 2
    assert "replicates" not in smoke.params_for(REPLICATED_STAGES[-1], Path())
    with pytest.raises(ConfigError, match="replicates must be a positive integer"):
        from orandnet_lib.book.profiles import apply_overrides
        apply_overrides(profile, ["replicates=0"])


def test_status_names_complete_stale_and_missing_stages_without_running_any(project, capsys):
    from orandnet_lib.book.runner import format_status

    fresh = {r["stage"]: r["state"] for r in _runner(project).status()}
    assert fresh == {"00_first": "not run", "01_second": "not run"}
    _runner(project).run()
    rows = {r["stage"]: r for r in _runner(project).status()}
    assert [r["state"] for r in rows.values()] == ["complete", "complete"]
    assert rows["00_first"]["wall_time_s"] > 0 and rows["00_first"]["started_at"]
    changed = {r["stage"]: r for r in _runner(project, ["00_first.x=2"]).status()}
    assert changed["00_first"]["state"] == "stale" and changed["00_first"]["why"] == "parameters changed: x"
    # stage 1's own record still matches: what it read is what is on disk until stage 0 runs again
    assert changed["01_second"]["state"] == "complete"
    _runner(project, ["00_first.x=2"]).run(only="00_first")
    after = {r["stage"]: r for r in _runner(project, ["00_first.x=2"]).status()}
    assert after["01_second"]["state"] == "stale" and after["01_second"]["why"].startswith("re-run upstream")
    text = format_status(_runner(project, ["00_first.x=2"]))
    assert "00_first" in text and "1 of 2 stages complete" in text
    assert not list((project[0] / "runs").glob("*/*.tmp*")), "status writes nothing"


def _recipes(name, params):
    """The two notebooks above as recipes, for runs in process (what orandnet_lib.recipes is to the stages)."""
    from orandnet_lib.book.stage import open_stage
    from orandnet_lib.data.voc import VOCDataset

    stage = open_stage(name, params["profile"], params["data_root"], params["run_dir"], params["seed"])
    if name == "00_first":
        n = len(VOCDataset(params["data_root"], "train"))
        (stage.dir / "out.txt").write_text(str(params["x"] * n))
        return stage.record(metrics={"x": params["x"]}, summary={"first": {"product": params["x"] * n}})
    value = int((stage.upstream("00_first").dir / "out.txt").read_text())
    if params["fail"]:
        raise ValueError("boom in second")
    return stage.record(summary={"second": {"value": value + params["y"]}})


def test_a_run_in_process_computes_what_the_notebooks_do_and_leaves_no_chapter(project):
    root = project[0]
    inproc = _runner(project, recipes=_recipes, in_process=True).run()
    assert inproc.executed == ["00_first", "01_second"]
    assert inproc.summary["first"]["product"] == 3 and inproc.summary["second"]["value"] == 5
    manifest = store.read_manifest(root / "runs" / "01_second")
    assert manifest["execution"] == "in-process" and manifest["params"]["y"] == 2 and manifest["cpu_time_s"] >= 0
    # the stage's own CPU time in both files, not this process's since it started (pytest's imports: seconds)
    metrics = store.read_json(root / "runs" / "01_second" / "metrics.json")
    assert metrics["cpu_time_s"] == pytest.approx(manifest["cpu_time_s"], abs=1e-3) and metrics["cpu_time_s"] < 1.0
    assert metrics["peak_worker_rss_mb"] is None  # unknown in a process that ran others (NaN, written as null)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.ipynb")) == \
        ["notebooks/00_first.ipynb", "notebooks/01_second.ipynb"], "nothing executed or published"
    # current for another run in process; a book needs the executed notebooks, so a notebook run re-runs both
    assert _runner(project, recipes=_recipes, in_process=True).run().skipped == ["00_first", "01_second"]
    why = {r["stage"]: (r["state"], r["why"]) for r in _runner(project).status()}
    assert why["00_first"] == ("stale", "ran in process (--in-process): no executed notebook for the book")
    book = _runner(project).run()
    assert book.executed == ["00_first", "01_second"] and book.summary["second"]["value"] == 5
    assert store.read_manifest(root / "runs" / "01_second")["execution"] == "notebook"
    # a stage re-run in process drops the executed notebook it no longer matches
    assert _runner(project, ["01_second.y=3"], recipes=_recipes, in_process=True).run().executed == ["01_second"]
    assert not (root / "runs" / "01_second" / "01_second.ipynb").exists()
    assert (root / "runs" / "00_first" / "00_first.ipynb").exists()
    # a replicate shows no chapter: its stages are current by their manifests, however they ran
    replicate = _runner(project, ["01_second.y=3"])
    replicate.is_replicate, replicate.publishes = True, False  # as replicate_runner makes it
    assert replicate.run().skipped == ["00_first", "01_second"]


def test_a_recipe_that_fails_names_its_stage_and_marks_nothing_complete(project):
    root = project[0]
    with pytest.raises(StageFailed, match="stage 01_second failed in its recipe: ValueError: boom in second"):
        _runner(project, ["01_second.fail=True"], recipes=_recipes, in_process=True).run()
    assert store.read_manifest(root / "runs" / "01_second") is None
    assert store.read_manifest(root / "runs" / "00_first") is not None
    with pytest.raises(ConfigError, match="--in-process runs no notebooks"):
        _runner(project, recipes=_recipes, in_process=True, publish=True)
    with pytest.raises(ConfigError, match="needs the stages' recipes"):
        _runner(project, in_process=True)


def test_a_stage_in_process_measures_its_own_memory_peak():
    import numpy as np

    from orandnet_lib.book.stage import high_water_rss_mb, release_memory, reset_peak_rss

    big = np.ones(50_000_000)  # 400 MB, then freed: the process's peak is above what it holds now
    del big
    release_memory()  # as the runner does first: a process that opened a stage keeps freed blocks
    if not reset_peak_rss():
        pytest.skip("this system does not allow resetting a process's peak memory")
    after_reset = high_water_rss_mb()
    block = np.ones(25_000_000)  # 200 MB
    grown = high_water_rss_mb()
    del block
    assert grown - after_reset == pytest.approx(200, abs=25)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_memory_a_stage_freed_goes_back_to_the_system_before_the_next_runs_in_process():
    """glibc keeps the small blocks a stage freed resident: the runner releases them around each stage."""
    import re

    import numpy as np

    from orandnet_lib.book.stage import release_memory

    def resident_mb() -> float:
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

    blocks = [np.ones(125) for _ in range(200_000)]  # 200k heap blocks of 1 kB
    last = blocks[-1]  # the heap's top stays in use, so free() alone cannot shrink it
    del blocks
    held = resident_mb()
    release_memory()
    assert held - resident_mb() > 150, "the freed blocks stayed resident"
    assert last.sum() == 125


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_an_open_stage_keeps_freed_blocks_instead_of_faulting_them_in_again():
    """A batch loop that allocates and frees the same 64 MB block: by default glibc unmaps it on
    free and page-faults it in again on the next batch; after keep_freed_memory it reuses it."""
    code = """
import resource, sys, torch
from orandnet_lib.book.stage import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = torch.ones(16_000_000)  # 64 MB, written: every page touched (numpy would ask for huge pages)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("default", "kept")}
    pages = 20 * 64 * 2**20 // 4096
    assert faults["default"] > 0.9 * pages  # every batch faults its block in again
    assert faults["kept"] < 0.5 * pages  # the first batch, and what the kernel reclaims meanwhile (0.1-0.35 measured)


def test_the_stages_checks_see_every_parameter_and_stop_the_run_before_any_stage(project):
    seen = {}

    def checks(stage, params):
        seen[stage] = params
        if stage == "01_second" and params["y"] > 9:
            raise ConfigError("y above 9")

    with pytest.raises(ConfigError, match="y above 9"):
        _runner(project, ["01_second.y=10"], checks=checks).run()
    assert not (project[0] / "runs" / "00_first").exists()
    assert seen["00_first"]["x"] == 1 and seen["01_second"]["y"] == 10 and seen["01_second"]["fail"] is False
    assert _runner(project, ["01_second.y=9"], checks=checks).run().executed == ["00_first", "01_second"]


def test_a_process_started_by_a_large_one_reports_its_own_memory_peak():
    """A kernel started by a runner that ran stages in process inherits the runner's ru_maxrss
    (Linux keeps it across fork and exec); its recorded peak must be its own."""
    import subprocess
    import sys

    big = bytearray(600 * 2**20)
    big[::4096] = b"\x01" * len(big[::4096])  # resident, not only reserved
    code = "from orandnet_lib.book.stage import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del big
    assert child < 300, f"the child reported {child:.0f} MiB: its parent's peak, not its own"
