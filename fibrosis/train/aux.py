"""Auxiliary findings: which ones train, their targets, and the masked loss.

A labels export usually carries many findings per report; with a few dozen fibrosis
positives, the other findings are most of the signal the unfrozen blocks can learn from.
Each auxiliary finding gets its own logit on the shared pooled features (see
``fibrosis.model.net.set_aux_heads``) and its own class weight. A missing label (the
finding was not recorded for that image) contributes nothing: not a negative, not a
gradient. The fibrosis head stays the model's output.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fibrosis.data.manifest import ManifestRow
from fibrosis.data.manifest import aux_names as manifest_aux_names
from fibrosis.model.checkpoint import AuxRecord

if TYPE_CHECKING:
    from fibrosis.model.net import FibrosisNet

logger = logging.getLogger(__name__)


def aux_targets(rows: Sequence[ManifestRow], idx: Sequence[int], names: Sequence[str]) -> np.ndarray:
    """(len(idx), len(names)) float32: 1 / 0 per finding, NaN where the label is missing."""
    out = np.full((len(idx), len(names)), np.nan, np.float32)
    col = {n: k for k, n in enumerate(names)}
    for r, i in enumerate(idx):
        for name, v in rows[i].aux().items():
            if name in col:
                out[r, col[name]] = v
    return out


def choose_aux(rows: Sequence[ManifestRow], idx: Sequence[int], min_positives: int
               ) -> tuple[tuple[str, ...], dict[str, str]]:
    """Findings with at least ``min_positives`` positive and one negative label among ``idx``;
    returns (names, {dropped name: why})."""
    names = manifest_aux_names(rows[i] for i in idx)
    y = aux_targets(rows, idx, names)
    keep, dropped = [], {}
    for k, name in enumerate(names):
        pos, neg = int(np.nansum(y[:, k] == 1)), int(np.nansum(y[:, k] == 0))
        if pos < min_positives or neg == 0:
            dropped[name] = f"{pos} positive / {neg} negative label(s); needs >= {min_positives} and >= 1"
        else:
            keep.append(name)
    return tuple(keep), dropped


def aux_pos_weight(targets: np.ndarray) -> np.ndarray:
    """Per finding n_neg / n_pos over its labelled rows (the fibrosis head's rule, per head).
    A finding with no positive in this subset gets 1: its loss is then plain BCE."""
    t = np.asarray(targets, np.float64)
    pos, neg = np.nansum(t == 1, axis=0), np.nansum(t == 0, axis=0)
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)


def aux_record(names: Sequence[str], weight: float, targets: np.ndarray, dropped: Mapping[str, str],
               min_positives: int) -> AuxRecord:
    """The checkpoint's ``aux`` entry: the heads' names, loss weight, per-head pos_weight (from
    ``targets``, the labels they trained on), the findings left without a head and why."""
    return AuxRecord(list(names), float(weight), aux_pos_weight(targets).tolist(), dict(dropped), min_positives)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the labelled entries of (B, K) ``targets`` (NaN = missing).

    The NaN is replaced before the loss (NaN * 0 would still be NaN) and its term multiplied
    by 0, so a missing entry's gradient is exactly zero. Dividing by the number of labelled
    entries keeps the loss's scale independent of how many findings a batch happens to have.
    """
    known = ~torch.isnan(targets)
    safe = torch.where(known, targets, torch.zeros_like(targets))
    per = F.binary_cross_entropy_with_logits(logits.float(), safe, pos_weight=pos_weight, reduction="none")
    n = known.sum()
    return (per * known).sum() / n.clamp(min=1)


def describe(names: Sequence[str], targets: np.ndarray) -> str:
    t = np.asarray(targets)
    return ", ".join(f"{n} ({int(np.nansum(t[:, k] == 1))}+/{int(np.nansum(t[:, k] == 0))}-)"
                     for k, n in enumerate(names))


@dataclass
class AuxLoss:
    """``weight`` x masked BCE of the auxiliary logits, per-head ``pos_weight``."""

    weight: float
    pos_weight: torch.Tensor

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.weight * masked_bce(logits, targets, self.pos_weight.to(logits.device))


class AllHeads(nn.Module):
    """Images -> (B, 1 + K) logits, fibrosis first (the step model of a run with aux heads)."""

    def __init__(self, model: FibrosisNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_all(x)


class HeadsOnFeatures(nn.Module):
    """Pooled features -> (B, 1 + K) logits: the head stage on cached features, aux heads included."""

    def __init__(self, model: FibrosisNet):
        super().__init__()
        assert model.aux_head is not None  # built only for a run with auxiliary heads
        self.head, self.aux_head = model.head, model.aux_head

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(f), self.aux_head(f)], 1)  # FibrosisNet.forward_heads, on these modules only
