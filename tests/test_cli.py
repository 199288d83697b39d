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
