"""`fibrosis completion bash|zsh`: a shell completion script, generated from the parser itself by
shtab, so it cannot fall out of step with the commands and options.

    fibrosis completion bash > ~/.local/share/bash-completion/completions/fibrosis
    fibrosis completion zsh > ~/.zfunc/_fibrosis   # a folder on $fpath
"""
from __future__ import annotations

import argparse
from pathlib import Path

SHELLS = ("bash", "zsh")  # the choices of `fibrosis completion`


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell``; options that take a path complete file names."""
    import shtab  # it loads importlib.metadata: only this command pays for it

    if shell not in SHELLS:
        raise ValueError(f"shell {shell!r}; allowed: {list(SHELLS)}")
    _paths_complete_files(parser, shtab.FILE)
    return shtab.complete(parser, shell=shell)


def _paths_complete_files(parser: argparse.ArgumentParser, files: object) -> None:
    for action in parser._actions:
        if action.type is Path:
            action.complete = files  # type: ignore[attr-defined]  # shtab reads this attribute
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _paths_complete_files(sub, files)
