"""The chapters' prose: Markdown templates that writers edit, filled with what a stage computed.

Each chapter keeps its texts under ``book/prose/<stage>/<name>.md`` (Jinja2: ``{{ value|f(".1f") }}``
for a number, ``{% if verdict == "raises" %}`` for a branch). Python computes values and verdict
words (a ``facts`` dict); the template holds every sentence, so rewording one is not a code change.
A name that a template uses and the facts lack is an error naming both, never a blank.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

PROSE_DIR = "prose"


def _fmt(value: Any, spec: str = "") -> str:
    """``format(value, spec)``; the filter ``f`` in the templates (``{{ share|f(".1%") }}``)."""
    return format(value, spec)


def _and_list(items: Any) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    words = [str(i) for i in items]
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


def _environment(root: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                             autoescape=False)
    env.filters["f"] = _fmt
    env.filters["and_list"] = _and_list
    return env


@lru_cache(maxsize=None)
def _package_env() -> jinja2.Environment:
    return _environment(Path(str(resources.files("orandnet_lib.book").joinpath(PROSE_DIR))))


def template_names(root: Path | None = None) -> list[str]:
    """Every template, as ``"<stage>/<name>"``."""
    base = root or Path(str(resources.files("orandnet_lib.book").joinpath(PROSE_DIR)))
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.glob("*/*.md"))


def render(name: str, facts: Mapping[str, Any], root: Path | None = None) -> str:
    """Markdown of template ``<stage>/<name>`` filled with ``facts``; blank runs of lines collapsed
    to one so that a skipped branch leaves no gap in a bullet list."""
    env = _environment(root) if root is not None else _package_env()
    try:
        text = env.get_template(f"{name}.md").render(**facts)
    except jinja2.TemplateNotFound:
        raise FileNotFoundError(f"no prose template {name}.md under {root or 'orandnet_lib/book/' + PROSE_DIR}") from None
    except jinja2.UndefinedError as err:
        raise KeyError(f"prose template {name}.md uses a value its facts lack: {err.message}") from None
    lines = text.strip().splitlines()
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(out)
