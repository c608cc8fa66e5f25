"""The linear probe's C at an end of its grid: said once for all folds, not once per fold."""
from __future__ import annotations

import logging

import numpy as np

from fibrosis.train.probe import Probe, log_grid_ends

GRID = (0.01, 0.1, 1.0)


def _probe(c: float) -> Probe:
    return Probe(np.zeros(2), 0.0, c, {g: 1.0 for g in GRID})


def test_grid_end():
    assert [_probe(c).grid_end() for c in GRID] == ["lower", "", "upper"]
    assert Probe(np.zeros(2), 0.0, 0.01, {0.01: 1.0}).grid_end() == ""  # a one-value grid has no end to move


def test_one_warning_for_all_folds(caplog):
    with caplog.at_level(logging.WARNING, "fibrosis.train.probe"):
        log_grid_ends([_probe(0.01), _probe(1.0), _probe(1.0), _probe(0.1)], GRID)
        log_grid_ends([_probe(0.1)], GRID)
    assert [r.getMessage() for r in caplog.records] == [
        "linear probe: C chosen at the lower end in 1 of 4 fits and the upper end in 2 of 4 fits of tune.probe_c "
        "[0.01, 0.1, 1.0]: the optimum may lie beyond it; extend the grid"]
