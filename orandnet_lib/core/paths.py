"""Where the project is: its root folder, and paths as the book shows them (relative to it)."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``_toc.yml`` and ``notebooks/``: $ORANDNET_ROOT if set (the CLI's
    ``--project``), else found by walking up from ``start`` (default: the working directory),
    else the checkout this package was installed from (so ``orandnet`` works from any folder),
    else the start itself."""
    if os.environ.get("ORANDNET_ROOT"):
        return Path(os.environ["ORANDNET_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    installed_from = Path(__file__).resolve().parents[2]
    for folder in (*(here, *here.parents), installed_from):
        if (folder / "_toc.yml").exists() and (folder / "notebooks").is_dir():
            return folder
    return here


def notebook_dir(root: Path) -> Path:
    """The stage notebooks: the project's ``notebooks/``, else the copy an installed wheel keeps
    under ``<prefix>/share/orandnet/notebooks`` (so an installed ``orandnet`` runs from any folder,
    writing its data and runs there)."""
    own = Path(root) / "notebooks"
    installed = Path(sysconfig.get_path("data")) / "share" / "orandnet" / "notebooks"
    return installed if not own.is_dir() and installed.is_dir() else own


def display_path(path: str | os.PathLike[str], root: Path | None = None) -> str:
    """A path as the book shows it: relative to the project when inside it, else its last part
    only (a published page never holds an absolute path of the machine that built it)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.resolve().relative_to((root or project_root()).resolve()))
    except ValueError:
        return f"…/{path.name} (outside the project)"
