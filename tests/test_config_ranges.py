"""Hostile config values: non-finite and out-of-range numbers."""
from __future__ import annotations

import pytest

from fibrosis.config import RANGES, Config, ConfigError, load_config, numeric_values


def test_every_numeric_key_has_a_range():
    # A new numeric key must say what it accepts, or a NaN / negative value slips through.
    cfg = load_config(None, ["train.stages=[{name: head}]", "train.val_batch_size=8",
                             "evaluate.deployment_prevalence=0.1", "tune.arms=[{name: a, input_size: 64}]"])
    patterns = {pattern for _, pattern, _ in numeric_values(cfg)}
    assert patterns - set(RANGES) == set()
    assert set(RANGES) - patterns == set()  # and no stale entries


@pytest.mark.parametrize("override, message", [
    # the reported case: a NaN fraction passed the sum check (NaN compares False)
    ("split.train=.nan", r"split.train: nan is not a finite number; expected a number in \[0, 1\]"),
    ("split.test=.inf", r"split.test: inf is not a finite number"),
    ("train.head_lr=0", r"train.head_lr: 0.0 must be > 0"),
    ("train.finetune_lr=-1e-4", r"train.finetune_lr: -0.0001 must be > 0"),
    ("train.stages=[{name: head, lr: .nan}]", r"train.stages\[0\].lr: nan is not a finite number"),
    ("train.stages=[{name: head, epochs: -1}]", r"train.stages\[0\].epochs: -1 must be >= 0"),
    ("train.head_epochs=-2", r"train.head_epochs: -2 must be >= 0"),
    ("model.dropout=1.0", r"model.dropout: 1.0 must lie in \[0, 1\)"),
    ("train.augment.p=1.5", r"train.augment.p: 1.5 must lie in \[0, 1\]"),
    ("evaluate.bootstrap_resamples=-1", r"evaluate.bootstrap_resamples: -1 must be >= 0"),
    ("ingest.image_size=1000000", r"ingest.image_size: 1000000 must lie in \[16, 4096\]"),
    ("model.input_size=8", r"model.input_size: 8 must lie in \[16, 4096\]"),
    ("split.near_duplicate_hamming=-1", r"split.near_duplicate_hamming: -1 must lie in \[0, 256\]"),
    ("split.seed=-1", r"split.seed: -1 must lie in \[0, 4294967295\]"),
    ("ingest.voi_percentiles=[99.5, 0.5]", r"ingest.voi_percentiles: \[99.5, 0.5\]; expected first < second"),
    ("train.augment.gamma=[1.2, 0.8]", r"train.augment.gamma: \[1.2, 0.8\]; expected first <= second"),
    ("evaluate.target_sensitivities=[0.9, 1.5]", r"evaluate.target_sensitivities\[1\]: 1.5 must lie in \(0, 1\]"),
    ("train.layer_decay=1e999", r"train.layer_decay: inf is not a finite number"),
])
def test_numbers_are_checked_for_finiteness_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_defaults_and_shipped_ranges_accept_the_edges():
    cfg = load_config(None, ["split.train=0.8", "split.val=0.2", "split.test=0", "model.dropout=0",
                             "train.augment.p=1", "evaluate.bootstrap_resamples=0", "ingest.image_size=16"])
    assert (cfg.split.test, cfg.train.augment.p, cfg.ingest.image_size) == (0, 1, 16)
    assert load_config(None, []) == Config()  # the defaults pass their own ranges
