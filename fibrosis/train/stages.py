"""The backbone as a chain of block groups, so a frozen prefix can run once.

`fibrosis tune` trains many (fold, arm) models whose frozen part is the same fixed
function (frozen means eval-mode BatchNorm, see fibrosis.train.schedule.freeze). Running
that prefix once over the data and training only the suffix makes the comparison of
"how much to unfreeze" affordable on a CPU: ``forward_range(model, x, 0, k)`` gives the
input of group ``k``; ``forward_from(model, h, k)`` runs groups ``k..`` plus the pooling
and returns the pooled features, so ``forward_from(forward_range(x, 0, k), k) ==
model.forward_features(x)`` (tested for every architecture family).

"The last N stages" (``last1``, ``last2``) are resolution stages counted from the end:
the stride-32 stage first (``fibrosis.train.schedule.PARTIAL``), then the stride-16 one.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fibrosis.model.net import FibrosisNet
from fibrosis.train.schedule import PARTIAL, block_groups

# First block-group index of each resolution stage, per architecture (stem first).
# MobileNetV2 features: 0-1 stride 2, 2-3 s4, 4-6 s8, 7-13 s16, 14-18 s32.
# EfficientNet-B0 features: 0-1 s2, 2 s4, 3 s8, 4-5 s16, 6-8 s32 (PARTIAL = 6, 7, 8).
_STAGE_STARTS: dict[str, tuple[int, ...]] = {
    **{f"resnet{d}": (0, 1, 2, 3, 4) for d in (18, 34, 50, 101, 152)},
    "densenet121": (0, 1, 2, 3, 4),
    "efficientnet_b0": (0, 2, 3, 4, 6),
    "mobilenet_v2": (0, 2, 4, 7, 14),
}


@dataclass(frozen=True)
class ArchOnly:
    """Stands in for a model where only block-group *names* are needed (no weights built)."""

    arch: str


def last_stages(model: FibrosisNet | ArchOnly, n: int) -> tuple[str, ...]:
    """Group names of the last ``n`` resolution stages (``n=1``: the groups of PARTIAL)."""
    groups = list(block_groups(model))
    starts = _STAGE_STARTS[model.arch]
    if not 1 <= n <= len(starts):
        raise ValueError(f"unfreeze last{n}: {model.arch} has {len(starts)} resolution stages")
    chosen = tuple(groups[starts[-n]:])
    if n == 1 and chosen != tuple(PARTIAL[model.arch]):  # one definition of "the last blocks"
        raise RuntimeError(f"{model.arch}: last stage {chosen} differs from PARTIAL {PARTIAL[model.arch]}")
    return chosen


def resolve_arm_unfreeze(model: FibrosisNet | ArchOnly, unfreeze: str) -> tuple[str, ...]:
    """``none`` / ``lastN`` / ``all`` -> the block-group names that train."""
    if unfreeze == "none":
        return ()
    if unfreeze == "all":
        return tuple(block_groups(model))
    return last_stages(model, int(unfreeze.removeprefix("last")))


def _group_calls(model: FibrosisNet) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """One callable per block group, in order, including the parameter-free glue
    (ReLU and max-pool of a ResNet stem) that torchvision's forward applies between them."""
    b: Any = model.backbone  # a torchvision network (untyped): its submodules are reached by name
    if model.arch.startswith("resnet"):
        return [lambda x: b.maxpool(b.relu(b.bn1(b.conv1(x))))] + [
            getattr(b, f"layer{i}") for i in range(1, 5)]
    if model.arch == "densenet121":
        f = b.features
        return [lambda x: f.pool0(f.relu0(f.norm0(f.conv0(x))))] + [
            (lambda x, i=i: f.get_submodule(f"transition{i}")(f.get_submodule(f"denseblock{i}")(x)))
            for i in range(1, 4)] + [lambda x: f.norm5(f.denseblock4(x))]
    return [b.features[i] for i in range(len(b.features))]  # mobilenet_v2, efficientnet_b0


def _tail(model: FibrosisNet, h: torch.Tensor) -> torch.Tensor:
    """Pooling after the last group, as torchvision's forward does it (classifier is Identity)."""
    b: Any = model.backbone  # a torchvision network (untyped): its submodules are reached by name
    if model.arch.startswith("resnet"):
        return torch.flatten(b.avgpool(h), 1)
    if model.arch == "densenet121":
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(h), (1, 1)), 1)
    if model.arch == "efficientnet_b0":
        return torch.flatten(b.avgpool(h), 1)
    return torch.flatten(F.adaptive_avg_pool2d(h, (1, 1)), 1)  # mobilenet_v2


def n_groups(model: FibrosisNet) -> int:
    return len(_group_calls(model))


def forward_range(model: FibrosisNet, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Run block groups ``start .. stop-1`` on ``x`` (the input of group ``start``)."""
    for call in _group_calls(model)[start:stop]:
        x = call(x)
    return x


def forward_from(model: FibrosisNet, h: torch.Tensor, start: int) -> torch.Tensor:
    """Pooled features from the input of group ``start`` (``n_groups``: the last map, pooled only)."""
    return _tail(model, forward_range(model, h, start, n_groups(model)))


def first_trainable(model: FibrosisNet | ArchOnly, groups: tuple[str, ...]) -> int:
    """Index of the first group that trains (``n_groups`` when only the head trains)."""
    names = list(block_groups(model))
    return min((names.index(g) for g in groups), default=len(names))


class Suffix(nn.Module):
    """Groups ``start..`` + pooling + head as one module: (prefix activations) -> (B,) logits,
    or with ``all_heads`` the (B, 1 + K) logits of the fibrosis and auxiliary heads."""

    def __init__(self, model: FibrosisNet, start: int, all_heads: bool = False):
        super().__init__()
        self.model, self.start, self.all_heads = model, start, all_heads

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        f = forward_from(self.model, h, self.start)
        if self.all_heads:
            return self.model.forward_heads(f)
        return self.model.forward_head(f).reshape(len(h))
