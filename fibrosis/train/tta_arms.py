"""`fibrosis tune` with ``tune.tta``: every arm gets a test-time-augmentation twin, ``<arm>+tta``.

TTA needs no training: once an arm's folds are done and its epoch budget chosen
(fibrosis.train.tune.finish_arm), each fold's model at that budget predicts its own
held-out images with TTA (fibrosis.model.tta,
``DEFAULT_VARIANTS``), and those logits are pooled exactly as the arm's own. The twin then
competes in model selection like any arm: same depth, ranked just after the arm without TTA
by the one-SE rule (fibrosis.evaluate.selection), so TTA is chosen only when the data show
a gain the plain arm cannot match within one standard error.

Cost: the views differ from the image only before the network, so the frozen prefix of the
arms that share a backbone runs once over every view of every development image
(``ViewActivations``, like the tune loop's own cache: kept in memory up to ``tune.cache_mb``,
else recomputed per batch), and each twin runs only its arm's trained suffix on them. The
head-only twin is then free: the probe is linear, so the mean of its logits over the views
is its logit of the mean view features.

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
import torch

from fibrosis.config import TTA_ARM_SUFFIX
from fibrosis.data.cache import CacheReader
from fibrosis.model.net import FibrosisNet
from fibrosis.model.tta import TTA, DEFAULT_VARIANTS, Variant, black, describe, from_record, to_record
from fibrosis.train.folds import Fold
from fibrosis.train.stages import Suffix, forward_range
from fibrosis.train.tune import (Activations, Arm, ArmResult, Context, _load, _member, _pooled, _probe_from,
                                 _write_json, base_model)

logger = logging.getLogger(__name__)

BATCH = 32  # development images per suffix forward; each brings len(variants) views


@dataclass
class TwinResult(ArmResult):
    """An arm's TTA twin: the same fold models and epoch, logits averaged over ``variants``."""

    base: str = ""  # name of the arm without TTA
    variants: tuple[Variant, ...] = ()
    # The twin's own passes (the first twin of a backbone also pays for the views' frozen
    # prefix); ``seconds`` adds the arm's own training.
    tta_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "describe": f"{self.arm.describe()}, + test-time augmentation "
                                                 f"({describe(self.variants)})",
                "tta": True, "base_arm": self.base, "tta_variants": to_record(self.variants),
                "tta_seconds": round(self.tta_seconds, 1)}


def twin_name(arm_name: str) -> str:
    return arm_name + TTA_ARM_SUFFIX


class ViewActivations(Activations):
    """:class:`~fibrosis.train.tune.Activations` of every TTA view of the development rows:
    row ``p``'s views sit at ``p * V .. p * V + V - 1``."""

    def __init__(self, model: FibrosisNet, reader: CacheReader, dev: Sequence[int], starts: Sequence[int],
                 cache_mb: int, variants: Sequence[Variant]):
        self.tta = TTA(variants, black(model.preprocessing))
        self.n_views = len(self.tta.variants)
        # V views per row: the same memory rule as the plain activations, on V times the data.
        super().__init__(model, reader, dev, starts, cache_mb // self.n_views)
        self.mean_features = self.features.reshape(len(self.dev), self.n_views, -1).mean(1)

    def _images(self, rows: Sequence[int]):
        v = self.n_views
        for x in super()._images(rows):
            views = self.tta.warp(x)  # variant-major (V * B); regrouped row-major
            yield views.reshape(v, len(x), *x.shape[1:]).transpose(0, 1).reshape(v * len(x), *x.shape[1:])

    def views(self, start: int, positions: Sequence[int]) -> torch.Tensor:
        """Inputs of group ``start`` for every view of development positions ``positions``."""
        if self.keep:
            return self.at[start][[p * self.n_views + k for p in positions for k in range(self.n_views)]]
        x = torch.cat(list(self._images([self.dev[p] for p in positions])))
        with torch.no_grad():
            return forward_range(self.model, x, 0, start)


def view_activations(ctx: Context, arm: Arm, arms: Sequence[Arm], reader: CacheReader,
                     variants: tuple[Variant, ...]) -> ViewActivations:
    """The views' frozen-prefix activations for the arm's backbone, built once per backbone."""
    key = (arm.base_key, variants)
    if key not in ctx.views:
        model, base_state = ctx.bases[arm.base_key]
        model.load_state_dict(base_state)  # units fine-tune the shared model in place: the prefix as built
        starts = [a.start for a in arms if a.base_key == arm.base_key and a.groups]
        t0 = time.perf_counter()
        ctx.views[key] = ViewActivations(model, reader, ctx.dev, starts, ctx.cfg.tune.cache_mb, variants)
        logger.info("%s @ %d px: frozen prefix of %d TTA views of %d development images in %.1f s", arm.arch,
                    arm.input_size, len(variants), len(ctx.dev), time.perf_counter() - t0)
    return ctx.views[key]


def _fold_logits(ctx: Context, arm: Arm, acts: ViewActivations, unit_dir: Path, epoch: int,
                 positions: Sequence[int]) -> np.ndarray:
    """TTA logits of one fold's model for development ``positions``: mean over the views."""
    if not arm.groups:  # linear probe: the mean logit is the logit of the mean features
        return _probe_from(_load(unit_dir / "probe.pt")).logits(acts.mean_features[list(positions)])
    member = _member(ctx, arm, unit_dir, epoch)
    step, v = Suffix(member, arm.start), acts.n_views
    out = []
    with torch.inference_mode():
        for k in range(0, len(positions), BATCH):
            z = step(acts.views(arm.start, positions[k:k + BATCH])).float()
            out.append(z.reshape(-1, v).mean(1))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def tta_twin(ctx: Context, res: ArmResult, folds: Sequence[Fold], reader: CacheReader, out_dir: Path,
             arms: Sequence[Arm] = (), variants: Sequence[Variant] = DEFAULT_VARIANTS) -> TwinResult:
    """The TTA twin of the finished arm ``res`` (computed, or read back from ``OUT/cv/<arm>+tta``).
    ``arms``: all arms of the run (their frozen prefixes share the views' activations)."""
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
    pos = {r: k for k, r in enumerate(ctx.dev)}
    for fold in folds:
        path = twin_dir / f"{fold.name}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
        else:
            t0 = time.perf_counter()
            acts = view_activations(ctx, arm, list(arms) or [arm], reader, variants)
            z = _fold_logits(ctx, arm, acts, arm_dir / fold.name, res.epoch, [pos[r] for r in fold.heldout])
            rec = {"fold": fold.name, "heldout": list(fold.heldout), "oof": [z.tolist()],
                   "seconds": round(time.perf_counter() - t0, 2)}
            _write_json(path, rec)
        records.append(rec)
        tta_s += float(rec["seconds"])
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
