"""Freeze-then-unfreeze: which blocks train, at which learning rate, on which schedule.

A backbone is cut into named *groups* (stem -> last block) per architecture. A stage
lists the groups it trains (``unfreeze``); the head always trains. Frozen means:
``requires_grad=False``, absent from the optimizer, and the frozen groups kept in eval
mode by ``FibrosisNet.train`` (BatchNorm statistics do not move, stochastic depth off).
Parameters are matched by name/identity, never by value.
"""
from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, get_args

import torch
from torch import nn

from fibrosis.config import BatchNormMode, Preset, StageConfig, TrainConfig
from fibrosis.model.arch import ARCHS, arch_spec
from fibrosis.model.net import FibrosisNet

logger = logging.getLogger(__name__)

PRESETS = typing.get_args(Preset)


# `partial`'s "last blocks" per architecture: a view of the registry (fibrosis.model.arch).
PARTIAL: dict[str, tuple[str, ...]] = {name: spec.partial for name, spec in ARCHS.items()}


class _Arch(Protocol):
    """A model, or a stand-in that names only its architecture (fibrosis.train.stages.ArchOnly)."""

    @property
    def arch(self) -> str: ...


def block_groups(model: _Arch) -> dict[str, tuple[str, ...]]:
    """Group name -> full module names in ``model`` (``backbone.`` prefixed), ordered."""
    return {k: tuple(f"backbone.{m}" for m in v) for k, v in arch_spec(model.arch).groups}


def resolve_unfreeze(model: FibrosisNet, unfreeze: Sequence[str]) -> tuple[str, ...]:
    groups = list(block_groups(model))
    if "all" in unfreeze:
        return tuple(groups)
    bad = sorted(set(unfreeze) - set(groups))
    if bad:
        raise ValueError(f"unfreeze={list(unfreeze)!r}: unknown block(s) {bad} for {model.arch}; "
                         f"allowed: {groups + ['all']}")
    return tuple(g for g in groups if g in unfreeze)


def _owner(name: str, modules: dict[str, str]) -> str | None:
    for mod, group in modules.items():
        if name.startswith(mod + "."):
            return group
    return None


def param_owner(model: FibrosisNet) -> dict[str, str]:
    """Parameter name -> group name ("head" for the head and the auxiliary heads, which
    always train together); every parameter has one."""
    modules = {m: g for g, ms in block_groups(model).items() for m in ms}
    out: dict[str, str] = {}
    for name, _ in model.named_parameters():
        group = "head" if name.startswith(("head.", "aux_head.")) else _owner(name, modules)
        if group is None:
            raise RuntimeError(f"{model.arch}: parameter {name} belongs to no block group")
        out[name] = group
    return out


def freeze(model: FibrosisNet, unfreeze: Sequence[str]) -> list[str]:
    """Make exactly the head + ``unfreeze`` groups trainable; returns trainable parameter names."""
    train_groups = set(resolve_unfreeze(model, unfreeze)) | {"head"}
    owner = param_owner(model)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(owner[name] in train_groups)
        if p.requires_grad:
            trainable.append(name)
    model.frozen_eval = tuple(m for g, ms in block_groups(model).items()
                              if g not in train_groups for m in ms)
    if train_groups == {"head"}:  # also the parameter-free glue (pooling, activations)
        model.frozen_eval = ("backbone",)
    model.train(model.training)  # re-applies eval mode to the frozen groups now
    return trainable


def train_mode(model: FibrosisNet, batchnorm: str) -> None:
    """``model.train()`` (frozen groups stay in eval mode, see ``FibrosisNet.train``); with
    ``batchnorm == "frozen"`` every BatchNorm too: its running statistics are used and never
    updated, while the affine weights of unfrozen groups still train."""
    if batchnorm not in get_args(BatchNormMode):
        raise ValueError(f"batchnorm={batchnorm!r}; allowed: {list(get_args(BatchNormMode))}")
    model.train()
    if batchnorm == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def backbone_frozen(model: FibrosisNet) -> bool:
    return not any(p.requires_grad for p in model.backbone.parameters())


def param_groups(model: FibrosisNet, lr: float, weight_decay: float,
                 layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Optimizer groups of the trainable parameters only.

    Layer-wise lr decay: the head gets ``lr``, the last trainable block ``lr*decay``, the
    one before ``lr*decay**2`` ... Biases and norm weights (ndim <= 1) get no weight decay.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay!r}; expected 0 < layer_decay <= 1")
    owner = param_owner(model)
    order = list(block_groups(model))
    trained_blocks = [g for g in order if any(owner[n] == g and p.requires_grad
                                              for n, p in model.named_parameters())]
    depth = {g: len(trained_blocks) - i for i, g in enumerate(trained_blocks)}
    depth["head"] = 0
    groups: list[dict[str, Any]] = []
    for g in ["head"] + trained_blocks[::-1]:
        g_lr = lr * layer_decay ** depth[g] if layer_decay < 1.0 else lr
        params = [(n, p) for n, p in model.named_parameters() if owner[n] == g and p.requires_grad]
        rules: tuple[tuple[str, float, Callable[[torch.Tensor], bool]], ...] = (
            ("", weight_decay, lambda p: p.ndim > 1), ("/no_decay", 0.0, lambda p: p.ndim <= 1))
        for suffix, wd, sel in rules:
            chosen = [p for _, p in params if sel(p)]
            if chosen:
                groups.append({"name": g + suffix, "params": chosen, "lr": g_lr, "weight_decay": wd})
    return groups


class WarmupCosine:
    """lr factor per optimizer step: linear warmup, then cosine decay to ``min_factor``.

    A plain object (not a lambda) so LambdaLR.state_dict stores its numbers and a
    resumed run continues mid-schedule.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0):
        self.warmup_steps, self.total_steps, self.min_factor = warmup_steps, total_steps, min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: FibrosisNet, stage: StageConfig, steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable groups + per-step warmup/cosine over the stage's epochs."""
    opt = torch.optim.AdamW(param_groups(model, stage.lr, stage.weight_decay, stage.layer_decay))
    total = max(1, stage.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(round(stage.warmup_epochs * steps_per_epoch), total))
    return opt, sched


def preset_stages(preset: str, arch: str, tcfg: TrainConfig) -> tuple[StageConfig, ...]:
    head = StageConfig(name="head", epochs=tcfg.head_epochs, lr=tcfg.head_lr, unfreeze=())
    tune = StageConfig(name="finetune", epochs=tcfg.finetune_epochs, lr=tcfg.finetune_lr,
                       warmup_epochs=tcfg.finetune_warmup_epochs)
    if preset == "head-only":
        # Same epoch budget as the other presets, all of it on the head.
        return (replace(head, epochs=tcfg.head_epochs + tcfg.finetune_epochs),)
    if preset == "partial":
        return head, replace(tune, unfreeze=PARTIAL[arch])
    if preset == "full":
        return head, replace(tune, unfreeze=("all",), layer_decay=tcfg.layer_decay)
    raise ValueError(f"train.preset={preset!r}; allowed: {list(PRESETS)} or null with train.stages")


def resolve_stages(tcfg: TrainConfig, arch: str, n_train: int) -> tuple[tuple[StageConfig, ...], str]:
    """The stages to run and a sentence saying which preset was chosen and why."""
    if tcfg.stages:
        why = f"explicit train.stages ({len(tcfg.stages)} stage(s))"
        if tcfg.preset is not None:
            why += f"; train.preset={tcfg.preset!r} is ignored when stages are given"
        return tuple(tcfg.stages), why
    if tcfg.preset is None:
        raise ValueError("train.preset is null and train.stages is empty: nothing to train")
    if tcfg.preset == "auto":
        # Chest X-rays are a different domain from ImageNet photographs, so the last blocks
        # must adapt (never head-only); only a large training set justifies unfreezing all.
        preset = "full" if n_train >= tcfg.auto_full_min_train else "partial"
        why = (f"preset 'auto' -> {preset!r}: X-rays are a different domain from ImageNet and "
               f"n_train={n_train} {'>=' if preset == 'full' else '<'} "
               f"train.auto_full_min_train={tcfg.auto_full_min_train}")
        return preset_stages(preset, arch, tcfg), why
    reasons = {"head-only": "small data, similar domain: only the head trains",
               "partial": "different domain (X-ray vs ImageNet): the last blocks are fine-tuned",
               "full": "large data, very different domain: the whole backbone is fine-tuned"}
    stages = preset_stages(tcfg.preset, arch, tcfg)
    return stages, f"preset {tcfg.preset!r} from the config ({reasons[tcfg.preset]})"
