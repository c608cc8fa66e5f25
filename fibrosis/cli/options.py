"""What every sub-command's options share: the run folder's one name, the options accepted on either
side of the command, old option names kept for a release, and the exit status, declared once."""
from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
# What exit 1 means for each command that has a contract beyond "it ran"; the others exit 0 or 2.
EXIT_FAIL_MEANS = {
    "ingest": "nothing ingested, any reject under --strict, or a DICOMweb instance not retrieved",
    "score": "a file failed scoring, or a DICOMweb instance was not retrieved or stored back",
    "listen": "results left unsent (kept, sent on the next start) or a batch failed",
    "monitor": "any monitoring alert (one line each)",
    "demo": "a stage did not meet its contract",
}
EXIT_EXTRA = {"listen": ("128+N", "stopped by a second signal N, without waiting for the batch being scored")}
CODE_WIDTH = 7  # "128+N" and two spaces


def exit_status(command: str | None) -> str:
    """The "exit status" epilog of ``command``'s --help (None: the top-level help, every meaning)."""
    rows = [("0", "success")]
    if command is None:
        rows.append(("1", "the stage ran but did not meet its contract: " + "; ".join(
            f"{c}: {m}" for c, m in EXIT_FAIL_MEANS.items())))
    elif command in EXIT_FAIL_MEANS:
        rows.append(("1", EXIT_FAIL_MEANS[command]))
    rows += [("2", "usage, config or input error (one line naming the file, key or value)"),
             ("130", "interrupted (Ctrl-C)")]
    rows += [(code, f"{text} ({c})" if command is None else text) for c, (code, text) in EXIT_EXTRA.items()
             if command in (None, c)]
    return "\n".join(["exit status:", *(f"  {code:<{CODE_WIDTH}}{text}" for code, text in rows)])


class Formatter(argparse.HelpFormatter):
    """Wraps a description's lines as usual, but keeps an indented line (the epilog's table) on a
    line of its own, its continuation under its text."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for line in text.splitlines():
            body = line.lstrip(" ")
            lead = indent + line[:len(line) - len(body)]
            more = " " * CODE_WIDTH if body != line else ""  # under the text of "  1      ...", past the code
            out.append(textwrap.fill(body, width, initial_indent=lead, subsequent_indent=lead + more) if body else "")
        return "\n".join(out)


def add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """-v and --log-file, before the command (``top``) or after it. After it, their default is
    SUPPRESS, so a sub-command that is not given them keeps what was given before it."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, the libraries' INFO lines "
                   "and tracebacks of errors", **default)
    p.add_argument("--log-file", type=Path, help="also write the log to this file", metavar="FILE",
                   **({"default": None} if top else default))


class DeprecatedAlias(argparse.Action):
    """An old option name: stores into the new option's dest, and notes the use, which is
    warned about once logging is set up (:func:`deprecations`)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kw: Any):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        used = list(getattr(namespace, "deprecated", None) or [])
        namespace.deprecated = [*used, (option_string, self.new)]


def add_run_option(p: argparse.ArgumentParser, help_: str, *, old: Sequence[str] = (), required: bool = True,
                   **kw: Any) -> None:
    """``--run RUN``, the run folder's one name across commands; ``old`` names still work for a
    release, hidden from --help and warned about. Required is checked after parsing (an old
    name may have given it): :func:`check_required`."""
    p.add_argument("--run", type=Path, default=None, metavar="RUN", help=help_, **kw)
    for name in old:
        p.add_argument(name, type=Path, dest="run", action=DeprecatedAlias, new="--run", metavar="RUN")
    if required:
        p.set_defaults(run_required=p)


def check_required(args: argparse.Namespace) -> None:
    """argparse's own message for a missing --run, given under neither its name nor an old one."""
    p = getattr(args, "run_required", None)
    if p is not None and getattr(args, "run", None) is None:
        p.error("the following arguments are required: --run")


def deprecated(old: str, new: str) -> str:
    return f"{old} is deprecated and will be removed in the next release: use {new}"


def deprecations(args: argparse.Namespace) -> list[str]:
    """One line per old option name used in ``args``."""
    return [deprecated(old, new) for old, new in dict.fromkeys(getattr(args, "deprecated", None) or [])]
