"""The installed command works from any folder."""

from orandnet_lib import cli
from orandnet_lib.book import profiles

from conftest import REPO


def test_cli_finds_its_project_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ORANDNET_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert profiles.project_root() == REPO
    assert cli.main(["stages", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "00_dataset  (reads: data)" in out and "06_precision_vs_miou" in out


def test_cli_project_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORANDNET_ROOT", str(REPO))  # recorded, so the variable --project sets is undone after
    monkeypatch.delenv("ORANDNET_ROOT")
    assert cli.main(["--project", str(tmp_path), "stages"]) == 2
    assert f"--project {tmp_path} has no notebooks/ folder" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--project", str(REPO), "stages", "--profile", "smoke"]) == 0
    assert "01_classifiers_and_cams" in capsys.readouterr().out


def test_the_listing_shows_the_profile_it_lists_and_the_help_every_profile(capsys):
    assert cli.main(["stages", "--profile", "default"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "profile default: data data/embedded-default, run folder runs/default"
    assert "    profile = 'default'" in out and "    profile = 'smoke'" not in out
    assert "    cnn_pretrained = 'aux-broad'" in out  # the profile's value, not the notebook's default
    assert set(profiles.PROFILE_NAMES) == {p.stem for p in (REPO / "orandnet_lib/book/profiles").glob("*.toml")}
    helptext = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert all(name in " ".join(helptext.split()) for name in profiles.PROFILE_NAMES)


def test_a_command_writes_nothing_on_stderr():
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "orandnet_lib.cli", "stages", "--profile", "default"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stderr == "" and "06_precision_vs_miou" in proc.stdout
    # A reader that goes away (head, a pager that quit) before a line is written: the write
    # fails with a broken pipe, which is not the command's error.
    # fails with a broken pipe, which is not the command's error; both when print writes at once
    # (PYTHONUNBUFFERED) and when the pipe's buffer is written at the end (a user's shell).
    for unbuffered in ("1", ""):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | \
            ({"PYTHONUNBUFFERED": unbuffered} if unbuffered else {})
        gone = subprocess.Popen([sys.executable, "-m", "orandnet_lib.cli", "stages", "--profile", "default"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
        gone.stdout.close()
        err = gone.stderr.read().decode()
        assert (gone.wait(), err) == (0, ""), unbuffered


def test_a_run_in_process_cannot_publish_and_says_why(tmp_path, capsys):
    code = cli.main(["run", "--profile", "smoke", "--run-dir", str(tmp_path / "runs"), "--in-process", "--publish"])
    assert code == 2
    assert "--in-process runs no notebooks, so there is no chapter to --publish" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_stage_check_stops_the_run_before_any_stage_runs(tmp_path, capsys):
    # The smoke profile runs 2 whole-pipeline replicates; stage 5's seed r trains on replicate r's masks,
    # so seed 2 has none. Before, this failed in stage 5's notebook after stages 0-4 and their replicate.
    code = cli.main(["run", "--profile", "smoke", "--run-dir", str(tmp_path / "runs"), "--quiet",
                     "-p", "05_segmentation_curriculum.seeds=[0, 1, 2]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "stage 05_segmentation_curriculum: with replicates = 2, the seed of a pseudo-mask set is its replicate: " \
           "seeds [2] have none (use seeds below 2)" in err
    assert not (tmp_path / "runs").exists()


def test_checking_a_stage_without_a_module_imports_no_stage_module():
    """The CLI's stage checks import a stage's module (torch, timm: seconds) only for a stage that has one."""
    import subprocess
    import sys

    code = ("import sys; from orandnet_lib import cli; cli._checks('00_wait', {'seconds': 1.0}); "
            "print(sorted(m for m in sys.modules if m.startswith('orandnet_lib.stages.') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
