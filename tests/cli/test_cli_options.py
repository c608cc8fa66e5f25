"""One name for the run folder, global options on either side of the command, help for every
option, exit status in every --help, and shell completion generated from the parser."""
from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from fibrosis.cli.main import build_parser, main
from fibrosis.cli.options import EXIT_FAIL_MEANS

RUN_COMMANDS = ["train", "tune", "evaluate", "report", "score", "listen", "monitor"]
OLD_NAMES = {"train": "--out", "tune": "--out", "score": "--model", "listen": "--model", "monitor": "--model"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in _commands().items() for a in p._actions
               if a.help != argparse.SUPPRESS and not (a.help and len(a.help) > 10)]
    assert missing == []


def test_every_help_states_the_exit_status(capsys):
    for name in _commands():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "exit status:" in out and "\n  0      success" in out and "\n  2      usage" in out, name
        assert ("\n  1      " in out) == (name in EXIT_FAIL_MEANS), name
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "128+N" in capsys.readouterr().out


def test_demo_help_mentions_tune(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "tune (patient-level cross-validation" in capsys.readouterr().out


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_the_run_folder_is_run_everywhere(command, tmp_path):
    p = _commands()[command]
    shown = [a for a in p._actions if a.help != argparse.SUPPRESS]
    assert any(a.option_strings == ["--run"] for a in shown)
    old = OLD_NAMES.get(command)
    if old:  # accepted, same destination, hidden from --help
        alias = p._option_string_actions[old]
        assert alias.dest == "run" and alias not in shown
        ns = argparse.Namespace()
        alias(p, ns, tmp_path, old)
        assert ns.run == tmp_path and ns.deprecated == [(old, "--run")]


def test_an_old_name_works_with_a_warning(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["train", "--cache", str(tmp_path), "--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert "WARNING fibrosis: --out is deprecated and will be removed in the next release: use --run" in err
    assert f"--run {f}: is a file; expected a folder" in err


def test_run_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report"])
    assert exc.value.code == 2
    assert "the following arguments are required: --run" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_before_or_after_the_command(tmp_path, where):
    log = tmp_path / "log.txt"
    glob = ["-v", "--log-file", str(log)]
    cmd = ["split", "--cache", str(tmp_path / "nothing")]
    args = build_parser().parse_args(glob + cmd if where == "before" else cmd + glob)
    assert args.verbose is True and args.log_file == log
    assert main(glob + cmd if where == "before" else cmd + glob) == 2  # no manifest there
    assert "ERROR" in log.read_text()


def test_global_options_default_when_not_given():
    args = build_parser().parse_args(["split", "--cache", "c"])
    assert args.verbose is False and args.log_file is None


def test_compare_positional_form_is_deprecated(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "compare A B is deprecated" in err and "use compare --run A --run B" in err
    assert "expected a run folder or an evaluation folder" in err


def test_compare_needs_two_evaluations(tmp_path, capsys):
    assert main(["compare", "--run", str(tmp_path)]) == 2
    assert "compare: give two evaluations (--run A --run B); got 1" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_and_options(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "fibrosis.bash"
    script.write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        cmd = (f'source "{script}"; COMP_WORDS=(fibrosis {" ".join(words)}); COMP_CWORD={len(words)}; '
               '_shtab_fibrosis; printf "%s\\n" "${COMPREPLY[@]}"')
        res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    assert complete("sc") == ["score"]
    assert complete("comp") == ["compare", "completion"]
    assert "--run" in complete("score", "--r") and "--model" not in complete("score", "--")
    (tmp_path / "runs").mkdir()
    assert complete("report", "--run", str(tmp_path / "ru")) == [str(tmp_path / "runs")]


def test_zsh_completion_names_every_command(capsys):
    assert main(["completion", "zsh"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#compdef fibrosis")
    assert all(name in out for name in _commands())


def test_unknown_shell_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["completion", "fish"])
    assert exc.value.code == 2

