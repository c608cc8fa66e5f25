"""Training: stages (freeze-then-unfreeze), early stopping on val AUC, exact resume, DDP.

Run directory: best.pt, last.pt, metrics.csv + metrics.jsonl, config.yaml, train.log.

Exact resume: the checkpoint written after every epoch holds the weights, the optimizer
and scheduler of the current stage, the position (stage, epoch in stage, stage done),
every rank's RNG states and the history. Shuffling and augmentation are seeded by
(seed, epoch) rather than by a running stream, so ``train k epochs + --resume`` gives
the same weights as an uninterrupted run, across the unfreeze too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from fibrosis import artefacts
from fibrosis.model import distributed
from fibrosis.train import runlog
from fibrosis.train.aux import AllHeads, AuxLoss, HeadsOnFeatures, aux_record, aux_targets, choose_aux, describe
from fibrosis.data.cache import CacheReader, manifest_hash
from fibrosis.model.checkpoint import (AuxRecord, Checkpoint, Training, load_checkpoint, rng_state, save_checkpoint,
                                       set_rng_state)
from fibrosis.config import Config, StageConfig, config_from_dict, config_to_dict
from fibrosis.data.dataset import (CacheDataset, EpochSampler, Sample, build_augment, pos_weight, row_label,
                              steps_per_epoch)
from fibrosis.train.schedule import backbone_frozen, freeze, make_optimizer, resolve_stages
from fibrosis.model.net import FibrosisNet, build_model_from_config, set_aux_heads
from fibrosis.model.tta import TTARecord, variants_of
from fibrosis.io import package_versions
from fibrosis.model.inference import autocast, extract_features, predict_rows, split_rows
from fibrosis.words import plural

logger = logging.getLogger(__name__)

# Settings that may change between a run and its resume without changing the result.
RUNTIME_KEYS = {"num_workers", "compile", "mlflow_uri", "val_batch_size"}


@dataclass
class RunState:
    """Where a run stands; stored in the checkpoint as a plain dict."""

    stage: int = 0
    epoch_in_stage: int = 0  # epochs completed in `stage`
    stage_done: bool = False  # `stage` finished (all epochs or early stop)
    epochs_done: int = 0  # over all stages: the epoch counter that seeds shuffling
    best_val_auc: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs without val-AUC gain in the current stage
    mlflow_run_id: str | None = None
    history: list[runlog.EpochRow] = field(default_factory=list)  # plain dicts in the checkpoint (asdict)


def make_loader(ds: Dataset[Sample], labels: list[float], cfg: Config, d: distributed.Dist,
                epoch: int, num_workers: int | None = None) -> DataLoader[Sample]:
    """Training loader for one epoch: sampler and worker seeds derive from (seed, epoch)."""
    tcfg = cfg.train
    sampler = EpochSampler(labels, balanced=tcfg.imbalance == "sampler", seed=tcfg.seed,
                           num_replicas=d.world, rank=d.rank)
    sampler.set_epoch(epoch)
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    workers = tcfg.num_workers if num_workers is None else num_workers
    gen = torch.Generator().manual_seed(tcfg.seed * 100_003 + epoch)  # not the global stream
    return DataLoader(ds, batch_size=tcfg.batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=d.device.type == "cuda", generator=gen,
                      persistent_workers=False)


def train_epoch(step_model: nn.Module, loader: DataLoader[Sample], opt: torch.optim.Optimizer,
                sched: Any, loss_fn: nn.Module, device: torch.device, *, amp: bool,
                channels_last: bool, desc: str = "", show: bool = False,
                aux_loss: AuxLoss | None = None) -> tuple[float, int]:
    """One pass; returns (mean loss, images seen). ``step_model`` maps a batch to (B, 1) logits,
    or (B, 1 + K) with auxiliary heads (batches then carry (x, y, aux targets))."""
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in tqdm(loader, desc=desc, disable=True if not show else None, leave=False):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = step_model(x)
        loss = loss_fn(logits.float()[:, 0], y)
        if aux_loss is not None:
            loss = loss + aux_loss(logits.float()[:, 1:], batch[2].to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.detach() * len(y)  # stays on the device: no host sync per step
        n += len(y)
    return float(total) / max(n, 1), n


def _read_splits(cache_dir: Path, given: tuple[Sequence[int], Sequence[int]] | None = None
                 ) -> tuple[CacheReader, list[int], list[int]]:
    """The manifest's train and val rows, or the ``given`` (train, val) row indices (tune's folds)."""
    rows, train_idx = split_rows(cache_dir, "train")
    _, val_idx = split_rows(cache_dir, "val")
    if given is not None:
        train_idx, val_idx = list(given[0]), list(given[1])
    where = cache_dir / artefacts.MANIFEST
    for name, idx in (("train", train_idx), ("val", val_idx)):
        pos = sum(row_label(rows[i]) for i in idx)
        if pos == 0 or pos == len(idx):
            raise ValueError(f"{where}: split {name!r} has {int(pos)} positives of {len(idx)} rows;"
                             f" both classes are needed (train to learn, val for the AUC)")
    return CacheReader(cache_dir, rows), train_idx, val_idx


def cache_ingest_config(cfg: Config, cache_dir: Path) -> Config:
    """The config with the ingest section that actually built the cache.

    The checkpoint's ingest section is what `fibrosis score` applies to new files, so it
    must be the cache's (recorded by `fibrosis ingest` in cache.json), not whatever
    config was handed to `train`.
    """
    meta_path = cache_dir / artefacts.CACHE_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    recorded = meta.get("ingest_config")
    if recorded is None:  # not written by `fibrosis ingest` (older or synthetic cache)
        logger.warning("%s records no ingest config: the checkpoint stores the ingest section "
                       "given to train, and scoring will apply it; make sure it is the one "
                       "that built the cache", meta_path)
        return cfg
    # A cache built before ingest.polarity_qa existed kept suspected inversions: say so,
    # or scoring would apply today's default (exclude) to what training saw kept.
    recorded = {"polarity_qa": "keep", **recorded}
    merged = config_from_dict({**config_to_dict(cfg), "ingest": recorded})
    if merged.ingest != cfg.ingest:
        diff = [k for k, v in config_to_dict(merged.ingest).items()
                if v != config_to_dict(cfg.ingest)[k]]
        logger.info("ingest settings taken from %s (they built the cache; scoring will apply "
                    "them): differs from the given config in %s", meta_path, diff)
    return merged


def split_keys(reader: CacheReader, idx: list[int]) -> dict[str, list[str]]:
    """Pseudonymous patient keys and content hashes of a split, sorted: stored in the
    checkpoint so `evaluate` can refuse a test set that overlaps what training saw."""
    rows = [reader.rows[i] for i in idx]
    return {"patients": sorted({r.patient_key for r in rows}),
            "images": sorted({r.content_hash for r in rows})}


def _check_resume(ckpt: Checkpoint, cfg: Config, mhash: str, path: Path, world: int) -> Training:
    """The resume state of ``ckpt``, once its config, data and process count are checked."""
    if ckpt.training is None:
        raise ValueError(f"{path}: no training state to resume from (a packaged model, not `fibrosis train`'s "
                         f"{artefacts.LAST})")
    old, new = ckpt.config, config_to_dict(cfg)
    diff = [f"{sec}.{k}: {old[sec].get(k)!r} -> {v!r}" for sec in ("model", "train")
            for k, v in new[sec].items() if k not in RUNTIME_KEYS and old[sec].get(k) != v]
    if diff:
        raise ValueError(f"{path}: config differs from the run being resumed ({'; '.join(diff)});"
                         f" resume with the run's own config.yaml or start a new out_dir")
    if ckpt.manifest_hash != mhash:
        raise ValueError(f"{path}: trained on manifest sha256 {ckpt.manifest_hash[:12]}..., the "
                         f"cache now has {mhash[:12]}...; resume needs the same data")
    if len(ckpt.training.rng_per_rank) != world:
        logger.warning("resuming a %d-process run on %d processes: continues, but not bit-exact",
                       len(ckpt.training.rng_per_rank), world)
    return ckpt.training


def _features(model: FibrosisNet, reader: CacheReader, idx: list[int], cfg: Config,
              d: distributed.Dist, tta: bool = False) -> torch.Tensor:
    mine = [idx[p] for p in distributed.shard(d, len(idx))]
    f = extract_features(model, reader, mine, _val_bs(cfg), d.device, amp=cfg.train.amp,
                         num_workers=cfg.train.num_workers, channels_last=cfg.train.channels_last, tta=tta)
    return distributed.gather_sharded(d, f, len(idx))


def _val_bs(cfg: Config) -> int:
    return cfg.train.val_batch_size or 2 * cfg.train.batch_size


def _validate(model: FibrosisNet, reader: CacheReader, val_idx: list[int], val_y: torch.Tensor,
              val_feats: torch.Tensor | None, loss_fn: nn.BCEWithLogitsLoss, cfg: Config,
              d: distributed.Dist) -> tuple[float, float]:
    if val_feats is not None:
        model.eval()
        with torch.inference_mode():
            logits = model.forward_head(val_feats.to(d.device))[:, 0].float().cpu()
    else:
        mine = [val_idx[p] for p in distributed.shard(d, len(val_idx))]
        local = torch.from_numpy(predict_rows(model, reader, mine, _val_bs(cfg), d.device,
                                              amp=cfg.train.amp, channels_last=cfg.train.channels_last))
        logits = distributed.gather_sharded(d, local, len(val_idx))
    pw = loss_fn.pos_weight.cpu() if loss_fn.pos_weight is not None else None
    loss = float(F.binary_cross_entropy_with_logits(logits, val_y, pos_weight=pw))
    return float(roc_auc_score(val_y.numpy(), logits.numpy())), loss


def _check_in_sync(model: nn.Module, d: distributed.Dist) -> None:
    """DDP guard: every rank must hold the same weights (cheap checksum per stage)."""
    if d.world == 1:
        return
    with torch.no_grad():
        total = float(sum(p.double().sum() for p in model.parameters()))
    sums = distributed.gather_object(d, total)
    if max(sums) - min(sums) > 1e-6 * max(1.0, abs(total)):
        raise RuntimeError(f"DDP ranks hold different weights (checksums {sums})")


def train(cfg: Config, cache_dir: str | Path, out_dir: str | Path, *, resume: bool = False,
          max_epochs: int | None = None, device: str | None = None,
          rows: tuple[Sequence[int], Sequence[int]] | None = None) -> Path:
    """Train per ``cfg``; returns the best checkpoint's path (``out_dir/best.pt``).

    ``max_epochs``: stop after that many epochs in this invocation (time-boxed jobs);
    ``--resume`` continues. ``device="cpu"`` forces the CPU. ``rows``: (train, val) manifest
    row indices instead of the manifest's split (`fibrosis tune` runs this recipe per fold).
    """
    d = distributed.setup(device)
    out_dir = Path(out_dir)
    handler = None
    if d.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        handler = runlog.attach_file_log(out_dir / artefacts.TRAIN_LOG)
    try:
        return _train(cfg, Path(cache_dir), out_dir, resume, max_epochs, d, rows)
    finally:
        if handler is not None:
            runlog.detach_file_log(handler)
        distributed.teardown(d)


@dataclass
class _Run:
    """Everything one training invocation works with, set up once by :func:`_open`."""
    cfg: Config
    d: distributed.Dist
    out_dir: Path
    reader: CacheReader
    train_idx: list[int]
    val_idx: list[int]
    train_y: list[float]
    val_y: torch.Tensor
    model: FibrosisNet
    stages: tuple[StageConfig, ...]
    loss_fn: nn.BCEWithLogitsLoss
    train_ds: Dataset[Sample]
    base: Checkpoint  # the fields fixed for the run (its weights and training state change per epoch)
    state: RunState
    resumed: Training | None  # the training state resumed from, if any
    tracker: Any
    max_epochs: int | None
    aux_loss: AuxLoss | None = None  # auxiliary heads (train.aux_weight > 0)
    aux_train: np.ndarray | None = None  # their targets for train_idx (NaN = missing)
    ran: int = 0  # epochs run in this invocation
    pending_rng: Any = None  # RNG state to restore right before the next epoch (resume)

    @property
    def last(self) -> Path:
        return self.out_dir / artefacts.LAST

    @property
    def best(self) -> Path:
        return self.out_dir / artefacts.BEST

    def out_of_epochs(self) -> bool:
        return self.max_epochs is not None and self.ran >= self.max_epochs


@dataclass
class _Stage:
    """One stage, set up: what trains, on what, with which optimizer."""
    index: int
    config: StageConfig
    step_model: nn.Module  # maps a batch to (B, 1) logits: the model, or the head on cached features
    ds: Dataset[Sample]
    opt: torch.optim.Optimizer
    sched: Any
    cached: bool
    val_feats: torch.Tensor | None
    n_params: int


def _train(cfg: Config, cache_dir: Path, out_dir: Path, resume: bool, max_epochs: int | None,
           d: distributed.Dist, rows: tuple[Sequence[int], Sequence[int]] | None = None) -> Path:
    run = _open(cfg, cache_dir, out_dir, resume, max_epochs, d, rows)
    state = run.state
    for s in range(state.stage, len(run.stages)):
        if run.out_of_epochs():
            break
        stage = _setup_stage(run, s)
        for e in range(state.epoch_in_stage, stage.config.epochs):
            if run.out_of_epochs():
                break
            if _run_epoch(run, stage, e):  # early stop
                break
        _check_in_sync(run.model, d)
        if not state.stage_done and state.epoch_in_stage < stage.config.epochs:  # max_epochs reached
            break
        state.stage, state.epoch_in_stage, state.stage_done, state.bad_epochs = s + 1, 0, False, 0
    if max_epochs is not None and state.stage < len(run.stages):
        logger.info("stopping after %s as asked; continue with --resume", plural(run.ran, "epoch"))
        return run.best
    logger.info("done: best val AUC %.4f at epoch %d -> %s", state.best_val_auc, state.best_epoch, run.best)
    if run.tracker is not None:
        run.tracker.log_artifact(run.best)
        run.tracker.close()
    return run.best


def _open(cfg: Config, cache_dir: Path, out_dir: Path, resume: bool, max_epochs: int | None,
          d: distributed.Dist, rows: tuple[Sequence[int], Sequence[int]] | None = None) -> _Run:
    """Seed, read the splits, build the model and its stages, restore a resumed run, and
    fix what every checkpoint of this run records."""
    from monai.utils import set_determinism

    tcfg = cfg.train
    # Seeds torch/numpy/random and makes cuDNN deterministic; `deterministic: false` keeps
    # the seeds but lets cuDNN pick the fastest (non-deterministic) kernels.
    set_determinism(seed=tcfg.seed)
    if not tcfg.deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    reader, train_idx, val_idx = _read_splits(cache_dir, rows)
    mhash = manifest_hash(cache_dir)
    cfg = cache_ingest_config(cfg, cache_dir)
    model = build_model_from_config(cfg.model)
    stages, why = resolve_stages(tcfg, cfg.model.arch, len(train_idx))
    logger.info("%s", why)
    logger.info("stages: %s", "; ".join(f"{s.name}: {s.epochs} ep, lr {s.lr:g}, unfreeze "
                                        f"{list(s.unfreeze) or 'none (head only)'}" for s in stages))
    if not model.pretrained:
        logger.warning("the backbone is NOT pretrained (weights source: %s)", model.weights_info["source"])
    aux = _aux_heads(model, cfg, reader, train_idx)  # before _restore: the heads' weights load too
    state, resumed = _restore(model, cfg, mhash, out_dir, resume, d)
    if d.is_main:
        runlog.write_config(out_dir, config_to_dict(cfg), {"preset": why, "manifest_sha256": mhash})
    tracker = None
    if tcfg.mlflow_uri and d.is_main:
        tracker = runlog.MlflowTracker(tcfg.mlflow_uri, out_dir.name, config_to_dict(cfg),
                                       state.mlflow_run_id)
        state.mlflow_run_id = tracker.run_id
    fmt = torch.channels_last if tcfg.channels_last else torch.contiguous_format
    # Module.to takes a device and a memory format at once; its typed overloads take one or the other
    model.to(d.device, memory_format=fmt)  # type: ignore[call-overload]
    train_y = [row_label(reader.rows[i]) for i in train_idx]
    val_y = torch.tensor([row_label(reader.rows[i]) for i in val_idx])
    pw = torch.tensor(pos_weight(train_y) if tcfg.imbalance == "pos_weight" else 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw).to(d.device)
    logger.info("train %d rows (%d positive), val %d rows (%d positive); imbalance=%s%s",
                len(train_idx), int(sum(train_y)), len(val_idx), int(val_y.sum()), tcfg.imbalance,
                f" (pos_weight {float(pw):.2f})" if tcfg.imbalance == "pos_weight" else "")
    aux_loss, aux_train, aux_record = aux if aux is not None else (None, None, None)
    train_ds = CacheDataset(reader, train_idx, model.preprocessing,
                            build_augment(tcfg.augment), seed=tcfg.seed, aux=aux_train)
    base = Checkpoint(weights={}, config=config_to_dict(cfg), stages=[config_to_dict(s) for s in stages],
                      preset=why, arch=cfg.model.arch, preprocessing=model.preprocessing,
                      weights_info=model.weights_info, pretrained=model.pretrained,
                      manifest_hash=mhash, world_size=d.world, tta=TTARecord.of(variants_of(model)),
                      split_keys={"train": split_keys(reader, train_idx), "val": split_keys(reader, val_idx)},
                      versions=package_versions(), aux=aux_record)
    run = _Run(cfg, d, out_dir, reader, train_idx, val_idx, train_y, val_y, model, stages, loss_fn,
               train_ds, base, state, resumed, tracker, max_epochs, aux_loss, aux_train)
    if state.stage_done:  # stopped right after a stage ended: the next one starts fresh
        state.stage, state.epoch_in_stage, state.stage_done, state.bad_epochs = state.stage + 1, 0, False, 0
    if resumed is not None:
        per_rank = resumed.rng_per_rank or [resumed.rng]
        run.pending_rng = per_rank[d.rank] if d.rank < len(per_rank) else resumed.rng
        if state.epoch_in_stage == 0:  # at a stage boundary: the saved state precedes its setup
            set_rng_state(run.pending_rng)
            run.pending_rng = None
    return run


def _aux_heads(model: FibrosisNet, cfg: Config, reader: CacheReader, train_idx: list[int]
               ) -> tuple[AuxLoss, np.ndarray, AuxRecord] | None:
    """With ``train.aux_weight > 0``: attach a head per auxiliary finding with enough training
    labels; returns its loss, the training targets and the checkpoint's ``aux`` record."""
    tcfg = cfg.train
    if tcfg.aux_weight <= 0:
        return None
    names, dropped = choose_aux(reader.rows, train_idx, tcfg.aux_min_positives)
    for name, why in dropped.items():
        logger.info("auxiliary finding %r gets no head: %s in train", name, why)
    if not names:
        logger.warning("train.aux_weight=%g but no auxiliary finding has >= %d positive training labels "
                       "(ingest with ingest.findings_column or ingest.aux_label_columns): fibrosis head only",
                       tcfg.aux_weight, tcfg.aux_min_positives)
        return None
    set_aux_heads(model, names)
    targets = aux_targets(reader.rows, train_idx, names)
    logger.info("%s, loss weight %g: %s", plural(len(names), "auxiliary head"), tcfg.aux_weight, describe(names, targets))
    record = aux_record(names, tcfg.aux_weight, targets, dropped, tcfg.aux_min_positives)
    return AuxLoss(float(tcfg.aux_weight), torch.tensor(record.pos_weight)), targets, record


def _restore(model: FibrosisNet, cfg: Config, mhash: str, out_dir: Path, resume: bool,
             d: distributed.Dist) -> tuple[RunState, Training | None]:
    """The weights and position of the run being resumed; a fresh state otherwise (and a
    refusal to overwrite an existing run without --resume)."""
    last = out_dir / artefacts.LAST
    if not resume:
        if last.exists():
            raise FileExistsError(f"{last}: a run already exists in {out_dir}; pass --resume to "
                                  f"continue it or choose a new output directory")
        return RunState(), None
    ckpt = load_checkpoint(last)  # FileNotFoundError names the missing file
    training = _check_resume(ckpt, cfg, mhash, last, d.world)
    model.load_state_dict(ckpt.weights)
    state = RunState(**{**training.run, "history": [runlog.EpochRow.from_json(r, f"{last}: run.history[{i}]")
                                                    for i, r in enumerate(training.run.get("history") or [])]})
    logger.info("resuming %s at stage %d, %s done in it (%d overall)", last,
                state.stage, plural(state.epoch_in_stage, "epoch"), state.epochs_done)
    return state, training


def _setup_stage(run: _Run, s: int) -> _Stage:
    """Freeze all but the stage's groups; on a frozen backbone, compute the features once
    and train the head on them; build (or restore) the stage's optimizer and schedule."""
    cfg, d, model, state = run.cfg, run.d, run.model, run.state
    stage: StageConfig = run.stages[s]
    trainable = freeze(model, stage.unfreeze)
    cached = cfg.train.cache_features and backbone_frozen(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("stage %d/%d %r: %d trainable tensors (%d parameters)%s", s + 1, len(run.stages),
                stage.name, len(trainable), n_params,
                "; backbone frozen: features computed once, no augmentation in this stage"
                if cached else "")
    val_feats = None
    if cached:
        t0 = time.perf_counter()
        train_feats = _features(model, run.reader, run.train_idx, cfg, d)
        val_feats = _features(model, run.reader, run.val_idx, cfg, d, tta=True)  # model.tta: as scored
        logger.info("features of %d+%d images in %.1f s", len(run.train_idx), len(run.val_idx),
                    time.perf_counter() - t0)
        tensors = [train_feats, torch.tensor(run.train_y)]
        if run.aux_loss is not None:
            tensors.append(torch.from_numpy(run.aux_train))
        ds: Dataset[Sample] = TensorDataset(*tensors)
        # The heads alone: DDP wraps them on cached features.
        step_model: nn.Module = model.head if run.aux_loss is None else HeadsOnFeatures(model)
    else:
        ds, step_model = run.train_ds, (model if run.aux_loss is None else AllHeads(model))
    n_steps = steps_per_epoch(len(run.train_idx), cfg.train.batch_size, d.world)
    opt, sched = make_optimizer(model, stage, n_steps)
    if run.resumed is not None and s == run.resumed.run["stage"] and state.epoch_in_stage > 0:
        opt.load_state_dict(run.resumed.optimizer)
        sched.load_state_dict(run.resumed.scheduler)
    if d.world > 1:
        step_model = DDP(step_model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.train.compile:
        # torch.compile types its result as a callable; given a Module it returns a Module (OptimizedModule)
        step_model = torch.compile(step_model)  # type: ignore[assignment]
    if run.pending_rng is not None:
        set_rng_state(run.pending_rng)
        run.pending_rng = None
    return _Stage(s, stage, step_model, ds, opt, sched, cached, val_feats, n_params)


def _run_epoch(run: _Run, stage: _Stage, e: int) -> bool:
    """Train one epoch, validate, record it and save; True when the stage stops early."""
    cfg, d, state, tcfg = run.cfg, run.d, run.state, run.cfg.train
    t0 = time.perf_counter()
    run.model.train()
    loader = make_loader(stage.ds, run.train_y, cfg, d, state.epochs_done,
                         num_workers=0 if stage.cached else None)
    loss, n_seen = train_epoch(stage.step_model, loader, stage.opt, stage.sched, run.loss_fn, d.device,
                               amp=tcfg.amp, channels_last=tcfg.channels_last,
                               desc=f"{stage.config.name} {e + 1}/{stage.config.epochs}", show=d.is_main,
                               aux_loss=run.aux_loss)
    train_s = time.perf_counter() - t0
    auc, val_loss = _validate(run.model, run.reader, run.val_idx, run.val_y, stage.val_feats, run.loss_fn, cfg, d)
    loss = float(np.mean(distributed.gather_object(d, loss)))
    improved = auc > state.best_val_auc
    if improved:
        state.best_val_auc, state.best_epoch, state.bad_epochs = auc, state.epochs_done, 0
    else:
        state.bad_epochs += 1
    row = runlog.EpochRow(
        epoch=state.epochs_done, stage=stage.index, stage_name=stage.config.name, epoch_in_stage=e,
        lr=stage.opt.param_groups[0]["lr"], train_loss=loss, val_loss=val_loss, val_auc=auc,
        best_val_auc=state.best_val_auc, improved=improved, n_trainable=stage.n_params,
        cached_features=stage.cached, seconds=round(time.perf_counter() - t0, 3),
        train_images_per_s=round(n_seen * d.world / max(train_s, 1e-9), 1))
    state.history.append(row)
    state.epochs_done += 1
    run.ran += 1
    state.epoch_in_stage = e + 1
    patience = tcfg.early_stopping_patience
    stop = patience > 0 and state.bad_epochs >= patience
    state.stage_done = stop or e + 1 == stage.config.epochs
    logger.info("epoch %d [%s %d/%d] loss %.4f val_loss %.4f val_auc %.4f (best %.4f @%d) "
                "%.1f s, %.0f img/s%s", row.epoch, stage.config.name, e + 1, stage.config.epochs, loss,
                val_loss, auc, state.best_val_auc, state.best_epoch, row.seconds,
                row.train_images_per_s, " *" if improved else "")
    _save(run, stage, row, improved)
    if stop:
        logger.info("early stop of stage %r: no val-AUC gain for %s", stage.config.name, plural(patience, "epoch"))
    return stop


def _save(run: _Run, stage: _Stage, row: runlog.EpochRow, improved: bool) -> None:
    """last.pt after every epoch (and best.pt when it improved), with every rank's RNG
    state, so that a resume continues bit-exactly; then the metrics logs."""
    d, state = run.d, run.state
    rngs = distributed.gather_object(d, rng_state())
    if d.is_main:
        training = Training(optimizer=stage.opt.state_dict(), scheduler=stage.sched.state_dict(),
                            stage=stage.index, stage_name=stage.config.name, epoch=state.epochs_done,
                            run=dataclasses.asdict(state), rng=rngs[0], rng_per_rank=rngs)
        ckpt = dataclasses.replace(run.base, weights=run.model.state_dict(), training=training,
                                   best_val_auc=state.best_val_auc, best_epoch=state.best_epoch)
        save_checkpoint(run.last, ckpt)
        if improved:
            save_checkpoint(run.best, ckpt)
        runlog.write_metrics(run.out_dir, state.history)
        if run.tracker is not None:
            run.tracker.log_epoch(row)
    distributed.barrier(d)
