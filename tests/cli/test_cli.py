"""The CLI is a thin layer: help for every command, README in step, exit codes."""
import re

import pytest

from fibrosis.cli.main import build_parser, main
from helpers.paths import REPO

COMMANDS = ["ingest", "split", "train", "tune", "evaluate", "report", "runs", "compare", "score", "listen", "monitor", "review",
            "demo", "completion"]


def test_every_command_has_help(capsys):
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: fibrosis " + cmd in capsys.readouterr().out


def test_readme_lists_every_command_and_quick_start():
    readme = (REPO / "README.md").read_text()
    for cmd in COMMANDS:
        assert f"`fibrosis {cmd}" in readme, cmd
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sorted(sub) == sorted(COMMANDS)
    # The two quick-start commands, and CI runs the README's test command.
    assert "bash scripts/setup.sh && .venv/bin/fibrosis demo" in readme
    test_cmd = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert test_cmd in readme
    assert test_cmd in (REPO / ".ci" / "run").read_text()


def test_config_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["split", "--cache", str(tmp_path), "--set", "split.sede=1"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"unknown key\(s\) \['sede'\]", err)
    assert "Traceback" not in err


def test_ingest_nothing_ingested_exits_1(tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "x.dcm").write_bytes(b"not a dicom at all")
    assert main(["ingest", str(bad), "--cache", str(tmp_path / "c"), "--no-progress",
                 "--workers", "1"]) == 1
    rejects = (tmp_path / "c" / "rejects.csv").read_text()
    assert "x.dcm" in rejects
