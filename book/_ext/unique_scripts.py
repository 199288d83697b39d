"""Sphinx extension: tidy each page's <script> list.

With sphinxcontrib-bibtex the documents are read twice in one build, and extensions that add
scripts on "env-before-read-docs" (sphinx-thebe) or per document (myst-nb's widget manager)
add them twice, and myst-nb's widget scripts leak onto pages without widgets in the wrong
order (the manager before require.js). Repeats redeclare constants and break the manager:
errors in the browser console. This keeps one copy of each script, keeps the widget manager
only on pages with widget state, and loads require.js before it.
"""

from __future__ import annotations

from typing import Any

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _filename(script: Any) -> str:
    return getattr(script, "filename", None) or ""


def _tidy(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    has_widgets = any(getattr(s, "attributes", {}).get("type") == WIDGET_STATE for s in scripts)
    seen, unique = set(), []
    for script in scripts:
        name = _filename(script)
        key = (name, getattr(script, "attributes", {}).get("body", ""))
        if key in seen or ("/widgets/" in name and not has_widgets):
            continue
        seen.add(key)
        unique.append(script)
    require = [s for s in unique if _filename(s).endswith("widgets/require.js")]
    if require:
        unique = [s for s in unique if s not in require]
        first = next((i for i, s in enumerate(unique) if _filename(s).endswith("widgets/embed-amd.js")), len(unique))
        unique[first:first] = require
    scripts[:] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _tidy, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
