"""One (fold, arm) unit of `fibrosis tune`: its probe, its fine-tuning epochs, its held-out logits.

Recipes ``reference`` and ``lp-ft`` work on the frozen-prefix activations
(fibrosis.train.tune.activations); recipe ``train`` runs `fibrosis train` on the fold
(fibrosis.train.tune.train_unit).

Fine-tuning (LP-FT, Kumar et al. 2022) starts from the fold's linear probe and trains the head
and the unfrozen blocks together at ``tune.lr / arm.lr_ratio`` after a linear warm-up of
``tune.warmup_epochs``, then at a constant rate (so "the model after E epochs of a longer run"
is "a run of E epochs", which the refit and the finalists' repeats rely on). Each epoch draws
that epoch's augmented view of the fold's training images, as `fibrosis train` would. With
``tune.batchnorm: frozen`` every BatchNorm keeps its pretrained statistics (eval mode; the
affine weights of unfrozen blocks train): the probe was solved on features computed with those
statistics, and a batch of 16-32 images estimates them too noisily to change them under it.
After every epoch the held-out fold is predicted from the plain images, and the trainable
weights are kept; a killed unit resumes from ``state.pt`` after its last finished epoch.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from fibrosis import artefacts
from fibrosis.train.aux import AuxLoss, aux_pos_weight
from fibrosis.train.folds import Fold
from fibrosis.train.probe import Probe, fit_probe, fit_reference, weighted_log_loss
from fibrosis.train.schedule import WarmupCosine, freeze, param_groups, train_mode
from fibrosis.train.stages import Suffix
from fibrosis.model.net import FibrosisNet, set_aux_heads
from fibrosis.train.tune.activations import Activations
from fibrosis.train.tune.arms import Arm
from fibrosis.train.tune.context import Clock, Context, UnitRecord, load_tensors, probe_from, probe_record, save_tensors, unit_seed
from fibrosis.train.tune.models import set_aux_probes, set_head, trainable_keys
from fibrosis.train.tune.train_unit import run_train_unit

logger = logging.getLogger(__name__)


def probe_for(ctx: Context, arm: Arm, acts: Activations, fold: Fold, tr: Sequence[int]) -> Probe:
    """The fold's head on frozen features: the reference's or the tool's probe; arms sharing a
    backbone share it (memoised per backbone, fold and recipe)."""
    tcfg = ctx.cfg.tune
    key = (arm.base_key, fold.name, arm.recipe == "reference")
    if key not in ctx.probes:
        seed = unit_seed(ctx.cfg, fold.repeat, fold.fold)
        groups = [ctx.groups[p] for p in tr]
        if arm.recipe == "reference":
            ctx.probes[key] = fit_reference(acts.features[tr], ctx.y[tr], groups, seed)
        else:
            ctx.probes[key] = fit_probe(acts.features[tr], ctx.y[tr], groups, tcfg.probe_c, tcfg.probe_inner_folds,
                                        seed, quiet=True, criterion=tcfg.probe_criterion,
                                        standardise=tcfg.probe_standardise)  # cv.py warns once for all folds
    return ctx.probes[key]


def aux_probes(ctx: Context, acts: Activations, tr: Sequence[int], memo: tuple[Any, ...], seed: int) -> list[Probe]:
    """One linear probe per auxiliary finding on the fold's training rows that carry its label,
    each with its own C by the same grouped inner CV as the fibrosis probe (borrowing the fibrosis
    probe's C left the aux heads near zero: almost no gradient reached the backbone)."""
    key = (*memo, "aux")
    if key not in ctx.probes:
        tcfg = ctx.cfg.tune
        out = []
        for k in range(len(ctx.aux_names)):
            aux_y = ctx.aux_labels()
            have = [p for p in tr if not np.isnan(aux_y[p, k])]
            yk = aux_y[have, k].astype(int)
            if len(set(yk.tolist())) < 2:  # one class (or none) in this fold: the head starts at zero
                out.append(Probe(np.zeros(acts.features.shape[1]), 0.0, 0.0, {}))
                continue
            out.append(fit_probe(acts.features[have], yk, [ctx.groups[p] for p in have], tcfg.probe_c,
                                 tcfg.probe_inner_folds, seed=seed, quiet=True, criterion=tcfg.probe_criterion,
                                 standardise=tcfg.probe_standardise))
        ctx.probes[key] = out
    return ctx.probes[key]


# Without an epoch limit a unit runs to its end: a record, never None.
@overload
def run_unit(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path, *, epoch_limit: None = None) -> UnitRecord: ...


@overload
def run_unit(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path, *, epoch_limit: int) -> UnitRecord | None: ...


def run_unit(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path, *,
             epoch_limit: int | None = None) -> UnitRecord | None:
    """Train one (fold, arm) unit (resuming from ``unit_dir``); returns its record.

    ``fold.heldout`` may be empty (the refit on all development data): then nothing is
    predicted out of fold. ``epoch_limit``: stop after that many epochs in this call
    (returns None; the next call resumes from the saved epoch).
    """
    if (unit_dir / artefacts.UNIT_DONE).is_file():
        return UnitRecord.read(unit_dir / artefacts.UNIT_DONE)
    unit_dir.mkdir(parents=True, exist_ok=True)
    if arm.recipe == "train":
        return run_train_unit(ctx, arm, fold, unit_dir)
    clock = Clock()
    acts = ctx.acts[arm.base_key]
    tr = [acts.pos[i] for i in fold.train]
    ho = [acts.pos[i] for i in fold.heldout]
    y_tr = ctx.y[tr]
    path = unit_dir / artefacts.PROBE
    if path.is_file():
        probe = probe_from(load_tensors(path))
    else:
        probe = probe_for(ctx, arm, acts, fold, tr)
        save_tensors(path, probe_record(probe))
    pw = float((len(y_tr) - y_tr.sum()) / y_tr.sum())
    if arm.fine_tunes and ctx.cfg.tune.max_epochs:
        model = ctx.bases[arm.base_key][0]
        try:
            return _fine_tune(ctx, arm, fold, unit_dir, probe, tr, ho, pw, clock, epoch_limit)
        finally:
            freeze(model, ())  # leave the shared base model as found: nothing trainable in flight
            set_aux_heads(model, ())
            model.load_state_dict(ctx.bases[arm.base_key][1])
    oof = [probe.logits(acts.features[ho]).tolist()]
    train_loss = [weighted_log_loss(y_tr, probe.logits(acts.features[tr]), pw)]
    record = UnitRecord(arm.name, fold.name, list(fold.heldout), oof, train_loss, round(clock.wall_s(), 2),
                        round(clock.cpu_s(), 2), probe.c, probe_record(probe)["inner_loss"])
    record.write(unit_dir / artefacts.UNIT_DONE)
    return record


def _suffix_logits(model: FibrosisNet, acts: Activations, start: int, positions: Sequence[int], bs: int,
                   all_heads: bool) -> np.ndarray:
    """Eval-mode logits from the plain activations: (n,), or (n, 1 + K) with auxiliary heads."""
    model.eval()
    step = Suffix(model, start, all_heads=all_heads)
    out = []
    with torch.inference_mode():
        for k in range(0, len(positions), bs):
            out.append(step(acts.plain(start, positions[k:k + bs])).float())
    if not out:
        return np.zeros((0, 1) if all_heads else 0)
    return torch.cat(out).numpy().astype(np.float64)


def _view_loss(model: nn.Module, step: nn.Module, acts: Activations, arm: Arm, tr: list[int], y: np.ndarray,
               loss_fn: nn.Module, aux_loss: AuxLoss | None, aux_t: torch.Tensor | None, bs: int) -> float:
    """Mean training loss of the model as it stands on epoch 0's augmented view, in eval mode."""
    model.eval()
    y_t = torch.tensor(y, dtype=torch.float32)
    total = 0.0
    with torch.inference_mode():
        for k in range(0, len(tr), bs):
            b = list(range(k, min(k + bs, len(tr))))
            z = step(acts.augmented(arm.start, 0, [tr[j] for j in b])).float()
            loss = loss_fn(z if aux_loss is None else z[:, 0], y_t[b])
            if aux_loss is not None and aux_t is not None:  # set together
                loss = loss + aux_loss(z[:, 1:], aux_t[b])
            total += float(loss) * len(b)
    return total / max(len(tr), 1)


def _fine_tune(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path, probe: Probe, tr: list[int], ho: list[int],
               pw: float, clock: Clock, epoch_limit: int | None) -> UnitRecord | None:
    """The fine-tuning epochs of one unit (LP-FT from ``probe``), resumable from ``state.pt``."""
    tcfg = ctx.cfg.tune
    model, base_state = ctx.bases[arm.base_key]
    acts = ctx.acts[arm.base_key]
    init = dict(base_state)
    aux_loss, aux_t = None, None
    if arm.aux:
        set_aux_heads(model, ctx.aux_names)
        init.update({k: v for k, v in model.state_dict().items() if k.startswith("aux_head.")})
    model.load_state_dict(init)
    set_head(model, probe)
    if arm.aux:
        set_aux_probes(model, aux_probes(ctx, acts, tr, (arm.base_key, fold.name),
                                         unit_seed(ctx.cfg, fold.repeat, fold.fold)))
        aux_tr = ctx.aux_labels()[tr]
        aux_loss = AuxLoss(arm.cfg.aux_weight, torch.from_numpy(aux_pos_weight(aux_tr)))
        aux_t = torch.from_numpy(aux_tr)
    freeze(model, arm.groups)
    keys = trainable_keys(model, arm.groups)
    lr = tcfg.lr / arm.cfg.lr_ratio
    opt = torch.optim.AdamW(param_groups(model, lr, tcfg.weight_decay))
    steps = -(-len(tr) // tcfg.batch_size)
    # min_factor 1: linear warm-up, then constant (see the module docstring)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(round(tcfg.warmup_epochs * steps), 1, 1.0))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw))
    step = Suffix(model, arm.start, all_heads=arm.aux)
    bs = 2 * tcfg.batch_size

    def held_out() -> tuple[list[float], list[list[float]]]:
        z = _suffix_logits(model, acts, arm.start, ho, bs, arm.aux)
        return (z[:, 0].tolist(), z[:, 1:].tolist()) if arm.aux else (z.tolist(), [])

    first, seconds, cpu = 0, 0.0, 0.0  # over the epochs of earlier invocations (resume)
    state_path = unit_dir / artefacts.UNIT_STATE
    if state_path.is_file():
        st = load_tensors(state_path)
        model.load_state_dict({**model.state_dict(), **st["trainable"]})
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        first, oof, train_loss, aux_oof = st["epoch"], st["oof"], st["train_loss"], st["aux_oof"]
        seconds, cpu = st["seconds"], st["cpu_seconds"]
        logger.info("%s %s: resuming after epoch %d", arm.name, fold.name, first)
    else:
        # Epoch 0 is the probe, predicted through the same network path as every later epoch:
        # at learning rate 0 every epoch reproduces it exactly.
        z0, a0 = held_out()
        oof, aux_oof = [z0], ([a0] if arm.aux else [])
        # Its training loss on what the first epoch trains on (epoch 0's augmented view), so
        # train_loss[1] / train_loss[0] says whether fine-tuning worsens the fit it starts from.
        train_loss = [_view_loss(model, step, acts, arm, tr, ctx.y[tr], loss_fn, aux_loss, aux_t, bs)]
    y_t = torch.tensor(ctx.y[tr], dtype=torch.float32)
    for e in range(first, tcfg.max_epochs):
        if epoch_limit is not None and e - first >= epoch_limit:
            return None
        train_mode(model, tcfg.batchnorm)
        gen = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + fold.repeat * 10_007 + (fold.fold + 1) * 101 + e)
        perm = torch.randperm(len(tr), generator=gen).tolist()
        total, n = 0.0, 0
        for k in range(0, len(perm), tcfg.batch_size):
            b = perm[k:k + tcfg.batch_size]
            if tcfg.batchnorm == "batch" and len(b) < 2:  # batch statistics need two values per channel
                continue
            z = step(acts.augmented(arm.start, e, [tr[j] for j in b])).float()
            loss = loss_fn(z if aux_loss is None else z[:, 0], y_t[b])
            if aux_loss is not None and aux_t is not None:  # set together
                loss = loss + aux_loss(z[:, 1:], aux_t[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()) * len(b), n + len(b)
        train_loss.append(total / max(n, 1))
        z, a = held_out()
        oof.append(z)
        if arm.aux:
            aux_oof.append(a)
        sd = model.state_dict()
        trainable = {k: sd[k].clone() for k in keys}
        save_tensors(unit_dir / f"epoch-{e + 1}.pt", trainable)
        save_tensors(state_path, {"trainable": trainable, "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "epoch": e + 1, "oof": oof,
                                  "train_loss": train_loss, "seconds": seconds + clock.wall_s(),
                                  "cpu_seconds": cpu + clock.cpu_s(), "aux_oof": aux_oof})
    record = UnitRecord(arm.name, fold.name, list(fold.heldout), oof, train_loss, round(seconds + clock.wall_s(), 2),
                        round(cpu + clock.cpu_s(), 2), probe.c, probe_record(probe)["inner_loss"], aux_oof)
    record.write(unit_dir / artefacts.UNIT_DONE)
    return record
