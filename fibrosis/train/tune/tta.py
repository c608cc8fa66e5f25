"""`fibrosis tune` with ``tune.tta``: every arm gets a test-time-augmentation twin, ``<arm>+tta``.

TTA needs no training: once an arm's folds are done and its epoch budget chosen
(fibrosis.train.tune.cv.finish_arm), each fold's model at that budget predicts its own
held-out images with TTA (fibrosis.model.tta, ``DEFAULT_VARIANTS``), and those logits are
pooled exactly as the arm's own. The twin then competes in model selection like any arm:
same depth, ranked just after the arm without TTA by the one-SE rule, and kept over its arm
only if its gain replicates (fibrosis.evaluate.selection).

Cost: the views differ from the image only before the network, so the frozen prefix of the
arms that share a backbone runs once over every view of every development image
(``ViewActivations``: kept in memory up to ``tune.cache_mb``, else recomputed per batch), and
each twin runs only its arm's trained suffix on them. The head-only twins are then free: a
probe is linear, so the mean of its logits over the views is its logit of the mean view
features. A recipe-train arm's fold models run their whole network with TTA.

Resumable: each fold's TTA logits go to ``OUT/cv/<arm>+tta/<fold>.json`` (files, not unit
folders: nothing here trains), the pooled result to ``OUT/cv/<arm>+tta/arm.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fibrosis import artefacts
from fibrosis.config import TTA_ARM_SUFFIX, Config
from fibrosis.data.cache import CacheReader
from fibrosis.model.inference import predict_rows
from fibrosis.model.net import FibrosisNet
from fibrosis.model.tta import DEFAULT_VARIANTS, TTA, TTARecord, Variant, black, describe
from fibrosis.train.folds import Fold
from fibrosis.train.stages import Suffix
from fibrosis.train.tune.activations import Activations
from fibrosis.train.tune.arms import Arm
from fibrosis.train.tune.context import SCHEMA, Clock, Context, Cost, UnitRecord, load_tensors, probe_from, write_json
from fibrosis.train.tune.results import ArmResult, by_repeat, constant_output, fold_aucs, pooled
from fibrosis.train.tune.models import base_model, member

logger = logging.getLogger(__name__)

BATCH = 32  # development images per suffix forward; each brings len(variants) views


@dataclass
class TwinResult(ArmResult):
    """An arm's TTA twin: the same fold models and epoch, logits averaged over ``variants``."""

    base: str = ""  # name of the arm without TTA
    variants: tuple[Variant, ...] = ()
    # The twin's own passes (the first twin of a backbone also pays for the views' frozen
    # prefix); ``cost`` adds the arm's own training.
    tta_cost: Cost = Cost()

    def to_dict(self, cfg: Config) -> dict[str, Any]:
        return {**super().to_dict(cfg), "describe": f"{self.arm.describe(cfg)}, + test-time augmentation "
                                                    f"({describe(self.variants)})",
                "tta": True, "base_arm": self.base, "tta_variants": TTARecord(self.variants).to_json(),
                "tta_seconds": round(self.tta_cost.wall, 1), "tta_cost": dataclasses.asdict(self.tta_cost)}

    def write(self, path: Path, cfg: Config) -> None:
        write_json(path, {"schema": SCHEMA, **self.to_dict(cfg), "oof": self.oof.tolist(),
                          "fold_auc": self.fold_auc,
                          "by_repeat": {str(r): z.tolist() for r, z in self.by_repeat.items()}})


def twin_name(arm_name: str) -> str:
    return arm_name + TTA_ARM_SUFFIX


class ViewActivations(Activations):
    """:class:`~fibrosis.train.tune.activations.Activations` of every TTA view of the development
    rows: row ``p``'s views sit at ``p * V .. p * V + V - 1``."""

    def __init__(self, model: FibrosisNet, reader: CacheReader, dev: Sequence[int], starts: Sequence[int],
                 cache_mb: int, variants: Sequence[Variant], channels_last: bool = False):
        self.tta = TTA(variants, black(model.preprocessing))
        self.n_views = len(self.tta.variants)
        # V views per row: the same memory rule as the plain activations, on V times the data.
        super().__init__(model, reader, dev, starts, cache_mb // self.n_views, channels_last=channels_last)
        self.mean_features = self.features.reshape(len(self.dev), self.n_views, -1).mean(1)

    def _images(self, rows: Sequence[int], epoch: int | None) -> Iterator[torch.Tensor]:
        v = self.n_views
        for x in super()._images(rows, epoch):
            views = self.tta.warp(x.contiguous())  # variant-major (V * B); regrouped row-major
            views = views.reshape(v, len(x), *x.shape[1:]).transpose(0, 1).reshape(v * len(x), *x.shape[1:])
            yield views.contiguous(memory_format=self.fmt)

    def views(self, start: int, positions: Sequence[int]) -> torch.Tensor:
        """Inputs of group ``start`` for every view of development positions ``positions``."""
        if self.keep:
            return self.at[start][[p * self.n_views + k for p in positions for k in range(self.n_views)]]
        return self._prefix([self.dev[p] for p in positions], None, start)


def view_activations(ctx: Context, arm: Arm, arms: Sequence[Arm], reader: CacheReader,
                     variants: tuple[Variant, ...]) -> ViewActivations:
    """The views' frozen-prefix activations for the arm's backbone, built once per backbone."""
    key = (arm.base_key, variants)
    if key not in ctx.views:
        model = base_model(ctx, arm, reader)
        model.load_state_dict(ctx.bases[arm.base_key][1])  # units fine-tune the shared model in place
        starts = [a.start for a in arms if a.base_key == arm.base_key and a.fine_tunes]
        t0 = time.perf_counter()
        ctx.views[key] = ViewActivations(model, reader, ctx.dev, starts, ctx.cfg.tune.cache_mb, variants,
                                         ctx.cfg.train.channels_last)
        logger.info("%s @ %d px: frozen prefix of %d TTA views of %d development images in %.1f s", arm.arch,
                    arm.input_size, len(variants), len(ctx.dev), time.perf_counter() - t0)
    return ctx.views[key]


def _fold_logits(ctx: Context, arm: Arm, reader: CacheReader, arms: Sequence[Arm], variants: tuple[Variant, ...],
                 unit_dir: Path, epoch: int, fold: Fold) -> np.ndarray:
    """TTA logits of one fold's model for its held-out rows: mean over the views."""
    if arm.recipe == "train":  # a whole `fibrosis train` model: TTA in its own forward
        model = member(ctx, arm, unit_dir, epoch).set_tta(variants)
        return predict_rows(model, reader, list(fold.heldout), BATCH, ctx.device, amp=False).astype(np.float64)
    acts = view_activations(ctx, arm, arms, reader, variants)
    positions = [acts.pos[r] for r in fold.heldout]
    if not arm.fine_tunes:  # linear probe: the mean logit is the logit of the mean features
        return probe_from(load_tensors(unit_dir / artefacts.PROBE)).logits(acts.mean_features[positions])
    step, v = Suffix(member(ctx, arm, unit_dir, epoch), arm.start), acts.n_views
    out = []
    with torch.inference_mode():
        for k in range(0, len(positions), BATCH):
            z = step(acts.views(arm.start, positions[k:k + BATCH])).float()
            out.append(z.reshape(-1, v).mean(1))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _twin_records(ctx: Context, arm: Arm, epoch: int, folds: Sequence[Fold], reader: CacheReader, out_dir: Path,
                  arms: Sequence[Arm], variants: tuple[Variant, ...]) -> tuple[list[UnitRecord], Cost]:
    """Per fold, the twin's held-out logits (read back from ``<fold>.json`` when there)."""
    twin_dir = out_dir / "cv" / twin_name(arm.name)
    twin_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for fold in folds:
        path = twin_dir / f"{fold.name}.json"
        if path.is_file():
            rec = UnitRecord.read(path)
        else:
            clock = Clock()
            z = _fold_logits(ctx, arm, reader, arms, variants, out_dir / "cv" / arm.name / fold.name, epoch, fold)
            rec = UnitRecord(twin_name(arm.name), fold.name, list(fold.heldout), [z.tolist()], [],
                             round(clock.wall_s(), 2), round(clock.cpu_s(), 2))
            rec.write(path)
        records.append(rec)
    return records, Cost.of(records)


def tta_twin(ctx: Context, res: ArmResult, folds: Sequence[Fold], reader: CacheReader, out_dir: Path,
             arms: Sequence[Arm] = (), variants: Sequence[Variant] = DEFAULT_VARIANTS) -> TwinResult:
    """The TTA twin of the finished arm ``res`` (computed, or read back from ``OUT/cv/<arm>+tta``).
    ``arms``: all arms of the run (their frozen prefixes share the views' activations)."""
    arm = res.arm
    twin_arm = dataclasses.replace(arm, cfg=dataclasses.replace(arm.cfg, name=twin_name(arm.name)))
    summary = out_dir / "cv" / twin_arm.name / artefacts.ARM_RESULT
    if summary.is_file():
        d = json.loads(summary.read_text())
        base = ArmResult.read(twin_arm, summary)
        return TwinResult(**{f.name: getattr(base, f.name) for f in dataclasses.fields(ArmResult)},
                          base=arm.name, variants=TTARecord.from_json(d["tta_variants"], str(summary)).variants,
                          tta_cost=Cost(**d["tta_cost"]))
    records, tta = _twin_records(ctx, arm, res.epoch, folds, reader, out_dir, list(arms) or [arm], tuple(variants))
    pos = {r: k for k, r in enumerate(ctx.dev)}
    fold_auc = {r.fold: fold_aucs(ctx, r, pos) for r in records}
    failed = res.failed or "; ".join(f"{r.fold}: {w}" for r in records if (w := constant_output(r.oof[0]))) or None
    out = TwinResult(twin_arm, res.epoch, pooled(records, pos, len(ctx.dev), 0), [], res.cost + tta,
                     list(res.units), {}, failed, fold_auc, by_repeat(ctx, records, 0),
                     base=arm.name, variants=tuple(variants), tta_cost=tta)
    out.write(summary, ctx.cfg)
    return out


def twin_logits(ctx: Context, twin: TwinResult, res: ArmResult, folds: Sequence[Fold], reader: CacheReader,
                out_dir: Path, arms: Sequence[Arm]) -> None:
    """A finalist twin's further repeats: its arm's repeat fold models, scored with TTA."""
    records, tta = _twin_records(ctx, res.arm, res.epoch, folds, reader, out_dir, arms, twin.variants)
    twin.by_repeat.update(by_repeat(ctx, records, 0))
    twin.repeat_cost = res.repeat_cost + tta
    twin.write(out_dir / "cv" / twin.name / artefacts.ARM_RESULT, ctx.cfg)


def untwin(results: Sequence[ArmResult], name: str) -> tuple[ArmResult, tuple[Variant, ...] | None]:
    """(the result of the arm that trained the models of ``name``, its TTA variants or None)."""
    res = next((r for r in results if r.arm.name == name), None)
    if res is None:
        raise ValueError(f"arm {name!r} is not among the tuned arms {[r.arm.name for r in results]}")
    if not isinstance(res, TwinResult):
        return res, None
    return next(r for r in results if r.arm.name == res.base), res.variants
