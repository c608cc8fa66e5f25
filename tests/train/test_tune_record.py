"""tune.json: one writer, one reader, the same JSON as the dicts it replaced; a file from before the
schema number is read as schema 0."""
from __future__ import annotations

import json

import pytest

from fibrosis.artefacts import SchemaError
from fibrosis.evaluate.tune_record import TuneResult

ROW = {  # an arm's row as `fibrosis tune` writes it, key order included
    "name": "head-only+tta", "describe": "linear probe, + test-time augmentation", "recipe": "lp-ft",
    "init": "pretrained", "unfreeze": "none", "lr_ratio": 1.0, "arch": "resnet18", "input_size": 32,
    "groups": [], "depth": 0, "aux_weight": 0.0, "aux_auc": {}, "extras": 0, "epoch": 0,
    "curve": [{"epoch": 0, "oof_loss": 0.5, "oof_calibrated_loss": 0.4, "oof_auc": 0.75, "train_loss": 0.6}],
    "minutes": 0.1, "cpu_minutes": 0.2, "cost": {"wall": 3.0, "cpu": 6.0}, "repeat_cost": {"wall": 0.0, "cpu": 0.0},
    "units": ["r0-f0"], "failed": None, "oof_sd": 1.25, "tta": True, "base_arm": "head-only",
    "tta_variants": {"format": 1, "combine": "mean logit", "padding": "black (normalised intensity 0)",
                     "variants": [{"name": "identity", "rotate_deg": 0.0, "scale": 1.0}]},
    "tta_seconds": 1.5, "tta_cost": {"wall": 1.5, "cpu": 2.0}, "base": "head-only",
    "auc": 0.75, "se": 0.05, "ci": [0.65, 0.85], "roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "thresholds": [None, 0.1]},
    "vs_best": None, "vs_random": {"difference": 0.25, "p": 0.01, "ci": [0.05, 0.45]}, "vs_reference": None,
    "vs_base": {"difference": 0.01, "p": 0.5, "ci": None}, "repeat_aucs": {"0": 0.75}}
FAILED = {**{k: v for k, v in ROW.items() if k not in ("tta", "base_arm", "tta_variants", "tta_seconds", "tta_cost")},
          "name": "dead", "failed": "r0-f0: constant", "base": None, "auc": None, "se": None, "ci": None,
          "roc": None, "vs_random": None, "vs_base": None}
DATA = {
    "level": 0.95, "rule": "replicated", "n": 12, "n_pos": 4, "arms": [ROW, FAILED], "best": "head-only+tta",
    "random_control": None, "reference": None, "chosen": "head-only+tta", "reason": "Chose 'head-only+tta'.",
    "warnings": [], "created": "2026-12-07T00:00:00+00:00", "tune_config": {"folds": 3}, "arch": "resnet18",
    "folds": 3, "repeats": 1, "finalist_repeats": 1, "n_dev": 12, "n_dev_pos": 4, "n_dev_patients": 12,
    "features": {"minutes": 0.1, "cpu_minutes": 0.2}, "final": "ensemble", "checkpoint": "best.pt",
    "first_choice": "head-only+tta",
    "replication": [{"chosen": "head-only+tta", "rival": "head-only", "repeats": [0, 1], "chosen_auc": [0.75, 0.7],
                     "rival_auc": [0.7, 0.65], "difference": [0.05, 0.05], "holds": True, "failed": False}],
    "selection_adjusted": {"auc": 0.7, "pooled_auc": 0.75, "bias": 0.05, "folds": 3, "arms": 2,
                           "method": "Tibshirani & Tibshirani 2009 (max over arms of each fold's AUC)"},
    "skipped_arms": {}, "aux": {"names": ["Noise"], "dropped": {}, "counts": {"Noise": [3, 9]}}, "minutes_total": 0.3}


def test_round_trip_writes_the_same_json_with_the_schema_number_first(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"schema": 1, **DATA}))
    result = TuneResult.read(path)
    assert result.arm("head-only+tta").twin and result.arm("dead").score.auc is None
    assert result.replication[0].holds and result.selection_adjusted and result.selection_adjusted.bias == 0.05
    result.write(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert list(again) == ["schema", *DATA] and [list(a) for a in again["arms"]] == [list(ROW), list(FAILED)]
    assert again == {"schema": 1, **DATA} and TuneResult.read(tmp_path / "again.json") == result


def test_an_unversioned_file_migrates_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text(json.dumps(DATA))
    assert TuneResult.read(path).to_json() == DATA
    path.write_text(json.dumps({**DATA, "schema": 7}))
    with pytest.raises(SchemaError, match=r"tune.json: schema 7; this version of fibrosis reads schema 0 to 1"):
        TuneResult.read(path)
    path.write_text(json.dumps({**DATA, "surprise": 1}))
    with pytest.raises(ValueError, match=r"tune.json: tune.json with unknown keys \['surprise'\]"):
        TuneResult.read(path)
    path.write_text(json.dumps({**DATA, "arms": [{**ROW, "vs_best": {"difference": 0.1}}]}))
    with pytest.raises(ValueError, match=r"tune.json: arms\[0\].vs_best without \['p', 'ci'\]"):
        TuneResult.read(path)
