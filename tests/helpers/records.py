"""Typed records with every field filled, for tests of the functions that read one section."""
from __future__ import annotations

from typing import Any

from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.tune_record import TuneResult


def tune_result(**fields: Any) -> TuneResult:
    base: dict[str, Any] = dict(
        level=0.95, rule="replicated", n=300, n_pos=30, arms=[], best="", random_control=None, reference=None,
        chosen="", reason="", warnings=[], created="2026-12-07T00:00:00+00:00", tune_config={}, arch="resnet18",
        folds=5, repeats=1, finalist_repeats=1, n_dev=300, n_dev_pos=30, n_dev_patients=300, features={},
        final="ensemble", checkpoint="best.pt", first_choice="", replication=[], selection_adjusted={},
        skipped_arms={}, aux={}, minutes_total=0.0)
    return TuneResult(**{**base, **fields})


def evaluation_result(**fields: Any) -> EvaluationResult:
    base: dict[str, Any] = dict(
        split="test", fit_split="val", frozen=False, created="2026-12-07T00:00:00+00:00", evaluate_config={},
        data={}, discrimination={}, calibration={}, operating_points=[], deployment_prevalence=None,
        subgroups=[], warnings=[])
    return EvaluationResult(**{**base, **fields})
