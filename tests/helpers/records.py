"""Typed records with every field filled, for tests of the functions that read one section."""
from __future__ import annotations

from typing import Any

from fibrosis.evaluate.metrics import CalibrationSummary, Discrimination
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.summary import DataSummary
from fibrosis.model.threshold import FitData
from fibrosis.evaluate.tune_record import ArmScore, ArmTraits, JudgedArm, TuneArm, TuneResult


def tune_result(**fields: Any) -> TuneResult:
    base: dict[str, Any] = dict(
        level=0.95, rule="replicated", n=300, n_pos=30, arms=[], best="", random_control=None, reference=None,
        chosen="", reason="", warnings=[], created="2026-12-07T00:00:00+00:00", tune_config={}, arch="resnet18",
        folds=5, repeats=1, finalist_repeats=1, n_dev=300, n_dev_pos=30, n_dev_patients=300, features={},
        final="ensemble", checkpoint="best.pt", first_choice="", replication=[], selection_adjusted=None,
        skipped_arms={}, aux=None, minutes_total=0.0)
    return TuneResult(**{**base, **fields})


# metrics.json sections of four test images (2 with fibrosis), small enough to check by hand.
DISCRIMINATION: dict[str, Any] = {
    "score": "model logit", "auc": 0.75,
    "delong": {"auc": 0.75, "variance": 0.01, "se": 0.1, "ci": [0.55, 0.95], "level": 0.95, "method": "DeLong",
               "n_pos": 2, "n_neg": 2},
    "bootstrap": {"auc": None, "ci": None, "band": None, "level": 0.95,
                  "method": "patient-clustered percentile bootstrap", "n_resamples": 10, "n_used": None,
                  "n_patients": 4, "seed": 0, "error": "too few patients"},
    "auc_after_calibration": None,
    "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0], "thresholds": [None, 0.5, -1.0]},
    "pr": {"precision": [0.5, 1.0], "recall": [1.0, 0.5], "average_precision": 0.75, "prevalence": 0.5,
           "n_pos": 2, "n": 4}}
_BLOCK: dict[str, Any] = {
    "reliability": {"bins": [{"lower": 0.0, "upper": 0.5, "count": 4, "mean_predicted": 0.25, "observed": 0.5,
                              "observed_ci": [0.15, 0.85]}],
                    "ece": 0.25, "n_bins": 2, "strategy": "uniform", "binning": "2 equal-width bins", "n": 4,
                    "level": 0.95},
    "brier": 0.125,
    "intercept_slope": {"level": 0.95, "method": "logistic recalibration on logit(p)", "slope": 0.9,
                        "slope_ci": None, "intercept": -0.1, "intercept_ci": None},
    "histogram": {"edges": [0.0, 0.5, 1.0], "positives": [2, 0], "negatives": [2, 0]}}
CALIBRATION: dict[str, Any] = {"method": "platt", "calibrator": {"format": 1, "method": "platt", "params": {"a": 1.0, "b": 0.0}},
                               "before": _BLOCK, "after": _BLOCK}


def data_summary(**fields: Any) -> DataSummary:
    base: dict[str, Any] = dict(n=4, n_pos=2, n_neg=2, prevalence=0.5, n_patients=4,
                                fit=FitData("val", 10, 5, 10), provenance=None)
    return DataSummary(**{**base, **fields})


def evaluation_result(**fields: Any) -> EvaluationResult:
    base: dict[str, Any] = dict(
        split="test", fit_split="val", frozen=False, created="2026-12-07T00:00:00+00:00", evaluate_config={},
        data=data_summary(), discrimination=Discrimination.from_json(DISCRIMINATION, "helpers"),
        calibration=CalibrationSummary.from_json(CALIBRATION, "helpers"), operating_points=[],
        deployment_prevalence=None, subgroups=[], warnings=[])
    return EvaluationResult(**{**base, **fields})


def judged_arms(rows: list[dict[str, Any]]) -> list[JudgedArm]:
    """Hand-written arms table rows {name, auc, se, depth, lr_ratio, ...traits} as selection's records."""
    traits = {f for f in ArmTraits.__dataclass_fields__}
    return [JudgedArm(ArmTraits(**{k: v for k, v in r.items() if k in traits}),
                      ArmScore(r.get("auc"), r.get("se"), None, None)) for r in rows]


def tune_arm(judged: JudgedArm, **fields: Any) -> TuneArm:
    """tune.json's row of a judged arm, with a plain lp-ft recipe wherever ``fields`` say nothing."""
    t = judged.traits
    base: dict[str, Any] = dict(
        name=t.name, describe="", recipe=t.recipe, init=t.init, unfreeze="none", lr_ratio=t.lr_ratio,
        arch="resnet18", input_size=224, groups=[], depth=t.depth, aux_weight=0.0, aux_auc={}, extras=t.extras,
        epoch=0, curve=[], minutes=0.0, cpu_minutes=0.0, cost={"wall": 0.0, "cpu": 0.0},
        repeat_cost={"wall": 0.0, "cpu": 0.0}, units=[], failed=t.failed, oof_sd=1.0, twin=None, base=t.base,
        score=judged.score, repeat_aucs={})
    return TuneArm(**{**base, **fields})
