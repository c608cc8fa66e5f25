"""train.runlog: metrics.csv/jsonl rows (EpochRow writes the same dict, in the same column order, and reads
it back) and the console filter `fibrosis tune` puts around each fold's `fibrosis train`."""
from __future__ import annotations

import json
import logging

import pytest

from fibrosis.train.runlog import METRIC_COLUMNS, EpochRow, console_warnings_only, write_metrics

ROW = {"epoch": 3, "stage": 1, "stage_name": "finetune", "epoch_in_stage": 0, "lr": 0.0001, "train_loss": 0.5,
       "val_loss": 0.6, "val_auc": 0.75, "best_val_auc": 0.75, "improved": True, "n_trainable": 12,
       "cached_features": False, "seconds": 1.25, "train_images_per_s": 80.0}


def test_an_epoch_row_writes_the_metric_columns_in_order(tmp_path):
    row = EpochRow.from_json(ROW, "last.pt: run.history[0]")
    assert row.to_json() == ROW and list(row.to_json()) == list(METRIC_COLUMNS) == list(ROW)
    write_metrics(tmp_path, [row])
    assert (tmp_path / "metrics.jsonl").read_text() == json.dumps(ROW) + "\n"
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    with pytest.raises(ValueError, match=r"last.pt: run.history\[0\]: history row .* expected exactly the keys"):
        EpochRow.from_json({**ROW, "extra": 1}, "last.pt: run.history[0]")


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
