"""The notebooks tell the story; the library holds the logic (read statically, nothing runs)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_function_class_or_timing_in_a_notebook(path: Path):
    for i, cell in enumerate(code_cells(path)):
        tree = ast.parse("".join(cell["source"]))
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defined, f"{path.name} cell {i} defines {[n.name for n in defined]}: that belongs in orandnet_lib"
        names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree)
                 if isinstance(n, (ast.Attribute, ast.Name))}
        assert not names & {"perf_counter", "process_time"}, f"{path.name} cell {i} times code: use make bench"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_and_hidden_plumbing(path: Path):
    cells = code_cells(path)
    tags = [set(c.get("metadata", {}).get("tags", [])) for c in cells]
    assert sum("parameters" in t for t in tags) == 1 and "parameters" in tags[0]
    assert not any(c.get("outputs") for c in cells), f"{path.name} is committed with outputs"
    for i, (cell, t) in enumerate(zip(cells[1:], tags[1:]), start=1):
        assert t & {"hide-input", "remove-input", "remove-cell"}, f"{path.name} cell {i} shows its code in the book"
        assert len("".join(cell["source"]).splitlines()) <= 30, f"{path.name} cell {i} is long: move its logic"
