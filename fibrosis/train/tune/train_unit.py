"""A recipe-train unit: `fibrosis train` itself, run on one fold.

The fold's training rows are cut into train and validation as `fibrosis split` cuts the
development data (patient-level, stratified, ``split.val / (split.train + split.val)`` held
for validation), then :func:`fibrosis.train.loop.train` runs unchanged: its preset's stages,
augmentation, BatchNorm handling, early stopping and best-epoch choice on that validation part.
Its best checkpoint predicts the held-out fold. So the arm is the model a team gets from
`fibrosis train`, measured on the same folds as the other arms. Resumable through `train`'s
own ``--resume``.
"""
from __future__ import annotations

from pathlib import Path

from fibrosis import artefacts
from fibrosis.data.cache import CacheReader
from fibrosis.model.checkpoint import load_checkpoint, load_model
from fibrosis.model.inference import predict_rows
from fibrosis.train.folds import Fold, inner_validation, near_duplicate_links
from fibrosis.train.loop import train
from fibrosis.train.runlog import console_warnings_only
from fibrosis.train.tune.arms import Arm
from fibrosis.train.tune.context import Clock, Context, UnitRecord
from fibrosis.train.tune.models import TRAIN_RUN, arm_config


def run_train_unit(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path) -> UnitRecord:
    clock = Clock()
    cfg = arm_config(ctx.cfg, arm)
    s = cfg.split
    fraction = s.val / (s.train + s.val) if s.train + s.val > 0 else 0.25
    tr, val = inner_validation(ctx.rows, fold.train, fraction, cfg.tune.seed + 7919 * fold.repeat + fold.fold,
                               near_duplicate_links(ctx.cache_dir))
    run = unit_dir / TRAIN_RUN
    with console_warnings_only("fibrosis.train."):
        best = train(cfg, ctx.cache_dir, run, resume=(run / artefacts.LAST).is_file(), rows=(tr, val),
                     device=str(ctx.device))
    model, _ = load_model(best, ctx.device)
    oof = []
    if fold.heldout:
        oof = predict_rows(model, CacheReader(ctx.cache_dir, ctx.rows), list(fold.heldout), 2 * cfg.train.batch_size,
                           ctx.device, amp=cfg.train.amp).astype(float).tolist()
    history = load_checkpoint(run / artefacts.LAST).history  # every epoch, not only up to the best
    (run / artefacts.LAST).unlink()  # only a resume needs it; best.pt is the fold model
    record = UnitRecord(arm.name, fold.name, list(fold.heldout), [oof],
                        [float(h["train_loss"]) for h in history], round(clock.wall_s(), 2), round(clock.cpu_s(), 2))
    record.write(unit_dir / artefacts.UNIT_DONE)
    return record
