"""The console filter `fibrosis tune` puts around each fold's `fibrosis train`."""
from __future__ import annotations

import logging

from fibrosis.train.runlog import console_warnings_only


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


def _run(root_level: int) -> list[str]:
    root, keep = logging.getLogger(), _Keep()
    old = root.level
    root.addHandler(keep)
    root.setLevel(root_level)
    try:
        with console_warnings_only("fibrosis.train."):
            logging.getLogger("fibrosis.train.loop").info("epoch 1")
            logging.getLogger("fibrosis.train.loop").warning("val split has one class")
            logging.getLogger("fibrosis.data.cache").info("other stage")
        logging.getLogger("fibrosis.train.loop").info("after")
    finally:
        root.removeHandler(keep)
        root.setLevel(old)
    return keep.lines


def test_inside_only_warnings_of_the_prefix_reach_the_console() -> None:
    assert _run(logging.INFO) == ["fibrosis.train.loop WARNING val split has one class",
                                  "fibrosis.data.cache INFO other stage",
                                  "fibrosis.train.loop INFO after"]


def test_verbose_hides_nothing() -> None:
    assert _run(logging.DEBUG) == ["fibrosis.train.loop INFO epoch 1",
                                   "fibrosis.train.loop WARNING val split has one class",
                                   "fibrosis.data.cache INFO other stage",
                                   "fibrosis.train.loop INFO after"]
