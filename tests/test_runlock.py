"""One run per run folder: a live holder refuses a second run, a stale lock is taken over."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import nbformat
import pytest

from orandnet_lib.core import runlock
from orandnet_lib.core.errors import RunLocked


def test_a_second_run_is_refused_naming_the_holder_and_the_lock_goes_with_the_first(tmp_path):
    with runlock.locked(tmp_path, "orandnet run --profile smoke") as path:
        info = runlock.holder(tmp_path)
        assert info["pid"] == os.getpid() and info["what"] == "orandnet run --profile smoke"
        with pytest.raises(RunLocked, match=rf"process {os.getpid()} on .*started {re.escape(info['started'])}"):
            with runlock.locked(tmp_path):
                pass
        assert path.exists(), "the refused run leaves the holder's lock alone"
    assert runlock.holder(tmp_path) is None


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # that process has exited
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                          "started": "2026-01-01T00:00:00+00:00"}))
    with runlock.locked(tmp_path):
        assert runlock.holder(tmp_path)["pid"] == os.getpid()
    # another machine's lock (a shared disk) is never judged from here
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunLocked, match="on elsewhere"):
        with runlock.locked(tmp_path):
            pass


def test_the_runner_refuses_a_folder_a_live_process_holds(tmp_path, tiny_voc):
    from orandnet_lib.book.runner import Runner

    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell('profile = "x"\ndata_root = ""\nrun_dir = ""\nseed = 0\n')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, root / "notebooks" / "00_x.ipynb")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs" / runlock.LOCK_FILE).write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "what": "orandnet run --profile t", "started": "then"}))
        profile = {"name": "t", "seed": 0, "data": {"source": "voc", "root": str(tiny_voc)}, "stages": {}}
        runner = Runner(profile, root=root, run_dir=tmp_path / "runs", progress=False, log=lambda m: None)
        with pytest.raises(RunLocked, match=f"process {holder.pid} .*orandnet run --profile t.*started then"):
            runner.run()
    finally:
        holder.kill()
        holder.wait()
