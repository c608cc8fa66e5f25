"""`fibrosis tune`, training side: every (fold, arm) model and its out-of-fold (OOF) curves.

For each arm of ``tune.arms`` and each patient-level fold (fibrosis.train.folds):

1. linear probe: the head solved on frozen features (fibrosis.train.probe), computed once
   per backbone for all development images;
2. fine-tuning arms (LP-FT, Kumar et al. 2022) start from that head and train the unfrozen
   suffix (fibrosis.train.stages) at ``tune.lr`` (head) and ``tune.lr / lr_ratio``
   (backbone) at a constant rate for ``tune.max_epochs``; after every epoch the held-out
   fold is predicted and the trainable weights are kept;
3. when all folds of an arm are done, its epoch budget is the one with the lowest pooled
   OOF loss (at least ``tune.min_epochs``; by default the loss after Platt recalibration,
   ``tune.epoch_criterion``): one number chosen from all development patients, instead of
   an epoch per tiny validation split. The other epochs' weights go.

The frozen prefix runs once: its activations for all development images are kept in
memory (up to ``tune.cache_mb``, else recomputed per batch). That is also why tune trains
without augmentation: every arm sees the same inputs, so the arms differ only in what
they unfreeze and how fast it learns. The constant learning rate makes "the model after
E epochs of a longer run" the same as "a run of E epochs", so the refit option can
reproduce the chosen budget.

Resumable: every (fold, arm) unit keeps ``state.pt`` after each epoch and ``done.json``
when finished under ``OUT/cv/<arm>/<fold>/``; a killed run continues where it stopped.
With ``tune.tta`` every finished arm also gets a test-time-augmentation twin ``<arm>+tta``
(fibrosis.train.tta_arms): the same fold models, scored with TTA; no training.
Statistics that judge the arms (DeLong, the one-SE rule) live in fibrosis.evaluate.selection.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fibrosis.config import ArmConfig, Config, config_from_dict, config_to_dict
from fibrosis.data.cache import CacheReader, manifest_hash
from fibrosis.data.dataset import CacheDataset
from fibrosis.io import atomic_write_bytes, package_versions, read_csv, write_csv
from fibrosis.model.checkpoint import save_checkpoint
from fibrosis.model.ensemble import EnsembleNet, ensemble_record
from fibrosis.model.net import FibrosisNet, build_model, set_aux_heads
from fibrosis.train.aux import AuxLoss, aux_pos_weight, aux_record, aux_targets, choose_aux
from fibrosis.train.aux import describe as describe_aux
from fibrosis.model.tta import describe as tta_describe, to_record as tta_record
from fibrosis.train.folds import Fold, make_folds, near_duplicate_links, patient_groups
from fibrosis.train.loop import cache_ingest_config
from fibrosis.train.probe import Probe, calibrated_log_loss, fit_probe, weighted_log_loss
from fibrosis.train.schedule import block_groups, freeze
from fibrosis.train.stages import (ArchOnly, Suffix, first_trainable, forward_from, forward_range, n_groups,
                                   resolve_arm_unfreeze)

logger = logging.getLogger(__name__)

RANDOM_DEPTH = 1000  # the random-init control ranks as the most-changed arm in the one-SE rule


# ------------------------------------------------------------------ arms


@dataclass(frozen=True)
class Arm:
    """An arm resolved against its architecture."""

    cfg: ArmConfig
    arch: str
    input_size: int
    groups: tuple[str, ...]  # block groups that fine-tune
    start: int  # index of the first trainable group (n_groups: head only)
    depth: int  # 0 head only, N last N stages, n_stages+ all; random init ranks last

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def base_key(self) -> tuple[str, int, str]:
        return self.arch, self.input_size, self.cfg.init

    @property
    def aux(self) -> bool:
        """Auxiliary heads train with this arm (only fine-tuning moves shared features)."""
        return self.cfg.aux_weight > 0 and bool(self.groups)

    def describe(self) -> str:
        init = "random init" if self.cfg.init == "random" else "pretrained"
        what = "head only (linear probe)" if not self.groups else (
            f"unfreeze {self.cfg.unfreeze} ({len(self.groups)} block group(s) from {self.groups[0]}), "
            f"backbone lr = head lr / {self.cfg.lr_ratio:g}")
        aux = f", + auxiliary-finding heads (loss weight {self.cfg.aux_weight:g})" if self.aux else ""
        return f"{init}, {self.arch} @ {self.input_size} px, {what}{aux}"


def resolve_arms(cfg: Config) -> list[Arm]:
    out = []
    for a in cfg.tune.arms:
        arch, size = a.arch or cfg.model.arch, a.input_size or cfg.model.input_size
        named = ArchOnly(arch)  # block-group names need the architecture only, no network
        groups = resolve_arm_unfreeze(named, a.unfreeze)
        depth = {"none": 0, "all": 100}.get(a.unfreeze) if a.unfreeze in ("none", "all") else int(a.unfreeze[4:])
        if a.init == "random":
            depth = RANDOM_DEPTH
        out.append(Arm(a, arch, size, groups, first_trainable(named, groups), int(depth)))
    return out


# ------------------------------------------------------------------ frozen activations


class Activations:
    """Frozen-prefix activations of the development rows for one backbone.

    ``at[start]`` holds the input of group ``start`` for every development row (in memory),
    ``features`` the pooled features. Where the cache would exceed ``cache_mb``, ``batch``
    recomputes a start's activations from the images for each batch instead.
    """

    def __init__(self, model: FibrosisNet, reader: CacheReader, dev: Sequence[int], starts: Sequence[int],
                 cache_mb: int, batch_size: int = 32):
        self.model, self.reader, self.dev = model, reader, list(dev)
        self.starts = sorted(set(starts))
        self.batch_size = batch_size
        n = n_groups(model)
        self.at: dict[int, torch.Tensor] = {}
        model.eval()
        size = model.preprocessing.input_size
        with torch.inference_mode():
            shapes = {s: tuple(forward_range(model, torch.zeros(1, 1, size, size), 0, s).shape[1:])
                      for s in self.starts}
        mb = sum(len(self.dev) * int(np.prod(sh)) * 4 for sh in shapes.values()) / 2**20
        self.keep = mb <= cache_mb
        if not self.keep:
            logger.info("frozen-prefix activations would take %.0f MB > tune.cache_mb=%d: recomputed per batch",
                        mb, cache_mb)
        feats, kept = [], {s: [] for s in self.starts}
        for x in self._images(self.dev):
            with torch.no_grad():  # not inference_mode: kept activations feed autograd later
                h, at = x, 0
                for s in self.starts:
                    h, at = forward_range(model, h, at, s), s
                    if self.keep:
                        kept[s].append(h.clone())
                feats.append(forward_from(model, h, at).float())
        self.features = torch.cat(feats).numpy().astype(np.float64)
        if self.keep:
            self.at = {s: torch.cat(v) for s, v in kept.items()}
        self.pos = {r: k for k, r in enumerate(self.dev)}
        self.n_groups = n

    def _images(self, rows: Sequence[int]):
        ds = CacheDataset(self.reader, rows, self.model.preprocessing, augment=None, labels=False)
        for x, _ in DataLoader(ds, batch_size=64, shuffle=False, num_workers=0):
            yield x

    def batch(self, start: int, positions: Sequence[int]) -> torch.Tensor:
        """Inputs of group ``start`` for development positions ``positions``."""
        if self.keep:
            return self.at[start][list(positions)]
        rows = [self.dev[p] for p in positions]
        x = torch.cat(list(self._images(rows)))
        with torch.no_grad():  # not inference_mode: the suffix trains on these in autograd
            return forward_range(self.model, x, 0, start)


# ------------------------------------------------------------------ one (fold, arm) unit


def _save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a kill mid-write must not leave a half file that a resume would trust."""
    atomic_write_bytes(path, json.dumps(obj).encode())


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def trainable_keys(model: FibrosisNet, groups: Sequence[str]) -> list[str]:
    """State-dict keys (parameters and buffers) of the head and the ``groups`` that train."""
    prefixes = ["head.", "aux_head."] + [m + "." for g in groups for m in block_groups(model)[g]]
    return [k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)]


def set_head(model: FibrosisNet, probe: Probe) -> None:
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(probe.weight, dtype=linear.weight.dtype).reshape(1, -1))
        linear.bias.fill_(float(probe.bias))


def set_aux_probes(model: FibrosisNet, probes: Sequence[Probe]) -> None:
    """Auxiliary heads start from their linear probes too (LP-FT for every head)."""
    linear = model.aux_head[-1]
    with torch.no_grad():
        for k, p in enumerate(probes):
            linear.weight[k].copy_(torch.as_tensor(p.weight, dtype=linear.weight.dtype))
            linear.bias[k] = float(p.bias)


def _probe_record(p: Probe) -> dict[str, Any]:
    return {"weight": torch.as_tensor(p.weight), "bias": p.bias, "c": p.c,
            "inner_loss": {str(k): v for k, v in p.inner_loss.items()}}


def _probe_from(rec: dict[str, Any]) -> Probe:
    return Probe(rec["weight"].numpy().astype(np.float64), float(rec["bias"]), float(rec["c"]),
                 {float(k): float(v) for k, v in rec["inner_loss"].items()})


@dataclass
class Context:
    """What every unit of one tune run shares."""

    cfg: Config
    rows: list[dict[str, str]]
    dev: list[int]
    y: np.ndarray  # labels of the development rows, in ``dev`` order
    groups: list[str]  # patient / near-duplicate group per development row
    device: torch.device
    bases: dict[tuple[str, int, str], tuple[FibrosisNet, dict[str, torch.Tensor]]] = field(default_factory=dict)
    acts: dict[tuple[str, int, str], Activations] = field(default_factory=dict)
    probes: dict[tuple[Any, str], Probe] = field(default_factory=dict)
    views: dict[Any, Any] = field(default_factory=dict)  # tune.tta: fibrosis.train.tta_arms.ViewActivations
    # Auxiliary findings with enough development labels: one name list for every fold, so the
    # fold models of an ensemble have the same heads. aux_y: (len(dev), K), NaN = missing.
    aux_names: tuple[str, ...] = ()
    aux_y: np.ndarray | None = None
    aux_dropped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # arm -> why it could not run here

    def aux_summary(self) -> dict[str, Any]:
        """For tune.json and the report: which findings had heads, their label counts, which not."""
        if self.aux_y is None:
            return {}
        t = self.aux_y
        return {"names": list(self.aux_names), "dropped": self.aux_dropped,
                "counts": {n: [int(np.nansum(t[:, k] == 1)), int(np.nansum(t[:, k] == 0))]
                           for k, n in enumerate(self.aux_names)}}


def _suffix_logits(model: FibrosisNet, acts: Activations, start: int, positions: Sequence[int],
                   bs: int) -> np.ndarray:
    """(n,) fibrosis logits, or (n, 1 + K) with the auxiliary heads attached."""
    model.eval()
    out = []
    step = Suffix(model, start, all_heads=model.aux_head is not None)
    with torch.inference_mode():
        for k in range(0, len(positions), bs):
            out.append(step(acts.batch(start, positions[k:k + bs])).float())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def aux_probes(ctx: Context, acts: Activations, tr: Sequence[int], memo: Any, seed: int) -> list[Probe]:
    """One linear probe per auxiliary finding on the fold's training rows that carry its label,
    each with its own C by the same grouped inner CV as the fibrosis probe. (Borrowing the
    fibrosis probe's C was tried: on the NIH sample that C is the grid's strongest, the aux heads
    started at ~0 and passed almost no gradient to the backbone -- the arm equalled plain
    fine-tuning to 3 decimals.)"""
    key = (memo, "aux")
    if key not in ctx.probes:
        tcfg = ctx.cfg.tune
        out = []
        for k in range(len(ctx.aux_names)):
            t = ctx.aux_y[tr, k]
            have = [p for p, v in zip(tr, t) if not np.isnan(v)]
            yk = ctx.aux_y[have, k].astype(int)
            if len(set(yk.tolist())) < 2:  # one class (or none) in this fold: the head starts at zero
                out.append(Probe(np.zeros(acts.features.shape[1]), 0.0, 0.0, {}))
                continue
            out.append(fit_probe(acts.features[have], yk, [ctx.groups[p] for p in have], tcfg.probe_c,
                                 tcfg.probe_inner_folds, seed=seed, quiet=True))
        ctx.probes[key] = out  # type: ignore[assignment]
    return ctx.probes[key]  # type: ignore[return-value]


def run_unit(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path, *,
             epoch_limit: int | None = None) -> dict[str, Any] | None:
    """Train one (fold, arm) unit (resuming from ``unit_dir``); returns its done record.

    ``fold.heldout`` may be empty (the refit on all development data): then nothing is
    predicted out of fold. ``epoch_limit``: stop after that many epochs in this call
    (returns None; the next call resumes from the saved epoch).
    """
    done = unit_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    tcfg = ctx.cfg.tune
    unit_dir.mkdir(parents=True, exist_ok=True)
    model, base_state = ctx.bases[arm.base_key]
    acts = ctx.acts[arm.base_key]
    tr = [acts.pos[i] for i in fold.train]
    ho = [acts.pos[i] for i in fold.heldout]
    y_tr = ctx.y[tr]
    probe_path = unit_dir / "probe.pt"
    memo = (arm.base_key, fold.name)  # arms sharing a backbone share the fold's probe
    if probe_path.is_file():
        probe = _probe_from(_load(probe_path))
    else:
        probe = ctx.probes.get(memo) or fit_probe(
            acts.features[tr], y_tr, [ctx.groups[p] for p in tr], tcfg.probe_c,
            tcfg.probe_inner_folds, seed=tcfg.seed + 7919 * fold.repeat + fold.fold + 1)  # refit: fold -1
        _save(probe_path, _probe_record(probe))
    ctx.probes[memo] = probe
    t_probe = time.perf_counter() - t0
    pw = (len(y_tr) - y_tr.sum()) / y_tr.sum()
    oof = [probe.logits(acts.features[ho]).tolist()] if ho else [[]]
    train_loss = [weighted_log_loss(y_tr, probe.logits(acts.features[tr]), pw)]
    if tcfg.max_epochs and arm.groups:
        try:
            return _fine_tune(ctx, arm, fold, unit_dir, probe, tr, ho, y_tr, pw, oof, train_loss, t_probe,
                              epoch_limit)
        finally:
            freeze(model, ())  # leave the shared base model as found: nothing trainable in flight
            set_aux_heads(model, ())
    return _done(unit_dir, arm, fold, probe, oof, train_loss, 0.0, t_probe, [])


def _done(unit_dir: Path, arm: Arm, fold: Fold, probe: Probe, oof: list, train_loss: list, seconds: float,
          t_probe: float, aux_oof: list) -> dict[str, Any]:
    # seconds: fine-tuning epochs (summed over resumes) + this invocation's probe/setup time
    record = {"arm": arm.name, "fold": fold.name, "c": probe.c, "inner_loss": _probe_record(probe)["inner_loss"],
              "heldout": list(fold.heldout), "oof": oof, "train_loss": train_loss,
              "seconds": round(seconds + t_probe, 2)}
    if aux_oof:
        record["aux_oof"] = aux_oof  # per epoch: (heldout, K) auxiliary logits
    _write_json(unit_dir / "done.json", record)
    return record


def _fine_tune(ctx: Context, arm: Arm, fold: Fold, unit_dir: Path, probe: Probe, tr: list[int], ho: list[int],
               y_tr: np.ndarray, pw: float, oof: list, train_loss: list, t_probe: float,
               epoch_limit: int | None) -> dict[str, Any] | None:
    """The fine-tuning epochs of one unit (LP-FT from ``probe``), resumable from ``state.pt``."""
    tcfg = ctx.cfg.tune
    model, base_state = ctx.bases[arm.base_key]
    acts = ctx.acts[arm.base_key]
    epochs = tcfg.max_epochs
    seconds = 0.0
    aux_loss, aux_oof = None, []
    init = dict(base_state)
    if arm.aux:
        set_aux_heads(model, ctx.aux_names)
        init.update({k: v for k, v in model.state_dict().items() if k.startswith("aux_head.")})
    model.load_state_dict(init)
    set_head(model, probe)
    if arm.aux:
        probes = aux_probes(ctx, acts, tr, (arm.base_key, fold.name),
                            tcfg.seed + 7919 * fold.repeat + fold.fold + 1)
        set_aux_probes(model, probes)
        aux_tr = ctx.aux_y[tr]
        aux_loss = AuxLoss(arm.cfg.aux_weight, torch.from_numpy(aux_pos_weight(aux_tr)))
        aux_t = torch.from_numpy(aux_tr)
        aux_oof = [np.stack([p.logits(acts.features[ho]) for p in probes], 1).tolist() if ho else []]
    freeze(model, arm.groups)
    keys = trainable_keys(model, arm.groups)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": head, "lr": tcfg.lr},
                             {"params": body, "lr": tcfg.lr / arm.cfg.lr_ratio}],
                            weight_decay=tcfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pw)))
    step = Suffix(model, arm.start, all_heads=arm.aux)
    first = 0
    state_path = unit_dir / "state.pt"
    if state_path.is_file():
        st = _load(state_path)
        model.load_state_dict({**base_state, **st["trainable"]})
        opt.load_state_dict(st["optimizer"])
        first, oof, train_loss, seconds = st["epoch"], st["oof"], st["train_loss"], st["seconds"]
        aux_oof = st.get("aux_oof", aux_oof)
        logger.info("%s %s: resuming after epoch %d", arm.name, fold.name, first)
    y_t = torch.tensor(y_tr, dtype=torch.float32)
    for e in range(first, epochs):
        if epoch_limit is not None and e - first >= epoch_limit:
            return None
        te = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + fold.repeat * 10_007 + (fold.fold + 1) * 101 + e)
        perm = torch.randperm(len(tr), generator=gen).tolist()
        total, n = 0.0, 0
        for k in range(0, len(perm), tcfg.batch_size):
            b = perm[k:k + tcfg.batch_size]
            if len(b) < 2:  # BatchNorm in train mode needs two values per channel
                continue
            x = acts.batch(arm.start, [tr[j] for j in b])
            z = step(x).float()
            if aux_loss is None:
                loss = loss_fn(z, y_t[b])
            else:
                loss = loss_fn(z[:, 0], y_t[b]) + aux_loss(z[:, 1:], aux_t[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(b), n + len(b)
        train_loss.append(total / max(n, 1))
        z_ho = _suffix_logits(model, acts, arm.start, ho, 2 * tcfg.batch_size) if ho else np.zeros((0, 1))
        if arm.aux:
            aux_oof.append(z_ho[:, 1:].tolist())
            z_ho = z_ho[:, 0] if ho else np.zeros(0)
        oof.append(z_ho.tolist() if ho else [])
        seconds += time.perf_counter() - te
        sd = model.state_dict()
        trainable = {k: sd[k].clone() for k in keys}
        _save(unit_dir / f"epoch-{e + 1}.pt", trainable)
        _save(state_path, {"trainable": trainable, "optimizer": opt.state_dict(), "epoch": e + 1,
                           "oof": oof, "train_loss": train_loss, "seconds": seconds, "aux_oof": aux_oof})
    return _done(unit_dir, arm, fold, probe, oof, train_loss, seconds, t_probe, aux_oof)


# ------------------------------------------------------------------ the cross-validation


@dataclass
class ArmResult:
    arm: Arm
    epoch: int  # chosen fine-tuning budget (0 = the linear probe)
    oof: np.ndarray  # pooled OOF logits per development row (mean over repeats), ``dev`` order
    curve: list[dict[str, float]]  # per epoch: pooled OOF loss and AUC
    seconds: float
    units: list[str]
    # Auxiliary heads only: OOF AUC of each finding's own head at ``epoch`` (context for the
    # report: is the backbone learning those findings at all?)
    aux_auc: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.arm.name, "describe": self.arm.describe(), "init": self.arm.cfg.init,
                "unfreeze": self.arm.cfg.unfreeze, "lr_ratio": self.arm.cfg.lr_ratio, "arch": self.arm.arch,
                "input_size": self.arm.input_size, "groups": list(self.arm.groups), "depth": self.arm.depth,
                "aux_weight": self.arm.cfg.aux_weight if self.arm.aux else 0.0, "aux_auc": self.aux_auc,
                "extras": int(self.arm.aux),
                "epoch": self.epoch, "curve": self.curve, "seconds": round(self.seconds, 1),
                "minutes": round(self.seconds / 60, 2), "units": self.units}


@dataclass
class CVResult:
    rows: list[dict[str, str]]
    dev: list[int]
    y: np.ndarray
    folds: list[Fold]
    arms: list[ArmResult]
    complete: bool
    ctx: Context | None = None  # reused by `package` (backbones already built)
    feature_seconds: float = 0.0  # frozen forward passes, shared by the arms of a backbone


def _pooled(records: Sequence[dict[str, Any]], pos: dict[int, int], n: int, epoch: int,
            key: str = "oof") -> np.ndarray:
    """Per development row, the mean over repeats of its held-out logits at ``epoch``: (n,) for
    ``oof``, (n, K) for ``aux_oof``."""
    total, count = None, np.zeros(n)
    for rec in records:
        e = min(epoch, len(rec[key]) - 1)
        for r, z in zip(rec["heldout"], rec[key][e]):
            if total is None:
                total = np.zeros((n,) + np.shape(z))
            total[pos[r]] += z
            count[pos[r]] += 1
    if total is None or (count == 0).any():
        raise RuntimeError("a development row has no out-of-fold prediction")
    return total / count.reshape((n,) + (1,) * (total.ndim - 1))


def _aux_auc(ctx: Context, records: Sequence[dict[str, Any]], epoch: int) -> dict[str, float]:
    """OOF AUC per auxiliary finding at ``epoch``, over the development rows labelled for it."""
    from sklearn.metrics import roc_auc_score

    z = _pooled(records, {r: k for k, r in enumerate(ctx.dev)}, len(ctx.dev), epoch, "aux_oof")
    out = {}
    for k, name in enumerate(ctx.aux_names):
        t = ctx.aux_y[:, k]
        have = ~np.isnan(t)
        if len(set(t[have].tolist())) == 2:
            out[name] = round(float(roc_auc_score(t[have], z[have, k])), 4)
    return out


def finish_arm(ctx: Context, arm: Arm, records: Sequence[dict[str, Any]], arm_dir: Path) -> ArmResult:
    """Choose the arm's epoch budget from its pooled OOF loss curve; prune other epochs' weights."""
    from sklearn.metrics import roc_auc_score

    summary_path = arm_dir / "arm.json"
    pos = {r: k for k, r in enumerate(ctx.dev)}
    n_epochs = min(len(r["oof"]) for r in records)
    pw = float((len(ctx.y) - ctx.y.sum()) / ctx.y.sum())
    curve = []
    for e in range(n_epochs):
        z = _pooled(records, pos, len(ctx.dev), e)
        curve.append({"epoch": e, "oof_loss": weighted_log_loss(ctx.y, z, pw),
                      "oof_calibrated_loss": calibrated_log_loss(ctx.y, z),
                      "oof_auc": float(roc_auc_score(ctx.y, z)),
                      "train_loss": float(np.mean([r["train_loss"][e] for r in records]))})
    lo = min(ctx.cfg.tune.min_epochs, n_epochs - 1) if arm.groups else 0
    key = "oof_calibrated_loss" if ctx.cfg.tune.epoch_criterion == "calibrated-loss" else "oof_loss"
    epoch = min(range(lo, n_epochs), key=lambda e: (round(curve[e][key], 10), e))
    for rec in records:  # keep only the chosen epoch's weights
        unit = arm_dir / rec["fold"]
        for f in unit.glob("epoch-*.pt"):
            if f.name != f"epoch-{epoch}.pt":
                f.unlink()
        (unit / "state.pt").unlink(missing_ok=True)
    result = ArmResult(arm, epoch, _pooled(records, pos, len(ctx.dev), epoch), curve,
                       float(sum(r["seconds"] for r in records)), [r["fold"] for r in records],
                       _aux_auc(ctx, records, epoch) if arm.aux else {})
    _write_json(summary_path, {**result.to_dict(), "oof": result.oof.tolist()})
    return result


def _arm_from_summary(arm: Arm, path: Path) -> ArmResult:
    d = json.loads(path.read_text())
    return ArmResult(arm, int(d["epoch"]), np.asarray(d["oof"], float), d["curve"], float(d["seconds"]), d["units"],
                     d.get("aux_auc", {}))


def setup(cfg: Config, cache_dir: Path, out_dir: Path, device: str | torch.device = "cpu"
          ) -> tuple[Context, list[Fold], list[Arm], CacheReader]:
    """Rows, folds (written to / checked against OUT/folds.csv) and arms of a tune run."""
    where = cache_dir / "manifest.csv"
    if not where.is_file():
        raise FileNotFoundError(f"{where}: no manifest (run `fibrosis ingest` and `fibrosis split`)")
    rows = read_csv(where)
    folds = make_folds(rows, cfg.tune.folds, cfg.tune.repeats, cfg.tune.seed, near_duplicate_links(cache_dir),
                       str(where))
    table = [{"content_hash": rows[i]["content_hash"], "patient_key": rows[i]["patient_key"],
              "repeat": f.repeat, "fold": f.fold} for f in folds for i in f.heldout]
    fpath = out_dir / "folds.csv"
    if fpath.is_file():
        old = read_csv(fpath)
        if [(r["content_hash"], int(r["repeat"]), int(r["fold"])) for r in old] != \
                [(r["content_hash"], r["repeat"], r["fold"]) for r in table]:
            raise ValueError(f"{fpath}: the folds of the run being resumed differ from the folds of {where} "
                             f"now (manifest or tune.folds/repeats/seed changed); use a new --out")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(fpath, table, ("content_hash", "patient_key", "repeat", "fold"))
    dev = sorted({i for f in folds for i in f.heldout})
    y = np.array([int(float(rows[i]["label"])) for i in dev])
    groups = patient_groups([rows[i]["patient_key"] for i in dev], near_duplicate_links(cache_dir))
    ctx = Context(cfg, rows, dev, y, groups, torch.device(device))
    arms = resolve_arms(cfg)
    if any(a.aux for a in arms) and not _aux_setup(ctx):
        why = (f"no auxiliary finding has >= {cfg.train.aux_min_positives} positive development labels "
               f"(train.aux_min_positives; ingest with ingest.findings_column or ingest.aux_label_columns)")
        for a in arms:
            if a.aux:
                logger.warning("arm %s skipped: %s", a.name, why)
                ctx.skipped[a.name] = why
        arms = [a for a in arms if not a.aux]
    return ctx, folds, arms, CacheReader(cache_dir, rows)


def _aux_setup(ctx: Context) -> bool:
    """The auxiliary findings every fold's heads share; False when there are none to learn."""
    names, dropped = choose_aux(ctx.rows, ctx.dev, ctx.cfg.train.aux_min_positives)
    if not names:
        return False
    ctx.aux_names, ctx.aux_dropped = names, dropped
    ctx.aux_y = aux_targets(ctx.rows, ctx.dev, names)
    logger.info("auxiliary findings (%d): %s%s", len(names), describe_aux(names, ctx.aux_y),
                f"; no head (too few labels): {', '.join(dropped)}" if dropped else "")
    return True


def _base(ctx: Context, arm: Arm) -> FibrosisNet:
    mcfg = ctx.cfg.model
    # Seeded: the same random backbone (or random head before the probe replaces it) in every
    # fold and in a resumed run, whatever consumed the global RNG before.
    torch.manual_seed(ctx.cfg.tune.seed)
    if arm.cfg.init == "random":
        return build_model(arm.arch, "none", input_size=arm.input_size, dropout=mcfg.dropout)
    return build_model(arm.arch, mcfg.weights, weights_sha256=mcfg.weights_sha256,
                       allow_random_init=mcfg.allow_random_init, input_size=arm.input_size, dropout=mcfg.dropout)


def base_model(ctx: Context, arm: Arm) -> FibrosisNet:
    """The arm's initial backbone + head, built once per (arch, size, init) with its state kept."""
    if arm.base_key not in ctx.bases:
        model = _base(ctx, arm)
        if arm.cfg.init == "pretrained" and not model.pretrained:
            logger.warning("arm %s: the backbone is NOT pretrained (%s)", arm.name, model.weights_info["source"])
        ctx.bases[arm.base_key] = (model, {k: v.clone() for k, v in model.state_dict().items()})
    return ctx.bases[arm.base_key][0]


def prepare_base(ctx: Context, arm: Arm, arms: Sequence[Arm], reader: CacheReader) -> float:
    """Build the arm's backbone and its frozen activations once (shared by arms with the same base);
    returns the seconds spent."""
    if arm.base_key in ctx.acts:
        return 0.0
    model = base_model(ctx, arm)
    starts = [a.start for a in arms if a.base_key == arm.base_key and a.groups]  # head-only: features
    t0 = time.perf_counter()
    ctx.acts[arm.base_key] = Activations(model, reader, ctx.dev, starts, ctx.cfg.tune.cache_mb)
    dt = time.perf_counter() - t0
    logger.info("%s @ %d px (%s): frozen features of %d development images in %.1f s", arm.arch,
                arm.input_size, arm.cfg.init, len(ctx.dev), dt)
    return dt


def cross_validate(cfg: Config, cache_dir: str | Path, out_dir: str | Path, *, device: str = "cpu",
                   max_units: int | None = None, progress: bool = True) -> CVResult:
    """Run (or resume) every (fold, arm) unit; ``max_units`` stops after that many new units."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    torch.manual_seed(cfg.tune.seed)
    ctx, folds, arms, reader = setup(cfg, cache_dir, out_dir, device)
    logger.info("tune: %d development rows (%d positive) in %d x %d folds; test/calib untouched; arms: %s",
                len(ctx.dev), int(ctx.y.sum()), cfg.tune.repeats, cfg.tune.folds, ", ".join(a.name for a in arms))
    total = len(arms) * len(folds)
    done_units = sum((out_dir / "cv" / a.name / f.name / "done.json").is_file() for a in arms for f in folds)
    bar = tqdm(total=total, initial=done_units, desc="tune fold x arm", unit="unit", disable=not progress)
    results: list[ArmResult] = []
    ran, complete, feat_s = 0, True, 0.0
    try:
        for arm in arms:
            arm_dir = out_dir / "cv" / arm.name
            if (arm_dir / "arm.json").is_file():
                results.append(_arm_from_summary(arm, arm_dir / "arm.json"))
                _add_twin(ctx, results, folds, reader, out_dir, arms)
                continue
            records = []
            for fold in folds:
                unit = arm_dir / fold.name
                if not (unit / "done.json").is_file():
                    if max_units is not None and ran >= max_units:
                        complete = False
                        break
                    feat_s += prepare_base(ctx, arm, arms, reader)
                    bar.set_postfix_str(f"{arm.name} {fold.name}")
                    records.append(run_unit(ctx, arm, fold, unit))
                    ran += 1
                    bar.update(1)
                else:
                    records.append(json.loads((unit / "done.json").read_text()))
            if not complete:
                break
            res = finish_arm(ctx, arm, records, arm_dir)
            results.append(res)
            logger.info("arm %-14s OOF AUC %.3f at epoch %d (%s); %.1f min", arm.name,
                        res.curve[res.epoch]["oof_auc"], res.epoch, arm.describe(), res.seconds / 60)
            _add_twin(ctx, results, folds, reader, out_dir, arms)
    finally:
        bar.close()
    if not complete:
        logger.info("stopping after %d new unit(s) as asked; run tune again to continue", ran)
    return CVResult(ctx.rows, ctx.dev, ctx.y, folds, results, complete, ctx, feat_s)


def _add_twin(ctx: Context, results: list[ArmResult], folds: Sequence[Fold], reader: CacheReader,
              out_dir: Path, arms: Sequence[Arm]) -> None:
    """tune.tta: the last arm's test-time-augmentation twin goes right after it (fibrosis.train.tta_arms)."""
    if not ctx.cfg.tune.tta:
        return
    from fibrosis.train.tta_arms import tta_twin  # it imports this module

    twin = tta_twin(ctx, results[-1], folds, reader, out_dir, arms)
    results.append(twin)
    logger.info("arm %-14s with TTA: %.1f s more", twin.arm.name, twin.tta_seconds)


# ------------------------------------------------------------------ the model left behind


def _member(ctx: Context, arm: Arm, unit_dir: Path, epoch: int) -> FibrosisNet:
    model, base_state = ctx.bases[arm.base_key]
    member = build_model(arm.arch, "none", input_size=arm.input_size, dropout=ctx.cfg.model.dropout)
    member.load_state_dict(base_state)
    member.preprocessing, member.weights_info = model.preprocessing, dict(model.weights_info)
    member.pretrained = model.pretrained
    if arm.aux:
        set_aux_heads(member, ctx.aux_names)
    set_head(member, _probe_from(_load(unit_dir / "probe.pt")))
    if epoch > 0:
        trained = _load(unit_dir / f"epoch-{epoch}.pt")
        member.load_state_dict({**member.state_dict(), **trained})
    return member.eval()


def arm_config(cfg: Config, arm: Arm, *, tta: bool = False) -> Config:
    """The resolved config the chosen arm's model was trained with (arch/size/weights of the arm;
    ``model.tta`` on for a "+tta" twin; ``train.aux_weight`` of an arm with auxiliary heads)."""
    d = config_to_dict(cfg)
    d["model"].update(arch=arm.arch, input_size=arm.input_size, tta=tta)
    d["train"]["aux_weight"] = arm.cfg.aux_weight if arm.aux else 0.0
    if arm.cfg.init == "random":
        d["model"].update(weights="none", weights_sha256=None)
    return config_from_dict(d)


def _keys(rows: Sequence[dict[str, str]], idx: Sequence[int]) -> dict[str, list[str]]:
    return {"patients": sorted({rows[i]["patient_key"] for i in idx}),
            "images": sorted({rows[i]["content_hash"] for i in idx})}


def package(cfg: Config, cache_dir: str | Path, out_dir: str | Path, cv: CVResult, chosen: str, *,
            device: str = "cpu", progress: bool = False) -> Path:
    """Write ``OUT/best.pt``: the chosen arm's fold models as one ensemble (``tune.final:
    ensemble``), or one model refitted on all development data for the chosen budget (``refit``)."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    if cv.ctx is not None:
        ctx, folds, arms = cv.ctx, cv.folds, [r.arm for r in cv.arms]
        reader = CacheReader(cache_dir, ctx.rows)
    else:
        ctx, folds, arms, reader = setup(cfg, cache_dir, out_dir, device)
    from fibrosis.train.tta_arms import untwin  # it imports this module

    # A "+tta" twin is its arm's fold models (or refit) with test-time augmentation.
    res, tta = untwin(cv.arms, chosen)
    arm = res.arm
    base_model(ctx, arm)
    arm_dir = out_dir / "cv" / arm.name
    if cfg.tune.final == "ensemble":
        model: nn.Module = EnsembleNet([_member(ctx, arm, arm_dir / f.name, res.epoch) for f in folds])
        record = ensemble_record(len(folds), arm=arm.name, epoch=res.epoch, folds=cfg.tune.folds,
                                 repeats=cfg.tune.repeats)
    else:  # refit: all development rows, the chosen budget, the same recipe
        refit_cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, max_epochs=res.epoch,
                                                                      min_epochs=min(cfg.tune.min_epochs, res.epoch)))
        ctx = dataclasses.replace(ctx, cfg=refit_cfg)
        prepare_base(ctx, arm, arms, reader)
        whole = Fold(0, -1, tuple(ctx.dev), ())
        run_unit(ctx, arm, whole, out_dir / "refit")
        model = _member(ctx, arm, out_dir / "refit", res.epoch if arm.groups else 0)
        record = None
    model.set_tta(tta)
    base = ctx.bases[arm.base_key][0]
    acfg = cache_ingest_config(arm_config(cfg, arm, tta=bool(tta)), cache_dir)
    payload = {"model": model.state_dict(), "config": config_to_dict(acfg), "arch": arm.arch,
               "preprocessing": base.preprocessing.to_dict(), "weights_info": dict(base.weights_info),
               "pretrained": bool(base.pretrained) and arm.cfg.init == "pretrained",
               "manifest_hash": manifest_hash(cache_dir), "world_size": 1, "tta": tta_record(tta),
               # Every development patient trained some member (or the refit), so all count as
               # "train" for evaluate's held-out checks; val is folded into the folds.
               "split_keys": {"train": _keys(ctx.rows, ctx.dev), "val": {"patients": [], "images": []}},
               "preset": f"tune: arm {chosen!r} ({arm.describe()}), {res.epoch} fine-tuning epoch(s), "
                         + (f"{len(folds)} fold models, mean logit" if record else "refit on all development data")
                         + (f", test-time augmentation ({tta_describe(tta)})" if tta else ""),
               "stages": [{"name": "linear probe", "epochs": 0, "lr": None, "unfreeze": []}]
               + ([{"name": "finetune", "epochs": res.epoch, "lr": cfg.tune.lr, "unfreeze": list(arm.groups)}]
                  if arm.groups else []),
               "best_epoch": res.epoch, "versions": package_versions(),
               "tune": {"arm": chosen, "epoch": res.epoch, "final": cfg.tune.final}}
    if record:
        payload["ensemble"] = record
    if arm.aux:
        payload["aux"] = {**aux_record(ctx.aux_names, arm.cfg.aux_weight, ctx.aux_y, ctx.aux_dropped,
                                      cfg.train.aux_min_positives), "oof_auc": res.aux_auc}
    path = save_checkpoint(out_dir / "best.pt", payload)
    logger.info("%s -> %s", payload["preset"], path)
    return path
