"""reference.json: build_reference returns the typed record, whose JSON the monitor reads back."""
from __future__ import annotations

import json

from fibrosis.config import EvaluateConfig
from fibrosis.evaluate.reference import Reference, build_reference, outcome_counts
from fibrosis.evaluate.run import evaluate_predictions
from fibrosis.model.threshold import FitData, OperatingPointSpec, ThresholdRecord
from helpers.runs import predictions


def test_outcomes_count_excluded_and_errors_not_duplicates():
    rejects = [{"kind": "excluded", "reason": "(0018,5101) ViewPosition='LL'; lateral views excluded"},
               {"kind": "error", "reason": "unsupported transfer syntax"},
               {"kind": "duplicate", "reason": "same pixels as a.dcm"}]
    out = outcome_counts(10, rejects)
    assert (out.n, out.ok, out.excluded, out.error) == (12, 10, 1, 1)
    assert sum(out.reasons.values()) == 2


def test_the_reference_is_a_record_the_monitor_reads_back_unchanged():
    val, test = predictions(80, 6, "val"), predictions(80, 7, "test")
    res, cal, *_ = evaluate_predictions(val, test, EvaluateConfig(bootstrap_resamples=50))
    threshold = ThresholdRecord.of([OperatingPointSpec("youden", "youden", 0.3, 0.8, 0.7)], "platt",
                                   FitData("val", 80, 12, 40))
    prob = cal.predict(test.logits)
    stats = [{"img_mean": 0.5, "img_std": 0.2, "img_p05": 0.1, "img_p50": 0.5, "img_p95": 0.9}] * len(prob)
    ref = build_reference(test.rows, test.labels, prob, stats, res, threshold, [], "abc123", len(prob))
    assert isinstance(ref, Reference)
    assert (ref.n, ref.threshold.name, ref.threshold.value, ref.positive_n) == (80, "youden", 0.3, 80)
    assert ref.positive_k == int((prob >= 0.3).sum())
    assert ref.performance.ece_ci is not None and ref.performance.n == 80
    data = json.loads(json.dumps(ref.to_json()))
    assert list(data) == ["format", "split", "frozen", "model_id", "created", "n", "threshold", "probabilities",
                          "positive", "categories", "continuous", "outcomes", "performance", "minimums"]
    assert Reference.from_json(data, "reference.json") == ref
