"""What one arm's cross-validation gives: its pooled out-of-fold logits, its epoch budget, and
whether any fold model failed.

An arm's epoch budget is the one with the lowest pooled OOF loss over all development
patients (at least ``tune.min_epochs``; by default after Platt recalibration,
``tune.epoch_criterion``): one number chosen from all of them instead of an epoch per tiny
validation split. A fold model whose held-out logits are (near-)constant has learned nothing
that ranks: its arm is marked failed (log, tune.json, report) and never given an AUC from ties.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from fibrosis import artefacts
from fibrosis.config import Config
from fibrosis.train.folds import repeat_of
from fibrosis.train.probe import calibrated_log_loss, weighted_log_loss
from fibrosis.train.tune.arms import Arm
from fibrosis.train.tune.context import SCHEMA, Context, Cost, UnitRecord, write_json

logger = logging.getLogger(__name__)

# A fold model fails when its held-out logits spread less than this, relative to their size: a
# hundred times float32's resolution, below which the deployed network's output is rounding.
CONSTANT_SD = 1e-5


@dataclass
class ArmResult:
    arm: Arm
    epoch: int  # chosen fine-tuning budget (0 = the probe, or the recipe's own final model)
    oof: np.ndarray  # pooled OOF logits per development row (mean over tune.repeats), ``dev`` order
    curve: list[dict[str, float]]  # per epoch: pooled OOF loss and AUC
    cost: Cost  # of its units in the first repeats
    units: list[str]
    # Auxiliary heads only: OOF AUC of each finding's own head at ``epoch`` (context for the
    # report: is the backbone learning those findings at all?)
    aux_auc: dict[str, float] = field(default_factory=dict)
    failed: str | None = None  # why the arm has no AUC (a fold model with constant output)
    # Per fold of tune.repeats, held-out AUC per epoch (None: one class held out): the
    # selection-adjusted estimate (Tibshirani & Tibshirani 2009) needs the per-fold winners.
    fold_auc: dict[str, list[float | None]] = field(default_factory=dict)
    # Pooled OOF logits of each repeat at ``epoch``: repeat -> (n_dev,) (finalists get more).
    by_repeat: dict[int, np.ndarray] = field(default_factory=dict)
    repeat_cost: Cost = Cost()  # of its units in the finalists' repeats

    def total_cost(self) -> Cost:
        return self.cost + self.repeat_cost

    @property
    def name(self) -> str:
        return self.arm.name

    def oof_sd(self) -> float:
        return float(np.std(self.oof))

    def fold_auc_at_epoch(self) -> dict[str, float | None]:
        """Held-out AUC of each fold model of the first repeats at the chosen budget."""
        return {f: v[min(self.epoch, len(v) - 1)] for f, v in self.fold_auc.items()}

    def to_dict(self, cfg: Config) -> dict[str, Any]:
        """The arm's row of tune.json (no logits)."""
        a = self.arm
        return {"name": a.name, "describe": a.describe(cfg), "recipe": a.recipe, "init": a.cfg.init,
                "unfreeze": a.cfg.unfreeze, "lr_ratio": a.lr_ratio, "arch": a.arch,
                "input_size": a.input_size, "groups": list(a.groups), "depth": a.depth,
                "aux_weight": a.cfg.aux_weight if a.aux else 0.0, "aux_auc": self.aux_auc,
                "extras": int(a.aux), "epoch": self.epoch, "curve": self.curve,
                **self.total_cost().to_dict(), "cost": dataclasses.asdict(self.cost),
                "repeat_cost": dataclasses.asdict(self.repeat_cost), "units": self.units, "failed": self.failed, "oof_sd": round(self.oof_sd(), 4)}

    def write(self, path: Path, cfg: Config) -> None:
        write_json(path, {"schema": SCHEMA, **self.to_dict(cfg), "oof": self.oof.tolist(),
                          "fold_auc": self.fold_auc,
                          "by_repeat": {str(r): z.tolist() for r, z in self.by_repeat.items()}})

    @classmethod
    def read(cls, arm: Arm, path: Path) -> "ArmResult":
        d = json.loads(path.read_text())
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path}: arm record of another tune version; expected schema {SCHEMA} (use a new --run folder)")
        return cls(arm, int(d["epoch"]), np.asarray(d["oof"], float), d["curve"], Cost(**d["cost"]), d["units"],
                   d["aux_auc"], d["failed"], d["fold_auc"],
                   {int(r): np.asarray(z, float) for r, z in d["by_repeat"].items()}, Cost(**d["repeat_cost"]))


def pooled(records: Sequence[UnitRecord], pos: dict[int, int], n: int, epoch: int, key: str = "oof") -> np.ndarray:
    """Per development row, the mean over repeats of its held-out logits at ``epoch``: (n,) for
    ``oof``, (n, K) for ``aux_oof``."""
    total, count = None, np.zeros(n)
    for rec in records:
        series = getattr(rec, key)
        e = min(epoch, len(series) - 1)
        for r, z in zip(rec.heldout, series[e]):
            if total is None:
                total = np.zeros((n,) + np.shape(z))
            total[pos[r]] += z
            count[pos[r]] += 1
    if total is None or (count == 0).any():
        raise RuntimeError("a development row has no out-of-fold prediction")
    return total / count.reshape((n,) + (1,) * (total.ndim - 1))


def constant_output(z: Sequence[float] | np.ndarray) -> str | None:
    """Why held-out logits ``z`` are (near-)constant, or None when they can rank."""
    z = np.asarray(z, float)
    if len(z) < 2:
        return None
    sd, scale = float(z.std()), max(1.0, float(np.abs(z).mean()))
    if sd <= CONSTANT_SD * scale or len(np.unique(z)) < 2:
        return f"constant held-out logits (sd {sd:.2g} around {float(z.mean()):.3g})"
    return None


def fold_aucs(ctx: Context, rec: UnitRecord, pos: dict[int, int]) -> list[float | None]:
    """The unit's held-out AUC per epoch (None: its held-out part has one class)."""
    y = ctx.y[[pos[r] for r in rec.heldout]]
    if len(set(y.tolist())) < 2:
        return [None] * len(rec.oof)
    return [round(float(roc_auc_score(y, z)), 6) for z in rec.oof]


def _aux_auc(ctx: Context, records: Sequence[UnitRecord], epoch: int) -> dict[str, float]:
    """OOF AUC per auxiliary finding at ``epoch``, over the development rows labelled for it."""
    z = pooled(records, {r: k for k, r in enumerate(ctx.dev)}, len(ctx.dev), epoch, "aux_oof")
    out = {}
    for k, name in enumerate(ctx.aux_names):
        t = ctx.aux_labels()[:, k]
        have = ~np.isnan(t)
        if len(set(t[have].tolist())) == 2:
            out[name] = round(float(roc_auc_score(t[have], z[have, k])), 4)
    return out


def failure(records: Sequence[UnitRecord], epoch: int) -> str | None:
    bad = [f"{r.fold}: {why}" for r in records if (why := constant_output(r.oof[min(epoch, len(r.oof) - 1)]))]
    return "; ".join(bad) or None


def finish_arm(ctx: Context, arm: Arm, records: Sequence[UnitRecord], arm_dir: Path) -> ArmResult:
    """Choose the arm's epoch budget from its pooled OOF loss curve; prune other epochs' weights."""
    pos = {r: k for k, r in enumerate(ctx.dev)}
    n_epochs = min(len(r.oof) for r in records)
    pw = float((len(ctx.y) - ctx.y.sum()) / ctx.y.sum())
    curve = []
    for e in range(n_epochs):
        z = pooled(records, pos, len(ctx.dev), e)
        curve.append({"epoch": e, "oof_loss": weighted_log_loss(ctx.y, z, pw),
                      "oof_calibrated_loss": calibrated_log_loss(ctx.y, z),
                      "oof_auc": float(roc_auc_score(ctx.y, z)),
                      "train_loss": float(np.mean([r.train_loss[min(e, len(r.train_loss) - 1)] for r in records]))})
    lo = min(ctx.cfg.tune.min_epochs, n_epochs - 1) if arm.fine_tunes else 0
    key = "oof_calibrated_loss" if ctx.cfg.tune.epoch_criterion == "calibrated-loss" else "oof_loss"
    # Epochs at which a fold model fails are not candidates (unless every epoch fails).
    ok = [e for e in range(lo, n_epochs) if failure(records, e) is None] or list(range(lo, n_epochs))
    epoch = min(ok, key=lambda e: (round(curve[e][key], 10), e))
    for rec in records:  # keep only the chosen epoch's weights
        unit = arm_dir / rec.fold
        for f in unit.glob("epoch-*.pt"):
            if f.name != f"epoch-{epoch}.pt":
                f.unlink()
        (unit / artefacts.UNIT_STATE).unlink(missing_ok=True)
    repeats = by_repeat(ctx, records, epoch)
    result = ArmResult(arm, epoch, pooled(records, pos, len(ctx.dev), epoch), curve,
                       Cost.of(records), [r.fold for r in records],
                       _aux_auc(ctx, records, epoch) if arm.aux else {}, failure(records, epoch),
                       {r.fold: fold_aucs(ctx, r, pos) for r in records}, repeats)
    if result.failed:
        logger.warning("arm %s FAILED: %s; it gets no AUC and cannot be chosen", arm.name, result.failed)
    result.write(arm_dir / artefacts.ARM_RESULT, ctx.cfg)
    return result


def by_repeat(ctx: Context, records: Sequence[UnitRecord], epoch: int) -> dict[int, np.ndarray]:
    """Each repeat's pooled OOF logits at ``epoch``: repeat -> (n_dev,)."""
    pos = {r: k for k, r in enumerate(ctx.dev)}
    reps: dict[int, list[UnitRecord]] = {}
    for rec in records:
        reps.setdefault(repeat_of(rec.fold), []).append(rec)
    return {r: pooled(v, pos, len(ctx.dev), epoch) for r, v in sorted(reps.items())}


