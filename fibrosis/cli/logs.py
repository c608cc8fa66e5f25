"""The command line's log: the pipeline's own lines, and only the warnings of the libraries it uses.

A library narrates its work at INFO (fontTools lists every glyph table it subsets, WeasyPrint
every layout step, matplotlib every font it finds): useful when debugging, noise when a clinician
reads what the run did. So records of loggers outside ``fibrosis`` pass at WARNING and above,
and everything passes with ``-v``.
"""
from __future__ import annotations

import logging
import sys
from typing import TextIO
from pathlib import Path

OWN = "fibrosis"
# Loggers that narrate at INFO/DEBUG: set to WARNING so they skip formatting work as well
# (the handler filter below drops any other library's chatter).
NOISY = ("fontTools", "weasyprint", "PIL", "matplotlib", "highdicom", "pynetdicom", "numexpr",
         "urllib3", "onnxscript", "asyncio")
# CSS the report's HTML carries for browsers only (a scrolling <pre>, colours kept when a
# browser prints); WeasyPrint lays out the PDF without it and says so at WARNING on every run,
# which is nothing for the user to act on. Any other ignored CSS still warns.
BROWSER_ONLY_CSS = frozenset({"overflow-x", "print-color-adjust", "-webkit-print-color-adjust"})
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def is_own(name: str) -> bool:
    return name == OWN or name.startswith(OWN + ".")


class QuietLibraries(logging.Filter):
    """Passes the pipeline's records, and a library's only from WARNING up (everything when
    ``verbose``), except WeasyPrint's note that it ignored browser-only CSS."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own(record.name):
            return True
        if browser_only_css(record):
            return self.verbose
        return self.verbose or record.levelno >= logging.WARNING


def browser_only_css(record: logging.LogRecord) -> bool:
    """WeasyPrint's ``Ignored `PROPERTY: VALUE` at L:C, REASON.`` for a property of BROWSER_ONLY_CSS."""
    if not record.name.startswith("weasyprint") or not str(record.msg).startswith("Ignored `"):
        return False
    args = record.args if isinstance(record.args, tuple) else ()
    return bool(args) and str(args[0]) in BROWSER_ONLY_CSS


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record, not at setup: a caller
    that swaps stderr (a test's capture, a notebook) and closes the old one leaves no
    handler writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(verbose: bool, log_file: Path | None) -> str:
    """Log to stderr (and ``log_file``); returns why the log file cannot be used, or ''."""
    handlers: list[logging.Handler] = [StderrHandler()]
    problem = ""
    if log_file:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file))
        except OSError as exc:
            problem = (f"--log-file {log_file}: cannot write ({exc.strerror or exc}); "
                       "expected a writable file path")
    quiet = QuietLibraries(verbose)
    for handler in handlers:
        handler.addFilter(quiet)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers,
                        format=FORMAT, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    return problem
