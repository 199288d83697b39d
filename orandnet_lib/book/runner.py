"""Executes the stage notebooks in order with papermill, and only those that need it.

A stage is a notebook ``notebooks/NN_name.ipynb``; its name is the file stem. Each stage's
fingerprint hashes its parameters, its notebook's source, the manifests of the stages it
reads (and, for the first stage, the dataset's fingerprint). A stage whose fingerprint
matches its manifest is skipped; a change anywhere upstream changes the manifests it reads,
so everything downstream of a change runs again. The manifest is written only after the
notebook finished without error, and removed before a stage runs: a failed run leaves no
stage marked complete.

A profile's ``replicates = N`` (default 1) repeats stages 0-4 with seeds 1..N-1 into
``<run>/replicates/r<r>`` before this run's stages (same data, same settings, each in its own key
space through its seed): chapters 1-4 show each headline number beside its spread over the
replicates, and the segmentation stage, which gets N, trains the headline sets on every
replicate's pseudo-masks and pairs its comparisons by replicate. Given the stages' recipes
(``orandnet_lib.recipes``), a replicate runs them in process rather than executing notebooks whose
chapters nobody reads; ``in_process`` does the same for the run's own stages (no chapters then).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import atexit
import functools
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from . import profiles
from ..core import progress
from ..core import runlock, store
from ..core import paths
from ..core.precision import resolve_bf16
from ..data.fingerprint import data_fingerprint
from ..core.errors import ConfigError, RunInterrupted, StageFailed
from .stage import METRICS_FILE, cpu_seconds, high_water_rss_mb, release_memory, replicate_dir, reset_peak_rss
from .status_line import StatusLine
from .try_it import try_it

Recipes = Callable[[str, dict[str, Any]], dict[str, Any]]  # (stage, its parameters) -> what it recorded
Checks = Callable[[str, dict[str, Any]], None]  # (stage, its parameters): raises ConfigError on a bad combination
KERNEL_LOG_ENV = "ORANDNET_KERNEL_LOG"  # where the runner's kernels write their process stderr
SUMMARY_FILE = "summary.json"
LAST_RUN_FILE = "last_run.json"  # the stages the latest `orandnet run` executed and skipped
COMMON_PARAMETERS = ("profile", "data_root", "run_dir", "seed")
# Which earlier stages each stage reads. A notebook not listed here reads all earlier ones.
STAGE_DEPENDS: dict[str, tuple[str, ...]] = {
    "00_dataset": (),
    "01_classifiers_and_cams": ("00_dataset",),
    "02_or_and_ensembles": ("01_classifiers_and_cams",),
    "03_orandnet": ("01_classifiers_and_cams", "02_or_and_ensembles"),
    "04_refinement": ("01_classifiers_and_cams", "02_or_and_ensembles", "03_orandnet"),
    "05_segmentation_curriculum": ("00_dataset", "04_refinement"),
    "06_precision_vs_miou": ("01_classifiers_and_cams", "02_or_and_ensembles", "03_orandnet", "04_refinement",
                             "05_segmentation_curriculum"),
}
# The stages a whole-pipeline replicate repeats (with its own seed), and the stage that reads them.
REPLICATED_STAGES = ("00_dataset", "01_classifiers_and_cams", "02_or_and_ensembles", "03_orandnet", "04_refinement")
REPLICATE_READER = "05_segmentation_curriculum"
_VERSION_PACKAGES = ("numpy", "torch", "torchvision", "timm", "papermill", "scikit-image", "pillow", "pandas")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "orandnet_lib": __version__}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _commit(root: Path) -> str:
    """The checkout's commit (short hash, "+changes" when its tracked files differ), or "unknown"."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def book_runs(book_dir: Path) -> dict[str, list[str]]:
    """The runs the executed chapters in ``book_dir`` came from: {run description: [chapters]}."""
    import json

    runs: dict[str, list[str]] = {}
    for path in sorted(Path(book_dir).glob("[0-9][0-9]_*.ipynb")):
        stamp = json.loads(path.read_text()).get("metadata", {}).get("orandnet_run")
        key = ("unstamped" if stamp is None else
               f"{stamp['run_dir']} (profile {stamp['profile']}, data {stamp['data']})")
        runs.setdefault(key, []).append(path.stem)
    return runs


def check_one_run(book_dir: Path) -> None:
    """Refuse to build a book from executed chapters of different runs, naming them."""
    runs = book_runs(book_dir)
    if len(runs) > 1:
        detail = "; ".join(f"{run}: {', '.join(chapters)}" for run, chapters in runs.items())
        raise ConfigError(f"{book_dir} holds chapters of {len(runs)} different runs ({detail}); re-run one profile "
                          "completely (`orandnet run --profile NAME --force`) or publish one run with --publish")


@functools.lru_cache(maxsize=1)
def _ipc_kernel_manager() -> type:
    """A kernel manager that talks to the kernel over local sockets (IPC) in a private
    temporary folder: no TCP ports, and no "running over TCP without encryption" warning
    printed by every stage."""
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    folder = tempfile.mkdtemp(prefix="orandnet-kernel-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)

    class IPCKernelManager(AsyncKernelManager):
        transport = "ipc"
        ip = os.path.join(folder, "kernel")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            # The kernel process's own stderr (its shutdown messages, a ZMQ traceback when a run is
            # interrupted mid-reply) goes to the stage's kernel.log, not the user's terminal.
            log = os.environ.get(KERNEL_LOG_ENV)
            if not log:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(log, "ab") as stream:
                kw["stderr"] = stream
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (the kernels started in it inherit them)."""
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (timeout, a scheduler, CI) and SIGINT sent to this process stop a run as Ctrl-C
    does: as KeyboardInterrupt, so the kernel is shut down and the stage left unmarked."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:  # forked workers reset it (core.parallel)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def discover_stages(notebook_dir: Path) -> list[str]:
    """Stage names (notebook stems starting with two digits) in execution order."""
    stages = sorted(p.stem for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not stages:
        raise ConfigError(f"no stage notebooks (NN_name.ipynb) in {notebook_dir}")
    return stages


def depends_on(stage: str, stages: Sequence[str]) -> tuple[str, ...]:
    if stage in STAGE_DEPENDS:
        return STAGE_DEPENDS[stage]
    return tuple(stages[: stages.index(stage)])


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The defaults of a notebook's ``parameters`` cell, as Python values."""
    import papermill

    found = papermill.inspect_notebook(str(path))
    out = {}
    for name, info in found.items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            out[name] = None  # an expression default: any type is accepted
    return out


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameters(stage: str, path: Path, params: dict[str, Any]) -> None:
    """Every parameter must exist in the notebook's parameters cell with a matching type."""
    defaults = notebook_parameters(path)
    for name, value in params.items():
        if name not in defaults:
            raise ConfigError(
                f"stage {stage}: unknown parameter {name!r}; {path.name} has {', '.join(sorted(defaults))}"
            )
        if not _type_ok(defaults[name], value):
            raise ConfigError(
                f"stage {stage}: parameter {name!r} must be {type(defaults[name]).__name__} "
                f"(like its default {defaults[name]!r}), got {type(value).__name__} {value!r}"
            )


@dataclass
class StagePlan:
    name: str
    notebook: Path
    params: dict[str, Any]
    inputs: dict[str, str]
    fingerprint: str
    notebook_sha256: str = ""  # the notebook as planned (it may be edited while the stage runs)


@dataclass
class RunResult:
    run_dir: Path
    executed: list[str]
    skipped: list[str]
    summary: dict[str, Any]


class Runner:
    """Plans and executes the stages of one profile into one run folder."""

    def __init__(self, profile: str | dict[str, Any] = "smoke", *, data_root: str | os.PathLike[str] | None = None,
                 run_dir: str | os.PathLike[str] | None = None, overrides: Iterable[str] = (),
                 root: str | os.PathLike[str] | None = None, book_dir: str | os.PathLike[str] | None = None,
                 progress: bool = True, log: Callable[[str], None] = print, publish: bool | None = None,
                 recipes: Recipes | None = None, in_process: bool = False, checks: Checks | None = None):
        self.root = Path(root).resolve() if root else profiles.project_root()
        base = profiles.load_profile(profile) if isinstance(profile, str) else profile
        self.overrides = list(overrides)
        self.base_profile = base
        self.profile = profiles.apply_overrides(base, self.overrides)
        self.data_override = data_root
        self.run_dir = Path(run_dir).resolve() if run_dir else self.root / "runs" / self.profile["name"]
        self.notebook_dir = paths.notebook_dir(self.root)
        self.book_dir = Path(book_dir) if book_dir else self.root / "book" / "executed"
        # A book comes from one run: the profile's own run folder publishes, an experiment in
        # another folder does not (unless asked to, or given its own book folder).
        default_run = self.run_dir == self.root / "runs" / self.profile["name"]
        self.publishes = bool(publish) if publish is not None else (default_run or book_dir is not None)
        # The stages' recipes (orandnet_lib.recipes.run_recipe, handed down by the entry point: stages sit
        # above this layer) run a stage in this process without its notebook. The replicates' stages, whose
        # chapters nobody reads, always run so when given; this run's own with in_process (then no chapter,
        # nothing to publish).
        self.recipes = recipes
        self.in_process = in_process
        # The stages' own checks of how their parameters combine (orandnet_lib.recipes.check_recipe, handed
        # down likewise), run on every selected stage before the first one starts.
        self.checks = checks
        self.is_replicate = False  # set by replicate_runner
        if in_process:
            if recipes is None:
                raise ConfigError("a run in process needs the stages' recipes (orandnet_lib.recipes.run_recipe)")
            if publish:
                raise ConfigError("--in-process runs no notebooks, so there is no chapter to --publish")
            self.publishes = False
        self.progress = progress
        self.log = log
        self.stages = discover_stages(self.notebook_dir)
        self.replicates = int(self.profile.get("replicates", 1))
        unknown = sorted(set(self.profile["stages"]) - set(self.stages))
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown} in profile or overrides; stages: {', '.join(self.stages)}")

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def _check_stage(self, stage: str | None, flag: str) -> None:
        if stage is not None and stage not in self.stages:
            raise ConfigError(f"{flag} {stage!r}: no such stage; stages: {', '.join(self.stages)}")

    def params_for(self, stage: str, data_root: Path) -> dict[str, Any]:
        common = {"profile": self.profile["name"], "data_root": str(data_root), "run_dir": str(self.run_dir),
                  "seed": int(self.profile["seed"])}
        if stage == REPLICATE_READER and REPLICATE_READER in self.stages:
            common["replicates"] = self.replicates
        params = {**common, **self.profile["stages"].get(stage, {})}
        # "auto" precision becomes what runs here, before the notebook makes its artifact keys.
        return {k: resolve_bf16(v) if k.endswith("bf16") else v for k, v in params.items()}

    def plan(self, stage: str, data_root: Path, data_fp: str) -> StagePlan:
        notebook = self.notebook_dir / f"{stage}.ipynb"
        params = self.params_for(stage, data_root)
        check_parameters(stage, notebook, params)
        params = {**notebook_parameters(notebook), **params}  # the manifest records every value used
        inputs: dict[str, str] = {}
        deps = depends_on(stage, self.stages)
        for dep in deps:
            h = store.manifest_hash(self.stage_dir(dep))
            if h is None:
                raise ConfigError(f"stage {stage} reads stage {dep}, which has not completed in {self.run_dir}; "
                                  f"run it first (drop --only / --from)")
            inputs[dep] = h
        if not deps:
            inputs["data"] = data_fp
        # Stages 1-4 show the replicates' numbers beside their own; stage 5 reads their pseudo-masks.
        read = stage if stage in REPLICATED_STAGES[1:] else REPLICATED_STAGES[-1] if stage == REPLICATE_READER else None
        if read is not None and self.replicates > 1:
            for r in range(1, self.replicates):
                h = store.manifest_hash(replicate_dir(self.run_dir, r) / read)
                if h is None:
                    raise ConfigError(f"stage {stage} reads replicate {r}, which has not completed in "
                                      f"{replicate_dir(self.run_dir, r)}; run the profile without --only")
                inputs[f"replicate {r}"] = h
        # The data path is where the data is, not what it is: the data fingerprint covers content.
        hashed = {k: v for k, v in params.items() if k not in ("data_root", "run_dir")}
        notebook_sha = store.hash_file(notebook)
        fingerprint = store.hash_obj({"params": hashed, "inputs": inputs, "notebook": notebook_sha})
        return StagePlan(stage, notebook, params, inputs, fingerprint, notebook_sha)

    def is_current(self, plan: StagePlan) -> bool:
        """The stage's manifest matches the plan, and (for a notebook run) its executed notebook is there:
        a stage run in process counts as current for another in-process run, not for a book. A replicate's
        chapters are never shown, so its stages are current by their manifests however they ran."""
        manifest = store.read_manifest(self.stage_dir(plan.name))
        executed = self.stage_dir(plan.name) / f"{plan.name}.ipynb"
        return (manifest is not None and manifest.get("fingerprint") == plan.fingerprint
                and (self.in_process or self.is_replicate or executed.exists()))

    def execute(self, plan: StagePlan) -> None:
        out_dir = self.stage_dir(plan.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        last_time = (store.read_manifest(out_dir) or {}).get("wall_time_s")  # for the status line's estimate
        (out_dir / store.MANIFEST).unlink(missing_ok=True)  # incomplete until it finishes
        (out_dir / METRICS_FILE).unlink(missing_ok=True)
        # Progress bars go to the stage's progress.log (one line per update), not into the notebook;
        # the status line shows the latest bar in the terminal.
        progress_log = out_dir / "progress.log"
        progress_log.unlink(missing_ok=True)
        status = (StatusLine(plan.name, progress_log, last_time, sys.stderr) if self.progress
                  else contextlib.nullcontext())
        progress_env = {progress.ENV_VAR: f"file:{progress_log}" if self.progress else "off"}
        started_at = _now()
        if self.in_process:
            wall, record = self._execute_recipe(plan, out_dir, progress_env, status)
        else:
            wall, record = self._execute_notebook(plan, out_dir, progress_env, status)
        manifest = {
            "stage": plan.name,
            "profile": self.profile["name"],
            "fingerprint": plan.fingerprint,
            "params": plan.params,
            "inputs": plan.inputs,
            "notebook_sha256": plan.notebook_sha256 or store.hash_file(plan.notebook),
            "execution": "in-process" if self.in_process else "notebook",
            "versions": versions(),
            "commit": _commit(self.root),
            "seed": plan.params["seed"],
            "started_at": started_at,
            "wall_time_s": round(wall, 3),
            "kernel_wall_time_s": round(record.get("kernel_wall_time_s", float("nan")), 3),
            "peak_rss_mb": round(record.get("peak_rss_mb", float("nan")), 1),
            "peak_worker_rss_mb": round(record.get("peak_worker_rss_mb", float("nan")), 1),
            "cpu_time_s": round(record.get("cpu_time_s", float("nan")), 3),
            "metrics": record.get("metrics", {}),
            "summary": record.get("summary", {}),
        }
        store.write_json(out_dir / store.MANIFEST, manifest)

    def _execute_recipe(self, plan: StagePlan, out_dir: Path, env: dict[str, str],
                        status: Any) -> tuple[float, dict[str, Any]]:
        """The stage's recipe in this process. Its executed notebook, if an earlier run left one, no
        longer matches and goes; the CPU time and memory peak are this stage's own (measured around
        the call), and the peak of its worker processes is unknown (NaN) in a process that ran others."""
        assert self.recipes is not None
        for stale in (f"{plan.name}.ipynb", f"{plan.name}.failed.ipynb"):
            (out_dir / stale).unlink(missing_ok=True)
        release_memory()  # what earlier stages freed is not this stage's
        own_peak = reset_peak_rss()
        cpu0, start = cpu_seconds(), time.perf_counter()
        with _environment(env), status:
            try:
                self.recipes(plan.name, plan.params)
            except (KeyboardInterrupt, RunInterrupted, ConfigError):
                raise
            except Exception as e:  # the traceback stays chained to it
                raise StageFailed(f"stage {plan.name} failed in its recipe: {type(e).__name__}: {e}") from e
            finally:
                release_memory()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
        if not (out_dir / METRICS_FILE).exists():
            raise StageFailed(f"stage {plan.name}'s recipe finished but did not call stage.record()")
        record = store.read_json(out_dir / METRICS_FILE)
        record.update(cpu_time_s=cpu, peak_rss_mb=high_water_rss_mb() if own_peak else float("nan"),
                      peak_worker_rss_mb=float("nan"))
        store.write_json(out_dir / METRICS_FILE, record)  # stage.record's are the whole process's so far
        return wall, record

    def _execute_notebook(self, plan: StagePlan, out_dir: Path, env: dict[str, str],
                          status: Any) -> tuple[float, dict[str, Any]]:
        """The stage's notebook, executed by papermill in a kernel of its own."""
        import papermill
        from papermill.exceptions import PapermillExecutionError

        executed = out_dir / f"{plan.name}.ipynb"
        failed = out_dir / f"{plan.name}.failed.ipynb"
        # The kernel inherits these, and writes its process stderr to the stage's kernel.log.
        kernel_env = {**env, KERNEL_LOG_ENV: str(out_dir / "kernel.log")}
        start = time.perf_counter()
        with _environment(kernel_env), store.atomic_path(executed) as tmp, status:
            try:
                papermill.execute_notebook(
                    str(plan.notebook), str(tmp), parameters=plan.params, kernel_name="python3",
                    cwd=str(self.notebook_dir), progress_bar=False, kernel_manager_class=_ipc_kernel_manager(),
                )
            except PapermillExecutionError as e:
                shutil.copyfile(tmp, failed)  # papermill saved the notebook with the error in it
                raise StageFailed(
                    f"stage {plan.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                    f"the executed notebook with the full traceback is {failed}"
                ) from None
        failed.unlink(missing_ok=True)
        wall = time.perf_counter() - start
        if not (out_dir / METRICS_FILE).exists():
            raise StageFailed(f"stage {plan.name} finished but did not call stage.record(); see {executed}")
        return wall, store.read_json(out_dir / METRICS_FILE)

    def run_stamp(self, data_fp: str) -> dict[str, str]:
        """What makes a run one run: its folder, profile and data (a book shows exactly one)."""
        try:
            folder = str(self.run_dir.relative_to(self.root))
        except ValueError:
            folder = str(self.run_dir)
        return {"run_dir": folder, "profile": self.profile["name"], "data": data_fp}

    def _shown(self, value: Any) -> str:
        """A parameter value for the page (paths as :func:`profiles.display_path` shows them)."""
        if isinstance(value, str) and os.path.isabs(value):
            return f"`{profiles.display_path(value, self.root)}`"
        return f"`{value!r}`"

    def parameters_box(self, stage: str, params: dict[str, Any]) -> str:
        """Markdown: every parameter that ran, and where its value came from."""
        from_profile = self.base_profile.get("stages", {}).get(stage, {})
        from_cli = {key.partition("=")[0].strip() for key in self.overrides}
        rows = []
        for name, value in params.items():
            if f"{stage}.{name}" in from_cli or (name == "seed" and "seed" in from_cli):
                source = "**-p override**"
            elif name in from_profile and from_profile[name] == "auto" and name.endswith("bf16"):
                source = (f"profile `{self.profile['name']}` (`'auto'`: this CPU "
                          f"{'computes' if value else 'has no'} bfloat16 in hardware)")
            elif name in from_profile:
                source = f"profile `{self.profile['name']}`"
            elif name in COMMON_PARAMETERS:
                source = "run"
            else:
                source = "notebook default"
            rows.append(f"| `{name}` | {self._shown(value)} | {source} |")
        return "\n".join([":::{dropdown} Parameters of this run", "| parameter | value | from |", "|---|---|---|",
                          *rows, ":::"])

    def publish(self, stage: str, data_fp: str) -> None:
        """Copy the executed notebook to where the book renders it, stamped with the run it
        came from (metadata for the one-run check, and a line under the chapter's title)."""
        import nbformat

        src = self.stage_dir(stage) / f"{stage}.ipynb"
        manifest = store.read_manifest(self.stage_dir(stage)) or {}
        stamp = {**self.run_stamp(data_fp), "commit": _commit(self.root), "executed_at": manifest.get("started_at", "")}
        nb = nbformat.read(src, as_version=4)
        nb.metadata["orandnet_run"] = stamp
        line = (f"*From run {self._shown(str(self.run_dir))}: profile `{stamp['profile']}`, data `{stamp['data'][:24]}`, "
                f"commit `{stamp['commit']}`, executed {stamp['executed_at'].replace('T', ' ')}.*")
        cell = nbformat.v4.new_markdown_cell(line, metadata={"tags": ["run-stamp"]})
        cell.id = f"run-stamp-{stage[:2]}"
        nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, cell)
        # One parameters box: the values that ran, paths relative to the project; the notebook's
        # own defaults cell and papermill's injected cell (absolute paths) are not rendered.
        for c in nb.cells:
            tags = c.metadata.setdefault("tags", [])
            if c.cell_type == "code" and ({"parameters", "injected-parameters"} & set(tags)) and "remove-cell" not in tags:
                tags.append("remove-cell")
        box = nbformat.v4.new_markdown_cell(self.parameters_box(stage, manifest.get("params", {})),
                                            metadata={"tags": ["run-parameters"]})
        box.id = f"run-parameters-{stage[:2]}"
        nb.cells.insert(nb.cells.index(cell) + 1, box)
        experiment = try_it(stage, self.profile["name"])
        if experiment is not None:
            last = nbformat.v4.new_markdown_cell(experiment, metadata={"tags": ["try-it"]})
            last.id = f"try-it-{stage[:2]}"
            nb.cells.append(last)
        with store.atomic_path(self.book_dir / f"{stage}.ipynb") as tmp:
            nbformat.write(nb, tmp)

    def replicate_runner(self, replicate: int) -> "Runner":
        """The runner of replicate r: this profile with seed r (the embedded data keeps this run's
        seed, so every replicate reads the same scenes), stages 0-4 only, into
        :func:`~orandnet_lib.book.stage.replicate_dir`, publishing nothing: given the stages' recipes,
        in process (the chapters of a replicate are never read, so its notebooks would render them for nobody)."""
        profile = copy.deepcopy(self.profile)
        if profile["data"].get("source", "embedded") == "embedded":
            profile["data"].setdefault("generator", {}).setdefault("seed", int(self.profile["seed"]))
        profile["seed"], profile["replicates"] = int(self.profile["seed"]) + replicate, 1
        sub = Runner(profile, data_root=self.data_override, run_dir=replicate_dir(self.run_dir, replicate),
                     root=self.root, progress=self.progress, publish=False, recipes=self.recipes,
                     in_process=self.recipes is not None, checks=self.checks,
                     log=lambda m: self.log(f"[replicate {replicate}] {m}"))
        sub.stages = [s for s in sub.stages if s in REPLICATED_STAGES]
        sub.is_replicate = True
        return sub

    def run_replicates(self, force: bool = False) -> None:
        """Stages 0-4 of every replicate r = 1..N-1 (each skipped where unchanged)."""
        for r in range(1, self.replicates):
            try:
                self.replicate_runner(r).run(force=force, quiet_experiment=True)
            except RunInterrupted as e:  # say which replicate: its stages live in their own folder
                raise RunInterrupted(f"replicate {r}'s {e.stage}" if e.stage else f"replicate {r}",
                                     [f"replicate {r}'s {s}" for s in e.finished]) from None

    def write_summary(self) -> dict[str, Any]:
        """summary.json: the summary sections of every completed stage, in stage order."""
        summary: dict[str, Any] = {"profile": self.profile["name"], "seed": self.profile["seed"], "stages": {}}
        for stage in self.stages:
            manifest = store.read_manifest(self.stage_dir(stage))
            if manifest is None:
                continue
            summary = store.deep_merge(summary, manifest.get("summary", {}))
            summary["stages"][stage] = {k: manifest[k] for k in ("wall_time_s", "cpu_time_s", "peak_rss_mb")
                                        if k in manifest}
        if self.replicates > 1:  # each replicate's stages 1-4 results, for the spread over replicates
            summary["replicates"] = {"n": self.replicates, "runs": {}}
            for r in range(1, self.replicates):
                path = replicate_dir(self.run_dir, r) / SUMMARY_FILE
                if path.exists():
                    sub = store.read_json(path)
                    summary["replicates"]["runs"][str(r)] = {
                        k: sub[k] for k in ("seed", "classifiers", "cams", "pseudo_masks", "refinement", "stages")
                        if k in sub}
        store.write_json(self.run_dir / SUMMARY_FILE, summary)
        return summary

    def status(self) -> list[dict[str, Any]]:
        """Per stage of this run folder: its state ("complete", "stale" with why, "not run",
        "failed"), its wall time and when it started, against today's parameters and notebooks;
        nothing is run or generated. ``code`` names the commit a stage ran at when it differs
        from the checkout's (a code change does not make a stage stale: its artifacts' keys decide)."""
        data_root = profiles.data_root(self.profile, self.data_override)
        data_fp = data_fingerprint(data_root) if data_root.exists() else "missing"
        now = _commit(self.root)
        rows = []
        for stage in self.stages:
            out = self.stage_dir(stage)
            manifest = store.read_manifest(out)
            row: dict[str, Any] = {"stage": stage, "state": "not run", "why": "", "wall_time_s": None,
                                   "started_at": None, "code": ""}
            if manifest is None:
                if (out / f"{stage}.failed.ipynb").exists():
                    row.update(state="failed", why=f"see {profiles.display_path(out / f'{stage}.failed.ipynb')}")
                rows.append(row)
                continue
            row.update(wall_time_s=manifest.get("wall_time_s"), started_at=manifest.get("started_at"))
            if manifest.get("commit") and manifest["commit"] != now:
                row["code"] = f"ran at {manifest['commit']}, checkout at {now}"
            try:
                plan = self.plan(stage, data_root, data_fp)
            except ConfigError as e:
                row.update(state="stale", why=str(e))
                rows.append(row)
                continue
            if self.is_current(plan):
                row["state"] = "complete"
            else:
                old = manifest.get("params", {})
                changed = sorted(k for k in set(old) | set(plan.params) if k not in ("data_root", "run_dir")
                                 and old.get(k) != plan.params.get(k))
                upstream = sorted(k for k, v in plan.inputs.items() if manifest.get("inputs", {}).get(k) != v)
                why = ("parameters changed: " + ", ".join(changed) if changed else
                       "re-run upstream or changed data: " + ", ".join(upstream) if upstream else
                       "ran in process (--in-process): no executed notebook for the book" if
                       manifest.get("execution") == "in-process" and not (out / f"{stage}.ipynb").exists() else
                       "its executed notebook is missing" if not (out / f"{stage}.ipynb").exists() else
                       "its notebook changed")
                row.update(state="stale", why=why)
            rows.append(row)
        return rows

    def run(self, only: str | None = None, start_from: str | None = None, force: bool = False,
            quiet_experiment: bool = False) -> RunResult:
        self._check_stage(only, "--only")
        self._check_stage(start_from, "--from")
        if only and start_from:
            raise ConfigError("give --only or --from, not both")
        if only:
            selected = [only]
        elif start_from:
            selected = self.stages[self.stages.index(start_from):]
        else:
            selected = list(self.stages)
        # Check every parameter of every stage before the first runs (or data is generated): its name and
        # type against the notebook, then how the values combine (a stage's own check, when given).
        for stage in selected:
            notebook = self.notebook_dir / f"{stage}.ipynb"
            params = self.params_for(stage, Path())
            check_parameters(stage, notebook, params)
            if self.checks is not None:
                self.checks(stage, {**notebook_parameters(notebook), **params})
        # The data first: a run that cannot start (a missing folder, a bad layout) writes nothing.
        data_root = profiles.prepare_data(self.profile, self.data_override, progress=self.progress)
        with runlock.locked(self.run_dir, f"orandnet run --profile {self.profile['name']}"), _terminate_as_interrupt():
            return self._run_locked(selected, force, quiet_experiment, data_root)

    def _run_locked(self, selected: list[str], force: bool, quiet_experiment: bool, data_root: Path) -> RunResult:
        data_fp = data_fingerprint(data_root)
        executed, skipped = [], []
        if self.in_process and not quiet_experiment:
            self.log(f"(in process: the stages' numbers into {self.run_dir}, no chapters; the book in {self.book_dir} "
                     "is left as it is)")
        elif not self.publishes and not quiet_experiment:
            self.log(f"(an experiment in {self.run_dir}: the book's chapters in {self.book_dir} are left as they are; "
                     "--publish publishes this run)")
        if self.replicates > 1 and any(s in selected for s in (*REPLICATED_STAGES[1:], REPLICATE_READER)):
            self.run_replicates(force)
        for stage in selected:
            plan = self.plan(stage, data_root, data_fp)
            if not force and self.is_current(plan):
                self.log(f"[{stage}] unchanged, skipped")
                skipped.append(stage)
            else:
                self.log(f"[{stage}] running ...")
                try:
                    self.execute(plan)
                except RunInterrupted:
                    raise
                except KeyboardInterrupt:
                    raise RunInterrupted(stage, executed) from None
                finally:
                    self.write_summary()
                manifest = store.read_manifest(self.stage_dir(stage)) or {}
                self.log(f"[{stage}] done in {manifest.get('wall_time_s', float('nan')):.1f} s, "
                         f"peak {manifest.get('peak_rss_mb', float('nan')):.0f} MiB")
                executed.append(stage)
            if self.publishes:
                self.publish(stage, data_fp)
        summary = self.write_summary()
        # What this invocation did, for tools (make bench) that must not parse printed lines.
        store.write_json(self.run_dir / LAST_RUN_FILE, {"profile": self.profile["name"], "executed": executed,
                                                        "skipped": skipped, "finished_at": _now()})
        return RunResult(self.run_dir, executed, skipped, summary)


def format_status(runner: Runner) -> str:
    """``orandnet status``: one line per stage of the runner's folder."""
    rows = runner.status()
    lines = [f"{profiles.display_path(runner.run_dir)} (profile {runner.profile['name']})"]
    holder = runlock.holder(runner.run_dir)
    if holder is not None:
        state = "stale lock" if runlock.is_stale(holder) else "running now"
        lines.append(f"  {state}: process {holder.get('pid')} ({holder.get('what', '')}), started {holder.get('started')}")
    for r in rows:
        took = f"{r['wall_time_s']:8.1f} s" if r["wall_time_s"] is not None else f"{'-':>10}"
        extra = "; ".join(x for x in (r["why"], r["code"]) if x)
        lines.append(f"  {r['stage']:<28} {r['state']:<9} {took}  {r['started_at'] or ''}" + (f"  ({extra})" if extra else ""))
    done = sum(r["state"] == "complete" for r in rows)
    lines.append(f"{done} of {len(rows)} stages complete")
    return "\n".join(lines)
