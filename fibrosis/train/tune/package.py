"""The model `fibrosis tune` leaves behind: ``OUT/best.pt``, a checkpoint like `fibrosis train`'s.

``tune.final: ensemble``: the chosen arm's fold models of the first ``tune.repeats`` repeats
as one mean-logit ensemble (fibrosis.model.ensemble); ``refit``: one model trained on all
development data with the same recipe and budget. A "+tta" twin is its arm's models with
test-time augmentation switched on.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from fibrosis import artefacts
from fibrosis.config import Config, config_to_dict
from fibrosis.data.cache import CacheReader, manifest_hash
from fibrosis.data.manifest import ManifestRow
from fibrosis.io import package_versions
from fibrosis.model.checkpoint import (Checkpoint, EnsembleRecord, TuneProvenance, load_checkpoint,
                                       save_checkpoint)
from fibrosis.model.ensemble import EnsembleNet
from fibrosis.model.net import FibrosisNet
from fibrosis.model.tta import describe as tta_describe
from fibrosis.model.tta import TTARecord
from fibrosis.train.aux import aux_record
from fibrosis.train.folds import Fold
from fibrosis.train.loop import cache_ingest_config, train
from fibrosis.train.tune.cv import CVResult, setup
from fibrosis.train.tune.models import TRAIN_RUN, arm_config, base_model, member, prepare_base
from fibrosis.train.tune.tta import untwin
from fibrosis.train.tune.unit import run_unit
from fibrosis.words import plural

logger = logging.getLogger(__name__)


def _keys(rows: Sequence[ManifestRow], idx: Sequence[int]) -> dict[str, list[str]]:
    return {"patients": sorted({rows[i].patient_key for i in idx}),
            "images": sorted({rows[i].content_hash for i in idx})}


def package(cfg: Config, cache_dir: str | Path, out_dir: str | Path, cv: CVResult, chosen: str, *,
            device: str = "cpu") -> Path:
    """Write ``OUT/best.pt`` for arm ``chosen`` (see the module docstring)."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    if cv.ctx is not None:
        ctx, arms = cv.ctx, [r.arm for r in cv.arms]
        reader = CacheReader(cache_dir, ctx.rows)
    else:
        ctx, _, arms, reader = setup(cfg, cache_dir, out_dir, device)
    folds = [f for f in cv.folds if f.repeat < cfg.tune.repeats]
    res, tta = untwin(cv.arms, chosen)
    arm = res.arm
    if arm.recipe != "train":
        base_model(ctx, arm, reader)
    arm_dir = out_dir / "cv" / arm.name
    acfg = cache_ingest_config(arm_config(cfg, arm, tta=bool(tta)), cache_dir)
    if cfg.tune.final == "ensemble":
        members = [member(ctx, arm, arm_dir / f.name, res.epoch) for f in folds]
        model: FibrosisNet | EnsembleNet = EnsembleNet(members)
        record: EnsembleRecord | None = EnsembleRecord(len(folds), arm=arm.name, epoch=res.epoch,
                                                       folds=cfg.tune.folds, repeats=cfg.tune.repeats)
        unit0 = arm_dir / folds[0].name
    elif arm.recipe == "train":  # refit: `fibrosis train` itself, on the manifest's train/val split
        unit0 = out_dir / "refit"
        train(arm_config(cfg, arm), cache_dir, unit0 / TRAIN_RUN, resume=(unit0 / TRAIN_RUN / artefacts.LAST).is_file(),
              device=str(ctx.device))
        members = [member(ctx, arm, unit0, 0)]
        model, record = members[0], None
    else:  # refit: all development rows, the chosen budget, the same recipe
        refit_cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, max_epochs=res.epoch,
                                                                      min_epochs=min(cfg.tune.min_epochs, res.epoch)))
        ctx = dataclasses.replace(ctx, cfg=refit_cfg)
        prepare_base(ctx, arm, arms, reader)
        unit0 = out_dir / "refit"
        run_unit(ctx, arm, Fold(0, -1, tuple(ctx.dev), ()), unit0)
        members = [member(ctx, arm, unit0, res.epoch if arm.fine_tunes else 0)]
        model, record = members[0], None
    model.set_tta(tta)
    first = members[0]
    if arm.recipe == "train":
        trained = load_checkpoint(unit0 / TRAIN_RUN / artefacts.BEST)
        stages, aux = trained.stages, trained.aux
    else:
        stages = [{"name": "linear probe", "epochs": 0, "lr": None, "unfreeze": []}] + (
            [{"name": "finetune", "epochs": res.epoch, "lr": cfg.tune.lr / arm.cfg.lr_ratio,
              "unfreeze": list(arm.groups)}] if arm.fine_tunes else [])
        aux = (dataclasses.replace(
            aux_record(ctx.aux_names, arm.cfg.aux_weight, ctx.aux_labels(), ctx.aux_dropped,
                       cfg.train.aux_min_positives), oof_auc=res.aux_auc) if arm.aux else None)
    what = (f"{len(folds)} fold models, mean logit" if record else "refit on all development data")
    if arm.recipe != "train":  # `fibrosis train` chose its own best epoch on its validation part
        what = f"{plural(res.epoch, 'fine-tuning epoch')}, {what}"
    ckpt = Checkpoint(
        weights=model.state_dict(), config=config_to_dict(acfg), arch=arm.arch, preprocessing=first.preprocessing,
        weights_info=dict(first.weights_info), pretrained=bool(first.pretrained) and arm.cfg.init == "pretrained",
        manifest_hash=manifest_hash(cache_dir), world_size=1, tta=TTARecord.of(tta),
        # Every development patient trained some member (or the refit), so all count as
        # "train" for evaluate's held-out checks; val is folded into the folds.
        split_keys={"train": _keys(ctx.rows, ctx.dev), "val": {"patients": [], "images": []}},
        preset=f"tune: arm {chosen!r} ({arm.describe(cfg)}), {what}"
               + (f", test-time augmentation ({tta_describe(tta)})" if tta else ""),
        stages=stages, best_epoch=res.epoch, versions=package_versions(),
        tune=TuneProvenance(chosen, res.epoch, cfg.tune.final), ensemble=record, aux=aux)
    path = save_checkpoint(out_dir / artefacts.BEST, ckpt)
    logger.info("%s -> %s", ckpt.preset, path)
    return path
