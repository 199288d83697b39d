"""What a stage notebook uses to find its folders and record its results.

A notebook opens its stage with :func:`open_stage` (which works the same under the runner
and in an interactive Jupyter session), writes its artifacts under ``stage.dir`` and ends
with :meth:`Stage.record`. The runner turns the record into the stage's manifest once the
notebook has finished without error; a notebook never marks itself complete.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import profiles, store

METRICS_FILE = "metrics.json"


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB (Linux reports KiB) of this process, or with
    ``RUSAGE_CHILDREN`` of the largest of its finished worker processes."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished workers."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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

    def upstream(self, stage: str) -> Path:
        """The artifact folder of an earlier stage; it must have completed."""
        path = self.run_dir / stage
        if store.read_manifest(path) is None:
            raise FileNotFoundError(
                f"stage {stage} has not completed in {self.run_dir}; run `orandnet run --profile {self.profile} "
                f"--only {stage}` (or the whole profile) first"
            )
        return path

    def cam_store(self, variant: str, split: str) -> Path:
        """The CAM store of a variant written by any completed earlier stage
        (``<run_dir>/<stage>/cams/<variant>_<split>``)."""
        name = f"{variant}_{split}"
        found = sorted(p for p in self.run_dir.glob(f"*/cams/{name}") if store.read_manifest(p.parent.parent))
        if not found:
            known = sorted({p.name for p in self.run_dir.glob("*/cams/*")})
            raise FileNotFoundError(f"no CAM store {name!r} in {self.run_dir}; stores present: {known}")
        return found[-1]

    def pseudo_masks(self, variant: str) -> Path:
        """The VOC-layout pseudo-mask folder of a variant written by the refinement stage
        (``<run_dir>/04_refinement/pseudo_masks/<variant>``)."""
        root = self.upstream("04_refinement") / "pseudo_masks"
        path = root / variant
        if not path.is_dir():
            known = sorted(p.name for p in root.glob("*") if p.is_dir())
            raise FileNotFoundError(f"no pseudo-masks {variant!r} in {root}; variants present: {known} "
                                    "(stage 4's `variants` parameter chooses them)")
        return path

    def upstream_key(self, *stages: str) -> str:
        """A short hash of the named upstream stages' manifests: put it in the name of a
        checkpoint trained on their outputs, so a changed input never resumes a stale one."""
        return store.hash_obj([store.read_manifest(self.upstream(s)) for s in stages])[:12]

    def record(self, metrics: dict[str, Any] | None = None, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write this stage's metrics (and its sections of summary.json) atomically.

        ``summary`` is merged into ``<run_dir>/summary.json`` by the runner, e.g.
        ``{"dataset": {"n_train": 3000}}``.
        """
        record = {
            "metrics": metrics or {},
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
    if data_root and run_dir:
        return Stage(name=name, profile=profile, run_dir=Path(run_dir), data_root=Path(data_root), seed=seed)
    prof = profiles.load_profile(profile)
    data = Path(data_root) if data_root else profiles.prepare_data(prof)
    runs = Path(run_dir) if run_dir else profiles.project_root() / "runs" / prof["name"]
    return Stage(name=name, profile=prof["name"], run_dir=runs, data_root=data, seed=seed)
