"""The package's layers hold: core < data < nets < methods < book < stages (orandnet_lib/__init__.py).

Every import is read from the source (those inside functions too, which hide cycles from
import time), and none may reach a higher layer or another stage module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "orandnet_lib"
LAYERS = ("core", "data", "nets", "methods", "book", "stages")
TOP = ("cli", "bench", "recipes")  # entry points above every layer


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of the package in ``path``, at any depth."""
    module = _module(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith(root.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(root.name):
                continue
            # "from . import x" and "from ..data import voc" name modules: resolve each name
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                is_module = (root.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (root.parent / Path(*candidate.split("."))).is_dir()
                out.append((node.lineno, candidate if is_module else target))
    return out


def _layer(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    name = parts[1]
    if name in LAYERS:
        return LAYERS.index(name), name
    if name in TOP:
        return len(LAYERS), name
    return None


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import that goes up the layer order or from one stage module to another."""
    found = []
    for path in sorted(root.rglob("*.py")):
        here = _module(path, root)
        src = _layer(here)
        if src is None:
            continue
        for line, target in imports(path, root):
            dst = _layer(target)
            if dst is None:
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if dst[0] > src[0]:
                found.append(f"{where} ({src[1]} < {dst[1]})")
            elif src[1] == dst[1] == "stages" and target != here and target.count(".") >= 2:
                found.append(f"{where} (one stage imports another)")
    return found


# The imports that still break the order, each with what removes it. Empty since issue 26 moved
# the recipes stages share into methods/; a new upward import fails the test.
KNOWN: set[str] = set()


def _unplaced(found: list[str]) -> set[str]:
    return {v.split(":", 1)[0] + v.split(":", 1)[1].split(" ", 1)[1] for v in found}


def test_no_import_goes_up_a_layer_or_across_stages():
    found = violations()
    # compared without line numbers, so an edit above an import does not fail the test
    new = _unplaced(found) - _unplaced(sorted(KNOWN))
    gone = _unplaced(sorted(KNOWN)) - _unplaced(found)
    assert not new, f"imports against the layers: {sorted(v for v in found if _unplaced([v]) <= new)}"
    assert not gone, f"fixed, so remove from KNOWN: {sorted(gone)}"


def test_the_walk_sees_an_upward_import_inside_a_function(tmp_path):
    root = tmp_path / "orandnet_lib"
    for folder in ("core", "book", "stages"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "book" / "plots.py").write_text("def f():\n    return 1\n")
    (root / "core" / "store.py").write_text("import os\n\n\ndef g():\n    from ..book.plots import f\n    return f()\n")
    (root / "stages" / "s1.py").write_text("from ..core import store\n")
    (root / "stages" / "s2.py").write_text("from . import s1\n")
    assert violations(root) == ["orandnet_lib/core/store.py:5 imports orandnet_lib.book.plots (core < book)",
                                "orandnet_lib/stages/s2.py:1 imports orandnet_lib.stages.s1 (one stage imports another)"]


def test_the_package_declares_what_it_imports_and_reads():
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    declared = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["project"]["dependencies"]}
    distribution = {"PIL": "pillow", "skimage": "scikit-image", "pydensecrf": "pydensecrf2", "yaml": "pyyaml",
                    "jupyter_client": "jupyter-client"}
    stdlib = set(__import__("sys").stdlib_module_names)
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            imported |= {n.split(".")[0] for n in names}
    third_party = {distribution.get(m, m).lower() for m in imported - stdlib - {"orandnet_lib"}}
    # declared but not imported by name: timm's own need, and what papermill runs the notebooks with
    run_time_only = {"torchvision", "ipykernel", "nbclient"}
    assert third_party == declared - run_time_only, (sorted(third_party - declared), sorted(declared - third_party))
    data = project["tool"]["setuptools"]["package-data"]["orandnet_lib.book"]
    read = {"profiles/*.toml", "calibration.json"}
    assert read <= set(data)


def test_the_stage_modules_import_no_timm_until_a_network_is_built():
    """timm pulls in torchvision and torch._dynamo (2-3 s a process): the stages that build no
    network (2 and 6, every notebook's first cell) must not pay for it. nets.backbone and the
    ViT import it where they build a network."""
    import subprocess
    import sys

    code = ("import sys, importlib; from orandnet_lib.recipes import STAGE_MODULES; "
            "[importlib.import_module('orandnet_lib.stages.' + m) for m in STAGE_MODULES.values()]; "
            "import orandnet_lib.book.plots, orandnet_lib.book.chapters.precision; "
            "before = sorted(m for m in ('timm', 'torchvision') if m in sys.modules); "
            "from orandnet_lib.nets.backbone import create_backbone; create_backbone('resnet18', layers=(1, 1, 1, 1)); "
            "print(before, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[] True"
