"""Typed records with every field filled, for tests of the functions that read one section."""
from __future__ import annotations

from typing import Any

from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.tune_record import ArmScore, ArmTraits, JudgedArm, TuneArm
from fibrosis.evaluate.tune_record import TuneResult


def tune_result(**fields: Any) -> TuneResult:
    base: dict[str, Any] = dict(
        level=0.95, rule="replicated", n=300, n_pos=30, arms=[], best="", random_control=None, reference=None,
        chosen="", reason="", warnings=[], created="2026-12-07T00:00:00+00:00", tune_config={}, arch="resnet18",
        folds=5, repeats=1, finalist_repeats=1, n_dev=300, n_dev_pos=30, n_dev_patients=300, features={},
        final="ensemble", checkpoint="best.pt", first_choice="", replication=[], selection_adjusted=None,
        skipped_arms={}, aux=None, minutes_total=0.0)
    return TuneResult(**{**base, **fields})


def evaluation_result(**fields: Any) -> EvaluationResult:
    base: dict[str, Any] = dict(
        split="test", fit_split="val", frozen=False, created="2026-12-07T00:00:00+00:00", evaluate_config={},
        data={}, discrimination={}, calibration={}, operating_points=[], deployment_prevalence=None,
        subgroups=[], warnings=[])
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
