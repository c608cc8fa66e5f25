"""`fibrosis tune` with ``tune.tta``: every arm gets a test-time-augmentation twin, ``<arm>+tta``.

TTA needs no training, so the twin costs one pass over the development images: once an arm's
folds are done and its epoch budget chosen (fibrosis.train.tune.finish_arm), each fold's
model at that budget predicts its own held-out images with TTA (fibrosis.model.tta,
``DEFAULT_VARIANTS``), and those logits are pooled exactly as the arm's own. The twin then
competes in model selection like any arm: same depth, ranked just after the arm without TTA
by the one-SE rule (fibrosis.evaluate.selection), so TTA is chosen only when the data show
a gain the plain arm cannot match within one standard error.

Why the full network and not the tune loop's cached frozen prefix: the prefix activations
are of the un-augmented images; every view needs its own pass from the pixels.

Resumable: each fold's TTA logits go to ``OUT/cv/<arm>+tta/<fold>.json`` (files, not unit
folders: nothing here trains), the pooled result to ``OUT/cv/<arm>+tta/arm.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis.config import TTA_ARM_SUFFIX
from fibrosis.data.cache import CacheReader
from fibrosis.model.inference import predict_rows
from fibrosis.model.tta import DEFAULT_VARIANTS, Variant, describe, from_record, to_record
from fibrosis.train.folds import Fold
from fibrosis.train.tune import ArmResult, Context, _member, _pooled, _write_json, base_model

logger = logging.getLogger(__name__)

BATCH = 64  # images per forward; each holds len(variants) views


@dataclass
class TwinResult(ArmResult):
    """An arm's TTA twin: the same fold models and epoch, logits averaged over ``variants``."""

    base: str = ""  # name of the arm without TTA
    variants: tuple[Variant, ...] = ()
    tta_seconds: float = 0.0  # the TTA pass alone (``seconds`` adds the arm's own training)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "describe": f"{self.arm.describe()}, + test-time augmentation "
                                                 f"({describe(self.variants)})",
                "tta": True, "base_arm": self.base, "tta_variants": to_record(self.variants),
                "tta_seconds": round(self.tta_seconds, 1)}


def twin_name(arm_name: str) -> str:
    return arm_name + TTA_ARM_SUFFIX


def tta_twin(ctx: Context, res: ArmResult, folds: Sequence[Fold], reader: CacheReader, out_dir: Path,
             variants: Sequence[Variant] = DEFAULT_VARIANTS) -> TwinResult:
    """The TTA twin of the finished arm ``res`` (computed, or read back from ``OUT/cv/<arm>+tta``)."""
    arm = res.arm
    twin_arm = dataclasses.replace(arm, cfg=dataclasses.replace(arm.cfg, name=twin_name(arm.name)))
    twin_dir = out_dir / "cv" / twin_arm.name
    summary = twin_dir / "arm.json"
    variants = tuple(variants)

    def result(oof: Any, tta_s: float, vs: tuple[Variant, ...]) -> TwinResult:
        return TwinResult(twin_arm, res.epoch, oof, [], res.seconds + tta_s, list(res.units),
                          base=arm.name, variants=vs, tta_seconds=tta_s)

    if summary.is_file():
        d = json.loads(summary.read_text())
        return result(np.asarray(d["oof"], float), float(d["tta_seconds"]),
                      from_record(d["tta_variants"], str(summary)) or ())
    base_model(ctx, arm)  # the arm's backbone (a resumed run may not have built it yet)
    twin_dir.mkdir(parents=True, exist_ok=True)
    records, tta_s = [], 0.0
    arm_dir = out_dir / "cv" / arm.name
    for fold in folds:
        path = twin_dir / f"{fold.name}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
        else:
            t0 = time.perf_counter()
            member = _member(ctx, arm, arm_dir / fold.name, res.epoch).set_tta(variants)
            # fp32 like the arm's own OOF logits, so the paired test compares TTA and nothing else
            z = predict_rows(member, reader, list(fold.heldout), BATCH, ctx.device, amp=False)
            rec = {"fold": fold.name, "heldout": list(fold.heldout), "oof": [z.astype(float).tolist()],
                   "seconds": round(time.perf_counter() - t0, 2)}
            _write_json(path, rec)
        records.append(rec)
        tta_s += float(rec["seconds"])
    pos = {r: k for k, r in enumerate(ctx.dev)}
    out = result(_pooled(records, pos, len(ctx.dev), 0), tta_s, variants)
    _write_json(summary, {**out.to_dict(), "oof": out.oof.tolist()})
    return out


def untwin(results: Sequence[ArmResult], name: str) -> tuple[ArmResult, tuple[Variant, ...] | None]:
    """(the result of the arm that trained the models of ``name``, its TTA variants or None)."""
    res = next((r for r in results if r.arm.name == name), None)
    if res is None:
        raise ValueError(f"arm {name!r} is not among the tuned arms {[r.arm.name for r in results]}")
    if not isinstance(res, TwinResult):
        return res, None
    return next(r for r in results if r.arm.name == res.base), res.variants
