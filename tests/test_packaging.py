"""The package as a user installs it: a wheel built from the checkout, installed into an empty
virtual environment (the torch, timm, ... installed here made visible, no network), runs
``orandnet stages`` and a smoke stage from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, requires_fashion_mnist


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@requires_fashion_mnist
def test_the_wheel_runs_a_stage_outside_the_checkout(tmp_path):
    # build from a copy of what the wheel is made of, so the checkout gets no build/ folder
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("orandnet_lib", "notebooks"):
        shutil.copytree(REPO / part, src / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          str(src), "-w", str(tmp_path / "dist")], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("orandnet_lib-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    # only now the installed dependencies: a path in a .pth file, whose own .pth files (this
    # checkout's editable install) are not run
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORANDNET_ROOT", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([str(python), "-c", "import orandnet_lib; print(orandnet_lib.__file__)"], cwd=work, env=env).stdout
    assert where.startswith(str(venv)), f"the wheel's package is imported, not the checkout's: {where}"

    orandnet = str(venv / "bin" / "orandnet")
    listing = _run([orandnet, "stages", "--profile", "smoke"], cwd=work, env=env).stdout
    assert "00_dataset" in listing and "06_precision_vs_miou" in listing
    _run([orandnet, "run", "--profile", "smoke", "--only", "00_dataset", "--quiet"], cwd=work, env=env)
    manifest = json.loads((work / "runs" / "smoke" / "00_dataset" / "manifest.json").read_text())
    assert manifest["metrics"], "the stage recorded its metrics"
    assert (work / "data" / "embedded-smoke" / "ImageSets" / "Segmentation" / "train.txt").exists()
    assert (work / "book" / "executed" / "00_dataset.ipynb").exists()
    assert not any(p.name == "build" for p in REPO.iterdir()), "the checkout stays clean"
