"""SIGINT and SIGTERM sent to a running `orandnet run` stop it as Ctrl-C does: one line on the
terminal, the stage left unmarked, nothing half-written, the kernel shut down, and the same
command resumes. A real signal to a real subprocess, on a project whose first stage waits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from orandnet_lib.core import store

from conftest import REPO, write_tiny_voc

pytestmark = pytest.mark.slow
COMMON = 'profile = "x"\ndata_root = ""\nrun_dir = ""\nseed = 0\n'


def _project(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\n")
    bodies = {"00_wait": "import os, time\nfrom orandnet_lib.book.stage import open_stage\n"
                         "stage = open_stage('00_wait', profile, data_root, run_dir, seed)\n"
                         "(stage.dir / 'kernel.pid.part').write_text(str(os.getpid()))\n"
                         "os.replace(stage.dir / 'kernel.pid.part', stage.dir / 'kernel.pid')  # never seen half-written\n"
                         "for _ in range(int(seconds * 10)):\n    time.sleep(0.1)\n"
                         "stage.record(summary={'wait': {'done': True}})\n",
              "01_after": "from orandnet_lib.book.stage import open_stage\n"
                          "stage = open_stage('01_after', profile, data_root, run_dir, seed)\n"
                          "stage.record(summary={'after': {'done': True}})\n"}
    for name, body in bodies.items():
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        cell = nbformat.v4.new_code_cell(COMMON + ("seconds = 60.0\n" if name == "00_wait" else ""))
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    data = write_tiny_voc(tmp_path / "voc")
    profile = tmp_path / "p.toml"
    profile.write_text(f'description = "signals"\n[data]\nsource = "voc"\nroot = "{data}"\n')
    return root, profile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_cleanly_and_the_same_command_resumes(tmp_path, sig):
    root, profile = _project(tmp_path)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "orandnet_lib.cli", "--project", str(root), "run", "--profile", str(profile),
           "--run-dir", str(runs), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    pid_file = runs / "00_wait" / "kernel.pid"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "the first stage did not start"
    kernel = int(pid_file.read_text())
    proc.send_signal(sig)  # to the runner only, as a supervisor or `timeout` sends it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == ("orandnet: interrupted during 00_wait (not marked complete); finished in this run: none; "
                           "run the same command again to resume (finished stages are skipped)")
    assert store.read_manifest(runs / "00_wait") is None
    assert not [p.name for p in (runs / "00_wait").iterdir() if ".tmp" in p.name or p.suffix == ".ipynb"]
    for _ in range(50):
        if not _alive(kernel):
            break
        time.sleep(0.1)
    assert not _alive(kernel), "the kernel was shut down with the run"
    assert not (runs / ".run.lock").exists()
    again = subprocess.run(cmd + ["-p", "00_wait.seconds=0.1"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "ran 2 stage(s), skipped 0" in again.stdout and again.stderr == ""
