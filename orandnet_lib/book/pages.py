"""Book pages generated from the run, never typed by hand: the results summary (from a run's
summary.json) and the parameters of every notebook (from their parameters cells and the
profiles). ``orandnet pages`` writes them into ``book/generated/`` before the book is built.
Refinements are named by their registry labels (``methods.refine.REFINEMENTS``) and the
paper's numbers come from ``core.paper``, so neither is typed here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import profiles
from ..core import paper, store
from ..core.stats import describe_difference
from ..methods.refine import REFINEMENTS

PROFILES = ("smoke", "default", "paper")


def _cell(value: Any) -> str:
    """A parameter value as inline code, in Python literal syntax (what ``-p`` accepts)."""
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats shown with one decimal, other values as given (escaped by
    the caller where they may hold a '|')."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.1f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def parameters_page(notebook_dir: Path, profile_names: Sequence[str] = PROFILES) -> str:
    """One table per notebook: each parameter, its notebook default (the value a hand-opened
    notebook uses), each profile's override and the parameter's comment."""
    import papermill

    loaded = {name: profiles.load_profile(name) for name in profile_names}
    out = ["# Parameters of every notebook", "",
           "Generated from the notebooks' `parameters` cells and the profiles in `orandnet_lib/profiles/`. "
           "A blank profile cell means the notebook default applies. Override any value with "
           "`orandnet run --profile NAME -p STAGE.NAME=VALUE` (values are Python literals).", ""]
    for path in sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb")):
        stage = path.stem
        found = papermill.inspect_notebook(str(path))
        rows = []
        for name, info in found.items():
            if name in ("profile", "data_root", "run_dir"):
                continue
            over = [_cell(p["stages"].get(stage, {})[name]) if name in p["stages"].get(stage, {}) else ""
                    for p in loaded.values()]
            rows.append([f"`{name}`", f"`{info['default']}`".replace("|", "\\|"), *over,
                         (info.get("help") or "").replace("|", "\\|")])
        out += [f"## {stage}", "", table(["parameter", "notebook default", *loaded, "meaning"], rows), ""]
    return "\n".join(out)


def _scores_rows(entries: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    return [[name, float(e.get("miou", math.nan)), float(e.get("precision", math.nan)),
             float(e.get("recall", math.nan))] for name, e in entries.items() if isinstance(e, Mapping)]


def _num(value: Any, digits: int) -> str:
    """A recorded number with ``digits`` decimals ("-" for a missing or NaN one)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def differences_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Paired differences as recorded by stage 5 (``comparison``, ``measure``, ``n``, ``mean``,
    ``se``, ``t``, ``df``, ``p``, ``low``, ``high``): one Markdown row each."""
    body = [[str(r.get("comparison", "?")).replace("|", "\\|"), r.get("measure", r.get("metric", "?")), r.get("n", 0),
             _num(r.get("mean"), 2), _num(r.get("se"), 2), _num(r.get("t"), 2), _num(r.get("df"), 0),
             _num(r.get("p"), 3), f"{_num(r.get('low'), 2)} to {_num(r.get('high'), 2)}"] for r in rows]
    return table(["comparison", "measure", "seeds", "mean difference", "standard error", "t", "df", "p",
                  "95 % interval"], body)


def results_page(summary: Mapping[str, Any]) -> str:
    """The run's headline numbers, section by section, from its summary.json."""
    out = [f"# Results of the `{summary.get('profile', '?')}` run", "",
           f"Generated from `runs/{summary.get('profile', '?')}/summary.json` (seed {summary.get('seed', '?')}). "
           "All numbers are percentages on the embedded benchmark unless the profile says otherwise; "
           "each chapter explains how they were measured.", ""]
    if "stages" in summary:
        rows = [[s, float(v.get("wall_time_s", math.nan)), float(v.get("peak_rss_mb", math.nan))]
                for s, v in summary["stages"].items()]
        total = sum(r[1] for r in rows if not math.isnan(r[1]))
        out += ["## Stages", "", table(["stage", "wall time (s)", "peak memory (MiB)"], rows), "",
                f"Total wall time of the stages: {total / 60:.1f} min.", ""]
    if "classifiers" in summary:
        rows = [[n, float(c.get("val_map", math.nan))] for n, c in summary["classifiers"].items()]
        out += ["## Classifiers", "", table(["classifier", "validation mAP"], rows), ""]
    if "cams" in summary:
        rows = [[*row, float(summary["cams"][row[0]].get("threshold", math.nan))] for row in _scores_rows(summary["cams"])]
        out += ["## CAM variants (train split, best-mIoU background score)", "",
                table(["variant", "mIoU", "precision", "recall", "background score"], rows), ""]
    if "refinement" in summary:  # {variant: {refinement: scores at its best background score}}
        rows = [[f"{v} / {REFINEMENTS.label(k)}", *_scores_rows({k: sc})[0][1:], float(sc.get("threshold", math.nan))]
                for v, levels in summary["refinement"].items() for k, sc in levels.items()]
        out += ["## Refinements (train split, best-mIoU background score)", "",
                table(["variant / refinement", "mIoU", "precision", "recall", "background score"], rows), ""]
    if "pseudo_masks" in summary:
        entries = summary["pseudo_masks"]
        if all(isinstance(e, Mapping) and "miou" in e for e in entries.values()):  # the written sets
            rows = [[v, REFINEMENTS.label(str(e.get("refinement", "?"))), *_scores_rows({v: e})[0][1:],
                     float(e.get("threshold", math.nan))] for v, e in entries.items()]
            out += ["## Pseudo-masks written for segmentation (train split)", "",
                    table(["variant", "refinement", "mIoU", "precision", "recall", "background score"], rows), ""]
        else:  # a run of the earlier layout: {variant: {refinement: scores}}
            rows = [[f"{v} / {REFINEMENTS.label(k)}", *_scores_rows({k: sc})[0][1:]] for v, levels in entries.items()
                    for k, sc in levels.items()]
            out += ["## Pseudo-masks (train split)", "", table(["variant / refinement", "mIoU", "precision", "recall"], rows), ""]
    if "segmentation" in summary:
        rows = []
        for tset, by in summary["segmentation"].items():
            for sched, e in by.items():
                std = e.get("miou_std")
                rows.append([tset, sched, len(e.get("seeds", [])), float(e["miou"]),
                             float(std) if std is not None else math.nan, float(e["precision"]), float(e["recall"])])
        out += ["## Segmentation (validation split)", "",
                table(["training set", "schedule", "seeds", "mIoU", "mIoU sd", "precision", "recall"], rows), ""]
        head = summary.get("segmentation_headline") or {}
        if head.get("difference"):
            out += [f"Headline ({head['schedule']}): {head['other']} against {head['baseline']}, "
                    f"{describe_difference(head['difference'])}.", ""]
        if summary.get("segmentation_seeds"):
            out += [str(summary["segmentation_seeds"]), ""]
        if summary.get("segmentation_paired"):
            out += ["### Paired differences of the headline sets (validation mIoU, paired by seed)", "",
                    differences_table(summary["segmentation_paired"]), "",
                    "p-values per comparison, not adjusted for the number of comparisons.", ""]
        if summary.get("segmentation_schedules"):
            out += ["### Schedule against constant scale (paired by seed)", "",
                    differences_table(summary["segmentation_schedules"]), ""]
    if "precision_vs_miou" in summary:
        p = summary["precision_vs_miou"]
        fits = p.get("fits", {})
        rows = [[name, term, _num(f["coef"][term], 3), _num(f["se"][term], 3),
                 f"{_num(f.get('low', {}).get(term), 3)} to {_num(f.get('high', {}).get(term), 3)}",
                 _num(f.get("p", {}).get(term), 3), f.get("n", "?")]
                for name, f in fits.items() if "coef" in f for term in f["coef"]]
        out += ["## Precision against final mIoU", "",
                f"Fitted on {p.get('fit_unit', 'the stage-5 models')} ({p.get('fit_schedule', '?')} schedule).", "",
                table(["model", "term", "coefficient", "standard error", "95 % interval", "p", "sets"], rows), ""]
        out += [f"*{name}*: not fitted ({f['error']})." for name, f in fits.items() if "error" in f]
        out += [""] if any("error" in f for f in fits.values()) else []
        if "gain" in p:
            g = p["gain"]
            ours = describe_difference(g["paired"]) if g.get("paired") else f"{g['ours']:+.1f}"
            out += [f"ORANDNet's gain over the baseline in segmentation mIoU: {paper.gain_with_context()}; "
                    f"this run, {'over whole-pipeline replicates' if int(summary.get('segmentation_replicates', 1)) > 1 else 'for these pseudo-masks'}: {ours}.", ""]
    rows = [[name, r.cam_train, r.pseudo_mask_train, r.segmentation_val, r.segmentation_test]
            for name, r in paper.REPORTED.items()]
    out += [f"## The paper's numbers ({paper.DATASET}, mIoU)", "",
            table(["method", "CAM (train)", "pseudo-mask (train)", "segmentation (val)", "segmentation (test)"], rows), "",
            f"As reported in {paper.CITATION}, <{paper.URL}>.", ""]
    return "\n".join(out)


def compare_page(root: Path, book_run: Path, other: Path) -> str:
    """What differs between the book's run and another run folder, as a page (paths shown
    relative to the project)."""
    from .compare import compare_runs, format_comparison

    c = compare_runs(book_run, other)
    c.a, c.b = Path(profiles.display_path(book_run.resolve(), root)), Path(profiles.display_path(other.resolve(), root))
    c.only_in = {profiles.display_path(Path(k).resolve(), root): v for k, v in c.only_in.items()}
    return "# Compare runs\n\nA is this book's run, B the other.\n" + format_comparison(c).split("\n", 1)[1]


def write_pages(root: Path, profile: str, out_dir: Path | None = None,
                summary: Mapping[str, Any] | None = None, compare: str | Path | None = None) -> list[Path]:
    """Write the generated pages into ``book/generated/``: ``parameters.md``, ``results.md``,
    ``reproduces.md`` (each claim of the paper against this run) and ``headline.md`` (what the
    run found, included at the top of the introduction). ``summary``: the run's summary.json
    (default: ``runs/<profile>/summary.json``); without one the pages say how to produce it."""
    from .claims import headline, reproduces_page

    out_dir = out_dir or root / "book" / "generated"
    summary_path = root / "runs" / profile / "summary.json"
    if summary is None and summary_path.exists():
        summary = store.read_json(summary_path)
    if summary is not None:
        results, reproduces, head = results_page(summary), reproduces_page(summary), headline(summary)
    else:
        missing = (f"No run of the `{profile}` profile yet: `make book PROFILE={profile}` or "
                   f"`orandnet run --profile {profile}` produces `{summary_path.relative_to(root)}`.\n")
        results, reproduces, head = f"# Results\n\n{missing}", f"# What reproduces\n\n{missing}", f"*{missing.strip()}*\n"
    from datetime import datetime, timezone

    from .runner import _commit

    stamp = (f"\n---\n*Generated by `orandnet pages` from `runs/{profile}/summary.json`, commit "
             f"`{_commit(root)}`, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.*\n")
    comparison = compare_page(root, root / "runs" / profile, Path(compare)) if compare else (
        "# Compare runs\n\nThis book shows one run. To see what another run changed (its parameters, then every "
        "result with its difference, and intervals where seeds exist):\n\n```bash\n"
        f".venv/bin/orandnet compare runs/{profile} runs/<other>        # in the terminal\n"
        f"make book PROFILE={profile} COMPARE=runs/<other>            # as this page of the book\n```\n")
    config = book_config(root, repository_url(root))
    if config is not None:  # `make book` builds with it: repository and issues buttons for readers online
        store.write_text(root / ONLINE_CONFIG, config)
    written = []
    for name, text in (("parameters.md", parameters_page(root / "notebooks") + stamp), ("results.md", results + stamp),
                       ("reproduces.md", reproduces + stamp), ("headline.md", head), ("compare.md", comparison + stamp)):
        store.write_text(out_dir / name, text)
        written.append(out_dir / name)
    return written


ONLINE_CONFIG = "_config.online.yml"  # beside _config.yml (its relative paths resolve there); not committed


def repository_url(root: Path) -> str | None:
    """The public https URL of the checkout's ``origin`` remote (GitHub), or None."""
    import subprocess

    try:
        url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    if url.startswith("git@github.com:"):
        url = "https://github.com/" + url.split(":", 1)[1]
    url = url.removesuffix(".git")
    return url if url.startswith("https://") else None


EXECUTED_BRANCH = "book-executed"  # the publishing workflow pushes the executed chapters there

LAUNCH_BUTTONS = f"""
# Launch buttons open a chapter's executed notebook, which the publishing workflow
# (.github/workflows/book.yml) pushes to the branch {EXECUTED_BRANCH}; main holds no outputs.
launch_buttons:
  notebook_interface: jupyterlab
  binderhub_url: https://mybinder.org
  colab_url: https://colab.research.google.com
"""


def book_config(root: Path, url: str | None) -> str | None:
    """``_config.yml`` for readers online: the repository and issues buttons for ``url`` and
    Binder/Colab launch buttons on the branch that holds the executed chapters (None: no
    public repository, so no buttons and no separate config)."""
    if not url:
        return None
    text = (root / "_config.yml").read_text()
    text = text.replace("repository:\n", f"repository:\n  url: {url}\n", 1)
    text = text.replace("  branch: main\n", f"  branch: {EXECUTED_BRANCH}\n", 1)
    text = text.replace("use_repository_button: false", "use_repository_button: true")
    return text.replace("use_issues_button: false", "use_issues_button: true") + LAUNCH_BUTTONS
