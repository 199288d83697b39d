"""What a stage notebook uses to find its folders and record its results.

A notebook opens its stage with :func:`open_stage` (which works the same under the runner
and in an interactive Jupyter session), writes its artifacts under ``stage.dir`` and ends
with :meth:`Stage.record`. The runner turns the record into the stage's manifest once the
notebook has finished without error; a notebook never marks itself complete.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import time
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import profiles
from ..core import store
from ..core.errors import ConfigError

P = TypeVar("P")

METRICS_FILE = "metrics.json"


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB of this process (its own high-water mark), or with
    ``RUSAGE_CHILDREN`` of the largest of its finished worker processes. For this process Linux's
    VmHWM, not getrusage: its ``ru_maxrss`` keeps the peak of the process it was started from (a
    kernel started by a runner that had run stages in process reported the runner's peak)."""
    if who == resource.RUSAGE_SELF:
        own = high_water_rss_mb()
        if own == own:  # not NaN: /proc is there
            return own
    peak = resource.getrusage(who).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _glibc() -> Any:
    """The C library's functions (malloc_trim, mallopt), or None where it is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_memory() -> None:
    """Hand freed memory back to the system: glibc keeps the small blocks a stage freed, which in a
    process that runs several stages would count in the next stage's peak and stay with the process."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc keep freed blocks up to ``limit`` bytes for the next allocation instead of handing
    each large one back and page-faulting it in again: a CAM pass allocates the same big tensors for
    every batch, and a notebook's kernel, a fresh process, faulted them in again each time (the
    calibration record has the seconds). :func:`release_memory` still hands the memory back
    between stages. False where there is no glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))


def reset_peak_rss() -> bool:
    """Start this process's resident-memory high-water mark again from its current size (Linux's
    /proc/self/clear_refs), so a stage run inside a longer-lived process measures its own peak
    with :func:`high_water_rss_mb`; False where the system does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def high_water_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB since :func:`reset_peak_rss` (NaN if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass(frozen=True)
class Upstream:
    """A completed earlier stage, as later stages read it."""

    name: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        return self.manifest["params"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.get("summary", {})

    @property
    def digest(self) -> str:
        """A short hash of the manifest: changes whenever the stage re-ran differently."""
        return store.hash_obj(self.manifest)[:16]


@dataclass
class Stage:
    name: str
    profile: str
    run_dir: Path
    data_root: Path
    seed: int
    started: float = field(default_factory=time.perf_counter)

    @property
    def dir(self) -> Path:
        """This stage's artifact folder, ``<run_dir>/<stage>/``."""
        path = self.run_dir / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def upstream(self, stage: str, replicate: int = 0) -> "Upstream":
        """What an earlier stage recorded: its folder, parameters, metrics and summary. It
        must have completed in this run folder (``replicate`` r >= 1: in the run's replicate r,
        :func:`replicate_dir`)."""
        run_dir = replicate_dir(self.run_dir, replicate)
        path = run_dir / stage
        manifest = store.read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(
                f"stage {stage} has not completed in {run_dir}; run `orandnet run --profile {self.profile}` "
                f"(the whole profile{', which runs its replicates' if replicate else ''}) first"
            )
        return Upstream(stage, path, manifest)

    def replicate_summaries(self) -> dict[int, dict[str, Any]]:
        """This stage's summary in each other whole-pipeline replicate of the run that completed
        it (``{r: summary}``, r >= 1; empty without replicates)."""
        out = {}
        for path in sorted((self.run_dir / REPLICATES_DIR).glob(f"r*/{self.name}")):
            manifest = store.read_manifest(path)
            if manifest is not None and path.parent.name[1:].isdigit():
                out[int(path.parent.name[1:])] = manifest.get("summary", {})
        return dict(sorted(out.items()))

    def params(self, cls: type[P], namespace: Mapping[str, Any]) -> P:
        """The stage's typed parameters (a dataclass of its notebook's parameters cell) from the
        notebook's variables: ``p = stage.params(s4.Params, globals())``."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        missing = [n for n in names if n not in namespace]
        if missing:
            raise ConfigError(f"stage {self.name}: the parameters cell lacks {missing}")
        return store.dataclass_from_dict(cls, {n: namespace[n] for n in names}, f"{self.name} parameters")

    def cam_store(self, variant: str, split: str) -> Path:
        """The CAM store of a variant written by any completed earlier stage
        (``<run_dir>/<stage>/cams/<variant>_<split>``)."""
        name = f"{variant}_{split}"
        found = sorted(p for p in self.run_dir.glob(f"*/cams/{name}") if store.read_manifest(p.parent.parent))
        if not found:
            known = sorted({p.name for p in self.run_dir.glob("*/cams/*")})
            raise FileNotFoundError(f"no CAM store {name!r} in {self.run_dir}; stores present: {known}")
        return found[-1]

    def pseudo_masks(self, variant: str, replicate: int = 0) -> Path:
        """The VOC-layout pseudo-mask folder of a variant written by the refinement stage
        (``<run_dir>/04_refinement/pseudo_masks/<variant>``; of replicate r >= 1 under
        :func:`replicate_dir`)."""
        root = self.upstream("04_refinement", replicate).dir / "pseudo_masks"
        path = root / variant
        if not path.is_dir():
            known = sorted(p.name for p in root.glob("*") if p.is_dir())
            raise FileNotFoundError(f"no pseudo-masks {variant!r} in {root}; variants present: {known} "
                                    "(stage 4's `variants` parameter chooses them)")
        return path

    def record(self, metrics: dict[str, Any] | None = None, summary: dict[str, Any] | None = None,
               artifacts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write this stage's metrics (and its sections of summary.json) atomically.

        ``summary`` is merged into ``<run_dir>/summary.json`` by the runner, e.g.
        ``{"dataset": {"n_train": 3000}}``. ``artifacts`` ({name: ArtifactKey}) are recorded
        as ``metrics["artifacts"]`` ({name: {kind, digest}}) for later stages and the bench.
        """
        metrics = dict(metrics or {})
        if artifacts:
            metrics["artifacts"] = {name: {"kind": key.kind, "digest": key.digest} for name, key in artifacts.items()}
        record = {
            "metrics": metrics,
            "summary": summary or {},
            "kernel_wall_time_s": time.perf_counter() - self.started,
            "peak_rss_mb": peak_rss_mb(),
            "peak_worker_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
            "cpu_time_s": cpu_seconds(),
        }
        store.write_json(self.dir / METRICS_FILE, record)
        return record


def open_stage(name: str, profile: str = "smoke", data_root: str | os.PathLike[str] = "",
               run_dir: str | os.PathLike[str] = "", seed: int = 0) -> Stage:
    """The stage context for a notebook. The runner passes every argument; in a notebook
    opened by hand, an empty ``data_root`` / ``run_dir`` resolve from the profile:
    ``data.root`` (generated if embedded) and ``runs/<profile>/``."""
    keep_freed_memory()
    if data_root and run_dir:
        return Stage(name=name, profile=profile, run_dir=Path(run_dir), data_root=Path(data_root), seed=seed)
    prof = profiles.load_profile(profile)
    data = Path(data_root) if data_root else profiles.prepare_data(prof)
    runs = Path(run_dir) if run_dir else profiles.project_root() / "runs" / prof["name"]
    return Stage(name=name, profile=prof["name"], run_dir=runs, data_root=data, seed=seed)


REPLICATES_DIR = "replicates"


def replicate_dir(run_dir: Path, replicate: int) -> Path:
    """Where replicate r of a run's stages 1-4 lives: the run itself for r = 0, else
    ``<run_dir>/replicates/r<r>`` (the runner writes it with seed r)."""
    return Path(run_dir) if replicate == 0 else Path(run_dir) / REPLICATES_DIR / f"r{replicate}"


def without_masks(split: str, what: str = "these tables and figures") -> str:
    """The line a chapter shows where a split without masks (weakly labelled) leaves something
    out: masks are for scoring only, and nothing here can be scored without them."""
    return (f"*The `{split}` split has no masks (image-level labels only, as a weakly supervised method is "
            f"given): {what} need them and are left out. Everything the pipeline writes was still made.*")
