"""The ``orandnet`` command: run the stage notebooks, generate the embedded data, list stages."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .book import profiles
from .data import synth
from .core.errors import OrandnetError, RunInterrupted, StageFailed


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="smoke",
                   help=f"{' | '.join(profiles.PROFILE_NAMES)}, or a .toml profile file (default: smoke)")
    p.add_argument("-p", "--param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override: seed=1, generator.n_train=500, 00_dataset.n_examples=4, 03_orandnet.bf16=false (values as Python or TOML literals; repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orandnet", description=__doc__)
    parser.add_argument("--project", metavar="DIR",
                        help="the project folder (with notebooks/ and _toc.yml); default: found from the working "
                             "directory, else the checkout orandnet_lib was installed from")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the stage notebooks in order (skipping unchanged stages)")
    _add_common(run)
    run.add_argument("--data-root", help="a VOC-layout folder to use instead of the profile's data")
    run.add_argument("--run-dir", help="where stage folders go (default: runs/<profile>/)")
    run.add_argument("--book-dir", help="where executed notebooks are published (default: book/executed/)")
    run.add_argument("--publish", action="store_true", default=None,
                     help="publish this run's chapters into the book even though --run-dir is not the profile's "
                          "own run folder (by default only runs/<profile>/ or an explicit --book-dir publish)")
    run.add_argument("--only", metavar="STAGE", help="run only this stage, e.g. 00_dataset")
    run.add_argument("--from", dest="start_from", metavar="STAGE", help="run this stage and every later one")
    run.add_argument("--force", action="store_true", help="run selected stages even if unchanged")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--in-process", action="store_true",
                     help="run each stage's recipe (orandnet_lib/stages) in this process instead of executing its "
                          "notebook: the same numbers in the run folder, no chapters (nothing is published); "
                          "saves a kernel start and the imports per stage")

    gen = sub.add_parser("generate", help="generate (or reuse) the embedded benchmark of a profile")
    _add_common(gen)
    gen.add_argument("--out", help="target folder (default: the profile's data.root)")

    stages = sub.add_parser("stages", help="list the stages and their parameters")
    _add_common(stages)

    compare = sub.add_parser("compare", help="what differs between two run folders: parameters, then results")
    compare.add_argument("run_a", help="a run folder (e.g. runs/default)")
    compare.add_argument("run_b", help="another run folder")
    compare.add_argument("--all", action="store_true", help="list every result, also those that did not change")
    compare.add_argument("--out", help="also write the comparison as a Markdown page here (e.g. book/generated/compare.md)")

    status = sub.add_parser("status", help="which stages of a run folder are complete, which are stale, and "
                                           "how long each took")
    status.add_argument("run_dir", nargs="?", help="the run folder (default: runs/<profile>/)")
    _add_common(status)
    status.add_argument("--data-root", help="the VOC-layout folder the run read instead of the profile's data")

    pages = sub.add_parser("pages", help="write the book's generated pages (results, parameters)")
    pages.add_argument("--profile", default="smoke", help="the run whose summary.json feeds the results page")
    pages.add_argument("--compare", metavar="RUN", help="also render what differs between the book's run and this "
                                                         "run folder (book/generated/compare.md)")
    return parser


def _recipes(stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """The stages' recipes, imported when a stage first runs in process (they import torch and timm)."""
    from .recipes import run_recipe

    return run_recipe(stage, params)


def _checks(stage: str, params: dict[str, Any]) -> None:
    """The stages' checks of their parameters, imported likewise."""
    from .recipes import check_recipe

    check_recipe(stage, params)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.project:
        project = Path(args.project).resolve()
        if not (project / "notebooks").is_dir():
            print(f"orandnet: error: --project {project} has no notebooks/ folder", file=sys.stderr)
            return 2
        os.environ["ORANDNET_ROOT"] = str(project)
    try:
        if args.command == "run":
            from .book.runner import Runner

            runner = Runner(args.profile, data_root=args.data_root, run_dir=args.run_dir,
                            overrides=args.overrides, book_dir=args.book_dir, progress=not args.quiet,
                            publish=args.publish, recipes=_recipes, in_process=args.in_process,
                            checks=_checks)
            result = runner.run(only=args.only, start_from=args.start_from, force=args.force)
            print(f"ran {len(result.executed)} stage(s), skipped {len(result.skipped)}; "
                  f"summary: {result.run_dir / 'summary.json'}")
        elif args.command == "generate":
            prof = profiles.apply_overrides(profiles.load_profile(args.profile), args.overrides)
            if prof["data"].get("source", "embedded") != "embedded":
                raise profiles.ConfigError(f"profile {prof['name']!r} reads existing data; nothing to generate")
            out = Path(args.out) if args.out else profiles.data_root(prof)
            synth.generate(out, profiles.embedded_config(prof))
        elif args.command == "compare":
            from .book.compare import compare_runs, format_comparison
            from .core import store

            text = format_comparison(compare_runs(args.run_a, args.run_b), changed_only=not args.all)
            print(text)
            if args.out:
                store.write_text(args.out, text)
        elif args.command == "pages":
            from .book.pages import write_pages
            from .book.runner import check_one_run

            check_one_run(profiles.project_root() / "book" / "executed")

            for path in write_pages(profiles.project_root(), profiles.load_profile(args.profile)["name"],
                                    compare=args.compare):
                print(f"wrote {path}")
        elif args.command == "status":
            from .book.runner import Runner, format_status

            runner = Runner(args.profile, overrides=args.overrides, data_root=args.data_root, run_dir=args.run_dir)
            print(format_status(runner))
        elif args.command == "stages":
            from .book.runner import Runner, depends_on, notebook_parameters

            runner = Runner(args.profile, overrides=args.overrides)
            data_root = profiles.data_root(runner.profile)
            print(f"profile {runner.profile['name']}: data {profiles.display_path(data_root)}, "
                  f"run folder {profiles.display_path(runner.run_dir)}")
            for stage in runner.stages:
                params = notebook_parameters(runner.notebook_dir / f"{stage}.ipynb")
                params.update(runner.params_for(stage, data_root))  # what a run of this profile passes
                params["data_root"], params["run_dir"] = (profiles.display_path(params["data_root"]),
                                                          profiles.display_path(params["run_dir"]))
                deps = ", ".join(depends_on(stage, runner.stages)) or "data"
                print(f"{stage}  (reads: {deps})")
                for name, value in params.items():
                    print(f"    {name} = {value!r}")
        sys.stdout.flush()  # a pipe buffers the output: write it here, where a closed reader is caught
    except RunInterrupted as e:
        print(f"orandnet: {e}", file=sys.stderr)
        return 130
    except OrandnetError as e:
        print(f"orandnet: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, StageFailed) else 2
    except BrokenPipeError:  # the output piped into head or a pager that closed it: not an error
        # what is still buffered would fail again when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:  # RunInterrupted says where; a bare one came before any stage ran
        print(f"orandnet: {e}" if str(e) else "orandnet: interrupted before any stage ran", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
