"""What differs between two runs: their parameters, then every number in summary.json.

For a researcher who re-executes a chapter with new parameters: ``orandnet compare RUN_A
RUN_B`` lists the parameters that differ (stage by stage, from the manifests), then each
metric of ``summary.json`` with its difference; where both runs trained the same setting over
seeds, the difference of the seed means comes with its interval: paired by seed when both ran the
same seeds (a pair shares what its seed draws, and with replicates its whole pipeline's draw),
Welch's t on the two sets of seeds otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from ..core import store
from ..core.stats import paired_difference
from ..core.errors import ConfigError

SKIPPED = {"stages", "refinement_timings"}  # timings differ on every run: not results
TIMING_WORDS = ("seconds", "time_s", "_ms", "rss_mb")
TESTS = {"paired": "paired by seed", "welch": "Welch, unpaired"}


@dataclass
class Comparison:
    a: Path
    b: Path
    params: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # (stage, name, a, b)
    metrics: list[tuple[str, float, float, float]] = field(default_factory=list)  # (key, a, b, b - a)
    seeded: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, seed_difference)
    only_in: dict[str, list[str]] = field(default_factory=dict)


def _summary(run: Path) -> dict[str, Any]:
    path = Path(run) / "summary.json"
    if not path.exists():
        raise ConfigError(f"{run} is not a run folder: it has no summary.json (run `orandnet run` first)")
    return store.read_json(path)


def _params(run: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for manifest in sorted(Path(run).glob("*/manifest.json")):
        out[manifest.parent.name] = {k: v for k, v in store.read_json(manifest)["params"].items()
                                     if k not in ("data_root", "run_dir")}
    return out


def _numbers(tree: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Dotted keys of every number in a summary (per-seed lists excluded: see _seeded)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if key in SKIPPED and not prefix or key == "per_seed":
                continue
            yield from _numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        if not any(word in prefix for word in TIMING_WORDS):
            yield prefix, float(tree)


def _seeded(tree: Any, prefix: str = "") -> Iterator[tuple[str, dict[Any, float]]]:
    """Entries with per-seed results: (dotted key of the entry's mIoU, {seed: value}); an entry
    that does not name its seeds is keyed by position."""
    if isinstance(tree, Mapping):
        if isinstance(tree.get("per_seed"), list) and len(tree["per_seed"]) > 1:
            values = [float(s["miou"]) for s in tree["per_seed"]]
            seeds = tree.get("seeds")
            names = list(seeds) if isinstance(seeds, list) and len(seeds) == len(values) else \
                [f"#{i}" for i in range(len(values))]
            yield f"{prefix}.miou", dict(zip(names, values))
        for key, value in tree.items():
            if key != "per_seed":
                yield from _seeded(value, f"{prefix}.{key}" if prefix else str(key))


def welch_difference(a: list[float], b: list[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean of b minus mean of a, Welch's standard error, degrees of freedom and interval."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    mean = float(xb.mean() - xa.mean())
    if se == 0:
        return {"mean": mean, "se": 0.0, "df": math.nan, "low": mean, "high": mean}
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    return {"mean": mean, "se": se, "df": float(df), "low": mean - half, "high": mean + half}


def seed_difference(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
    """Mean of b minus mean of a over seeds ``{seed: value}``: the paired difference when both ran
    the same seeds (:func:`core.stats.paired_difference`), else Welch's; ``"test"`` says which."""
    if set(a) == set(b):
        return {**paired_difference(a, b), "test": "paired"}
    return {**welch_difference(list(a.values()), list(b.values())), "test": "welch"}


def compare_runs(a: str | Path, b: str | Path) -> Comparison:
    a, b = Path(a), Path(b)
    sa, sb = _summary(a), _summary(b)
    out = Comparison(a, b)
    pa, pb = _params(a), _params(b)
    for stage in sorted(set(pa) | set(pb)):
        for name in sorted(set(pa.get(stage, {})) | set(pb.get(stage, {}))):
            va, vb = pa.get(stage, {}).get(name, "(not run)"), pb.get(stage, {}).get(name, "(not run)")
            if va != vb:
                out.params.append((stage, name, va, vb))
    na, nb = dict(_numbers(sa)), dict(_numbers(sb))
    out.metrics = [(k, na[k], nb[k], nb[k] - na[k]) for k in na if k in nb]
    out.only_in = {str(a): sorted(set(na) - set(nb)), str(b): sorted(set(nb) - set(na))}
    seeds_a, seeds_b = dict(_seeded(sa)), dict(_seeded(sb))
    out.seeded = [(k, seed_difference(seeds_a[k], seeds_b[k])) for k in seeds_a if k in seeds_b]
    return out


def format_comparison(c: Comparison, changed_only: bool = True) -> str:
    """Markdown: parameters that differ, then metrics (those that changed, unless asked for all)."""
    lines = [f"# {c.a.name} against {c.b.name}", "", f"A: `{c.a}`  ", f"B: `{c.b}`", "", "## Parameters that differ", ""]
    if c.params:
        lines += ["| stage | parameter | A | B |", "|---|---|---|---|"]
        lines += [f"| {s} | `{n}` | `{va!r}` | `{vb!r}` |" for s, n, va, vb in c.params]
    else:
        lines.append("None: the two runs were made with the same parameters.")
    rows = [m for m in c.metrics if not changed_only or abs(m[3]) > 1e-9]
    lines += ["", f"## Results ({len(rows)} of {len(c.metrics)} numbers differ)" if changed_only else "## Results", ""]
    if rows:
        lines += ["| result | A | B | B - A |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {va:.4g} | {vb:.4g} | {d:+.4g} |" for k, va, vb, d in rows]
    if c.seeded:
        lines += ["", "## Settings trained over seeds (mIoU, mean of B minus mean of A, 95 % interval)", "",
                  "Paired by seed where both runs trained the same seeds (with whole-pipeline replicates, seed r "
                  "trains on replicate r's pseudo-masks in both); Welch's t on the two sets of seeds where they "
                  "did not.", "",
                  "| result | B - A | standard error | interval | test |", "|---|---|---|---|---|"]
        lines += [f"| `{k}` | {d['mean']:+.2f} | {d['se']:.2f} | [{d['low']:+.2f}, {d['high']:+.2f}] | "
                  f"{TESTS[d['test']]} |" for k, d in c.seeded]
    for run, keys in c.only_in.items():
        if keys:
            lines += ["", f"Only in `{run}`: " + ", ".join(f"`{k}`" for k in keys[:20])
                      + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")]
    return "\n".join(lines) + "\n"
