"""'What reproduces': each claim of the paper beside this run's effect, its interval where the
run has seeds, the verdict and the chapter that shows it; and the two-line headline the
book's introduction opens with. Everything is read from the run's summary.json."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import operating_point
from ..core import paper
from ..core.metrics import equal_recall, precision_at_recall
from ..core.stats import format_p, paired_difference

CHAPTERS = {
    "02": "../executed/02_or_and_ensembles", "03": "../executed/03_orandnet",
    "05": "../executed/05_segmentation_curriculum", "06": "../executed/06_precision_vs_miou",
}


@dataclass(frozen=True)
class Claim:
    claim: str  # the paper's claim, in a few words
    effect: str  # this run's measured effect
    interval: str  # its 95 % interval, or why there is none
    verdict: str  # reproduces / does not reproduce / not resolved / not measured
    chapter: str  # key of CHAPTERS


def _variant(cams: Mapping[str, Any], base: str) -> str | None:
    """The offset variant when stage 2 wrote it (the one ORANDNet trains from), else the plain one."""
    return next((name for name in (f"{base}+offset", base) if name in cams), None)


def _interval_verdict(d: Mapping[str, float], positive_is_claim: bool = True) -> tuple[str, str]:
    n = int(d.get("n", 0))
    if n < 2 or d.get("low") is None or math.isnan(float(d.get("low", math.nan))):
        return f"none ({n} seed: no spread)", "not resolved"
    low, high = float(d["low"]), float(d["high"])
    p = d.get("p")
    shown_p = "p undefined: no spread" if p is None or math.isnan(float(p)) else format_p(float(p))
    interval = f"[{low:+.1f}, {high:+.1f}] (n = {n} seeds, {shown_p})"
    if (low > 0) if positive_is_claim else (high < 0):
        return interval, "reproduces"
    if (high < 0) if positive_is_claim else (low > 0):
        return interval, "the opposite"
    return interval, "not resolved: the interval includes 0"


def _has_curves(cams: Mapping[str, Any], names: list[str]) -> bool:
    """Whether the summary holds each variant's precision-recall curve (older runs do not)."""
    return all("curve" in cams[n] for n in names)


def _pct(x: float) -> str:
    return "not reached" if math.isnan(x) else f"{x:.1f} %"


def _diff(x: float) -> str:
    return "the curve does not reach it" if math.isnan(x) else f"{x:+.1f} points"


def _empties(entry: Mapping[str, Any]) -> str:
    """What a variant's precision leaves out: its empty class maps and the classes it never predicts."""
    empty = entry.get("empty_maps", math.nan)
    shown = "-" if empty is None or math.isnan(float(empty)) else f"{float(empty):.1f} %"
    return f"({shown} of its class maps empty, {int(entry.get('unpredicted', 0))} classes never predicted at its best score)"


def recall_at_equal_precision(variant: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """The variant's recall at the precision the baseline has at its own best-mIoU score."""
    at = precision_at_recall(variant["curve"]["precision"], variant["curve"]["recall"], float(baseline["precision"]))
    return {"precision": float(baseline["precision"]), "baseline_recall": float(baseline["recall"]), "recall": at,
            "difference": at - float(baseline["recall"])}


def replicate_cams(summary: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """Each whole-pipeline replicate's ``cams`` (0: this run's; the others from
    ``summary["replicates"]``)."""
    return {r: sub.get("cams", {}) for r, sub in operating_point.replicate_summaries(summary).items()}


def _over_replicates(summary: Mapping[str, Any], names: list[str],
                     measure: Any) -> tuple[dict[str, float] | None, int]:
    """``measure(cams) -> (baseline, variant)`` on every replicate that has the curves of
    ``names``: their paired difference (variant - baseline) over replicates, None with fewer
    than two; and how many replicates had them."""
    pairs = {r: measure(c) for r, c in replicate_cams(summary).items() if _has_curves(c, names)}
    pairs = {r: v for r, v in pairs.items() if not any(math.isnan(x) for x in v)}
    if len(pairs) < 2:
        return None, len(pairs)
    return paired_difference({r: v[0] for r, v in pairs.items()}, {r: v[1] for r, v in pairs.items()}), len(pairs)


def _replicated(summary: Mapping[str, Any], names: list[str], measures: Mapping[str, Any], one_draw: str,
                holds: bool) -> tuple[str, str, dict[str, tuple[str, str]]]:
    """The interval and verdict of a stage 2-3 claim: over whole-pipeline replicates when the
    run has them (the claim reproduces when every comparison in ``measures`` excludes zero on
    its side, goes the other way when one does so on the other side), else the single run's
    verdict. Also returns each comparison's (interval, verdict)."""
    n = len(replicate_cams(summary))
    if n < 2:
        return one_draw, single_run(holds), {}
    shown: dict[str, tuple[str, str]] = {}
    for label, m in measures.items():
        d, measured = _over_replicates(summary, names, m)
        shown[label] = (f"measurable on {measured} of {n} replicates (a curve does not reach the baseline's value)",
                        "not resolved") if d is None else _interval_verdict(d)
    interval = "; ".join(f"{label}: {iv.replace('seeds', 'replicates')}" for label, (iv, _) in shown.items())
    verdicts = [v for _, v in shown.values()]
    if all(v == "reproduces" for v in verdicts):
        return interval, "reproduces", shown
    if any(v == "the opposite" for v in verdicts):
        return interval, "the opposite", shown
    return interval, "not resolved", shown


def single_run(holds: bool) -> str:
    return "holds in this run" if holds else "does not hold in this run"


def claims(summary: Mapping[str, Any]) -> list[Claim]:
    """The paper's claims, each with what this run measured (rows for stages that did not run
    say so)."""
    out: list[Claim] = []
    cams = summary.get("cams", {})
    singles = [s for s in ("cnn", "vit") if s in cams]
    one_draw = "none (one run of stages 1-4)"
    and_name, or_name = _variant(cams, "and"), _variant(cams, "or")
    if and_name and len(singles) == 2 and _has_curves(cams, [and_name, *singles]):
        at = {s: equal_recall(cams[and_name], cams[s]) for s in singles}
        holds = all(a["difference"] > 0 for a in at.values())
        measures = {f"against {s}": (lambda c, s=s: (equal_recall(c[and_name], c[s])["baseline_precision"],
                                                     equal_recall(c[and_name], c[s])["precision"])) for s in singles}
        interval, verdict, _ = _replicated(summary, [and_name, *singles], measures, one_draw, holds)
        out.append(Claim("AND is more precise than either single CAM (at equal recall)",
                         "; ".join(f"at {s}'s recall {a['recall']:.1f} %: {and_name} {_pct(a['precision'])} vs "
                                   f"{a['baseline_precision']:.1f} % ({_diff(a['difference'])})" for s, a in at.items())
                         + f" {_empties(cams[and_name])}", interval, verdict, "02"))
    if or_name and len(singles) == 2 and _has_curves(cams, [or_name, *singles]):
        at = {s: recall_at_equal_precision(cams[or_name], cams[s]) for s in singles}
        holds = all(a["difference"] > 0 for a in at.values())
        measures = {f"against {s}": (lambda c, s=s: (recall_at_equal_precision(c[or_name], c[s])["baseline_recall"],
                                                     recall_at_equal_precision(c[or_name], c[s])["recall"]))
                    for s in singles}
        interval, verdict, _ = _replicated(summary, [or_name, *singles], measures, one_draw, holds)
        out.append(Claim("OR has a higher recall than either single CAM (at equal precision)",
                         "; ".join(f"at {s}'s precision {a['precision']:.1f} %: {or_name} recall {_pct(a['recall'])} vs "
                                   f"{a['baseline_recall']:.1f} % ({_diff(a['difference'])})" for s, a in at.items()),
                         interval, verdict, "02"))
    if "orandnet" in cams and len(singles) == 2 and _has_curves(cams, ["orandnet", *singles]):
        top = max(singles, key=lambda s: cams[s]["miou"])
        a = equal_recall(cams["orandnet"], cams[top])
        dm = cams["orandnet"]["miou"] - cams[top]["miou"]
        measures = {"precision at equal recall": lambda c: (equal_recall(c["orandnet"], c[top])["baseline_precision"],
                                                            equal_recall(c["orandnet"], c[top])["precision"])}
        mious = {"best mIoU": lambda c: (c[top]["miou"], c["orandnet"]["miou"])}
        interval, verdict, _ = _replicated(summary, ["orandnet", *singles], measures, one_draw,
                                           a["difference"] > 0 and dm >= 0)
        m_interval, _, m_shown = _replicated(summary, ["orandnet", *singles], mious, "", True)
        if m_shown:  # "at no loss of mIoU": a loss is an mIoU interval wholly below zero
            interval = f"{interval}; {m_interval}"
            if m_shown["best mIoU"][1] == "the opposite" and verdict == "reproduces":
                verdict = "not resolved: more precise, at a loss of mIoU"
        out.append(Claim("ORANDNet is more precise than the best single CAM (at equal recall) at no loss of mIoU",
                         f"at {top}'s recall {a['recall']:.1f} %: precision {_pct(a['precision'])} vs "
                         f"{a['baseline_precision']:.1f} % ({_diff(a['difference'])}); best mIoU {dm:+.1f} points "
                         f"{_empties(cams['orandnet'])}", interval, verdict, "03"))
    unscored = "none (no precision-recall curve: the train split has no masks, or the run predates them)"
    for name, claim, chapter in ((and_name, "AND is more precise than either single CAM (at equal recall)", "02"),
                                 (or_name, "OR has a higher recall than either single CAM (at equal precision)", "02"),
                                 ("orandnet", "ORANDNet is more precise than the best single CAM (at equal recall) at "
                                              "no loss of mIoU", "03")):
        measured = bool(name) and name in cams and _has_curves(cams, [name, *singles])
        if len(singles) == 2 and not measured:
            out.append(Claim(claim, "not measured", unscored, "not measured", chapter))
    headline = summary.get("segmentation_headline")
    replicates = int(summary.get("segmentation_replicates", 1))
    if headline and "difference" in headline:
        d = headline["difference"]
        interval, verdict = _interval_verdict(d)
        out.append(Claim(f"Segmentation trained on ORANDNet's pseudo-masks beats the single-CNN baseline "
                         f"(paper: {paper.GAIN:+.1f} on {paper.DATASET})",
                         f"{headline['other']} - {headline['baseline']}: {float(d['mean']):+.1f} mIoU points "
                         f"({headline.get('schedule', '')} schedule), "
                         + (f"over {replicates} whole-pipeline replicates" if replicates > 1 else "for these pseudo-masks"),
                         interval.replace("seeds", "replicates") if replicates > 1 else interval, verdict, "05"))
    for row in summary.get("segmentation_schedules", []):
        interval, verdict = _interval_verdict(row)
        out.append(Claim(f"The scale-scheduling curriculum helps ({row['measure']}, {row['training set']})",
                         f"{row['comparison']}: {float(row['mean']):+.1f} points", interval, verdict, "05"))
    fit = summary.get("precision_vs_miou", {}).get("fits", {}).get("precision", {})
    if "coef" in fit and "precision" in fit["coef"]:
        d = {"n": fit["n"], "low": fit.get("low", {}).get("precision"), "high": fit.get("high", {}).get("precision"),
             "p": fit.get("p", {}).get("precision", math.nan)}
        interval, verdict = _interval_verdict(d)
        interval = interval.replace("seeds", "pseudo-mask sets")
        out.append(Claim("More precise pseudo-masks give a better segmentation model",
                         f"{fit['coef']['precision']:+.2f} final mIoU points per point of pseudo-mask precision",
                         interval, verdict, "06"))
    elif "precision_vs_miou" in summary:
        reason = summary["precision_vs_miou"].get("fits", {}).get("precision", {}).get("error", "too few sets")
        out.append(Claim("More precise pseudo-masks give a better segmentation model", "not fitted", reason,
                         "not measured", "06"))
    return out


def _what_varied(summary: Mapping[str, Any]) -> str:
    """What the intervals are over, in words."""
    n = int(summary.get("segmentation_replicates", summary.get("replicates", {}).get("n", 1)))
    if n > 1:
        return (f"Every interval is over {n} whole-pipeline replicates (stages 1 to 4 run with seeds 0 to {n - 1}: the "
                "classifiers, the ensembles, ORANDNet, the relation networks and so the pseudo-masks; and DeepLab "
                "seeded by its replicate), paired by replicate; the effect shown is replicate 0's. The curriculum "
                "rows on the ground truth vary DeepLab only.")
    return ("Single-run effects have no interval: stages 1 to 4 ran once. Segmentation effects are paired by seed; "
            "their seeds vary DeepLab only, so they hold for these pseudo-masks.")


def reproduces_page(summary: Mapping[str, Any]) -> str:
    rows = claims(summary)
    lines = ["# What reproduces", "",
             f"Each claim of the paper ({paper.CITATION}) beside what this run (profile `{summary.get('profile')}`) "
             "measured. " + _what_varied(summary) + " Verdicts follow the "
             "95 % interval: *reproduces* when it excludes zero on the paper's side.", "",
             "| claim | this run | 95 % interval | verdict | chapter |", "|---|---|---|---|---|"]
    lines += [f"| {c.claim} | {c.effect} | {c.interval} | **{c.verdict}** | {{doc}}`{CHAPTERS[c.chapter]}` |"
              for c in rows]
    if not rows:
        lines.append("| (no stage has run yet) | | | | |")
    gain = summary.get("precision_vs_miou", {}).get("gain", {})
    if gain.get("paper_context"):
        lines += ["", f"The paper's {paper.GAIN:+.1f}: {gain['paper_context']}."]
    chapters = {stem: f"../executed/{stem}" for stem in
                ("01_classifiers_and_cams", "04_refinement", "05_segmentation_curriculum")}
    lines += ["", operating_point.section(summary, chapters)]
    spread = operating_point.replicate_section(summary)
    if spread:
        lines += ["", spread]
    return "\n".join(lines).rstrip("\n") + "\n"


def headline(summary: Mapping[str, Any]) -> str:
    """What this run found, in a few lines for the introduction."""
    rows = claims(summary)
    if not rows:
        return ("*No run has been executed for this book yet: `make book` runs every chapter and writes this "
                "summary.*\n")
    kinds = {"reproduce with an interval": "reproduces", "hold in this single run": "holds in",
             "do not hold in this single run": "does not hold", "go the other way": "the opposite",
             "are not resolved by this run's seeds": "not resolved", "were not measured": "not measured"}
    counts = {label: sum(c.verdict.startswith(prefix) for c in rows) for label, prefix in kinds.items()}
    main = next((c for c in rows if c.chapter == "05" and "beats" in c.claim), None)
    lines = [f"**What this run found** (profile `{summary.get('profile')}`; details in {{doc}}`generated/reproduces`):",
             ""]
    if main is not None:
        lines.append(f"- Segmentation: {main.effect}; 95 % interval {main.interval}: **{main.verdict}**.")
    lines += [f"- {c.claim}: {c.effect} (**{c.verdict}**)." for c in rows if c.chapter in ("02", "03")]
    lines.append(f"- Of {len(rows)} claims: " + ", ".join(f"{n} {label}" for label, n in counts.items() if n) + ".")
    return "\n".join(lines) + "\n"
