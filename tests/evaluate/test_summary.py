"""The data and run sections of metrics.json: their records write the file's layout and read it back."""
from __future__ import annotations

import pytest

from fibrosis.model.threshold import FitData
from fibrosis.evaluate.summary import (CacheProvenance, ConfiguredStage, DataSummary, Exclusion, PolarityQa,
                                       RunSummary, SplitCounts, StageRun, WeightsRecord, stages_run)

COUNTS = {"n": 4, "n_pos": 1, "n_neg": 3, "prevalence": 0.25, "n_patients": 3,
          "fit": {"split": "val", "n": 8, "n_pos": 2, "n_patients": 8}}
PROVENANCE = {"source": "site A", "labels": "labels.csv, column 'fibrosis'",
              "total": {"n": 12, "n_pos": 3, "prevalence": 0.25, "n_patients": 11},
              "splits": {"val": {"n": 8, "n_pos": 2, "prevalence": 0.25, "n_patients": 8},
                         "test": {"n": 4, "n_pos": 1, "prevalence": 0.25, "n_patients": 3}},
              "split_method": "random", "exclusions": [{"kind": "error", "reason": "truncated", "count": 1}],
              "n_excluded": 1, "qa": {"polarity_qa": "auto", "n_excluded": 0, "n_flagged": {"polarity-unsure": 1}},
              "manifest_sha256": "ab" * 32, "cache": {"image_size": 256, "dtype": "uint8"}}


def _summary() -> DataSummary:
    return DataSummary(4, 1, 3, 0.25, 3, FitData("val", 8, 2, 8), CacheProvenance(
        "site A", "labels.csv, column 'fibrosis'", SplitCounts(12, 3, 0.25, 11),
        {"val": SplitCounts(8, 2, 0.25, 8), "test": SplitCounts(4, 1, 0.25, 3)}, "random",
        [Exclusion("error", "truncated", 1)], 1, PolarityQa("auto", 0, {"polarity-unsure": 1}), "ab" * 32,
        {"image_size": 256, "dtype": "uint8"}))


def test_data_summary_is_the_counts_then_the_provenance_on_one_level():
    data = _summary()
    assert data.to_json() == {**COUNTS, **PROVENANCE} and list(data.to_json()) == [*COUNTS, *PROVENANCE]
    assert DataSummary.from_json({**COUNTS, **PROVENANCE}, "metrics.json: data") == data
    assert data.split_method == "random" and data.manifest_sha256 == "ab" * 32
    external = data.with_split_method("none: every row")
    assert list(external.to_json()).index("split_method") == len(COUNTS) + 4  # kept in its place
    assert external.to_json()["split_method"] == "none: every row"


def test_data_summary_without_provenance_or_polarity_qa():
    bare = DataSummary.from_json(COUNTS, "metrics.json: data")
    assert bare.provenance is None and bare.to_json() == COUNTS and bare.split_method is None
    no_qa = {k: v for k, v in PROVENANCE.items() if k != "qa"}  # an evaluation from before the polarity QA
    read = DataSummary.from_json({**COUNTS, **no_qa}, "metrics.json: data")
    assert read.provenance is not None and read.provenance.qa is None and read.to_json() == {**COUNTS, **no_qa}
    with pytest.raises(ValueError, match=r"metrics.json: data: without \['labels'"):
        DataSummary.from_json({**COUNTS, "source": "site A"}, "metrics.json: data")


RUN = {"name": "r1", "checkpoint_sha256": None, "arch": "resnet18",
       "weights": {"source": None, "file": None, "sha256": None}, "pretrained": False, "input_size": 224,
       "tta": None, "preset": "partial",
       "stages_configured": [{"name": "head", "epochs": 2, "lr": 0.001, "unfreeze": [], "warmup_epochs": None}],
       "stages_run": [{"name": "head", "epochs": 2, "lr_peak": 0.001, "best_val_auc": 0.8}],
       "epochs_done": 2, "best_epoch": 1, "best_val_auc": 0.8, "seed": 0, "split_seed": 0, "manifest_sha256": None,
       "config": {"train": {"seed": 0}}, "aux": None, "versions_training": None,
       "versions_evaluation": {"python": "3.11.7"}}


def test_run_summary_json_is_the_file_layout_and_reads_back():
    run = RunSummary("r1", None, "resnet18", WeightsRecord(None, None, None), False, 224, None, "partial",
                     [ConfiguredStage("head", 2, 0.001, [], None)], [StageRun("head", 2, 0.001, 0.8)], 2, 1, 0.8, 0, 0,
                     None, {"train": {"seed": 0}}, None, None, {"python": "3.11.7"})
    assert run.to_json() == RUN and list(run.to_json()) == list(RUN)
    assert RunSummary.from_json(RUN, "metrics.json: run") == run


def test_stages_run_keeps_the_peak_rate_and_best_auc_per_stage():
    history = [{"stage": 0, "stage_name": "head", "lr": 1e-3, "val_auc": 0.7},
               {"stage": 0, "stage_name": "head", "lr": 5e-4, "val_auc": 0.8},
               {"stage": 1, "stage_name": None, "lr": 1e-4, "val_auc": None}]
    assert stages_run(history) == [StageRun("head", 2, 1e-3, 0.8), StageRun("stage 1", 1, 1e-4, None)]
