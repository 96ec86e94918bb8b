"""Recorded commands (manifest entries, evaluation summaries) run again on another machine."""

import shlex

from TAVIRegistrationLib.reproduce import argv_text, command_text, portable


def test_paths_inside_the_working_directory_or_beside_it_become_relative(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "Resources" / "Models").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert portable(str(repo / "Resources" / "Models" / "a.pt"), repo) == "Resources/Models/a.pt"
    assert portable(str(tmp_path / "shared" / "data"), repo) == "../shared/data"
    assert portable(str(repo), repo) == "."
    assert portable("relative/path.csv", repo) == "relative/path.csv"
    assert portable("--epochs", repo) == "--epochs"
    elsewhere = "/opt/elsewhere/index.csv" if not str(tmp_path).startswith("/opt/") else "/srv/index.csv"
    assert portable(elsewhere, repo) == elsewhere


def test_command_text_quotes_and_argv_names_the_program(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    text = command_text(["tavireg", "evaluate", "seg", "--data", repo / "a b" / "index.csv", "--max-frames", 5], repo)
    assert shlex.split(text) == ["tavireg", "evaluate", "seg", "--data", "a b/index.csv", "--max-frames", "5"]
    assert argv_text([str(repo / ".venv" / "bin" / "tavireg"), "train-seg", "--out", str(repo / "runs")], repo) \
        == "tavireg train-seg --out runs"
