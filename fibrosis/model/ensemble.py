"""A fold ensemble as one model: the k cross-validation models of `fibrosis tune`, mean logit.

Averaging logits (not probabilities) keeps the output a logit, so the calibrator and
thresholds fitted on the pooled out-of-fold logits apply to it the way they apply to a
single model's, and `evaluate`, `score` (every engine: the ensemble exports to ONNX as one
graph) and Grad-CAM take it unchanged. It carries the attributes of a
:class:`~fibrosis.model.net.FibrosisNet` that those stages read.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from fibrosis.model.net import FibrosisNet, build_model
from fibrosis.model.tta import TTA, Variant, make_tta

class EnsembleNet(nn.Module):
    """``members`` share arch and preprocessing; forward = mean of their logits."""

    def __init__(self, members: Sequence[FibrosisNet]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for m in members[1:]:
            if m.arch != first.arch or m.preprocessing != first.preprocessing or m.aux_names != first.aux_names:
                raise ValueError(f"ensemble members differ: {m.arch}@{m.preprocessing.input_size} "
                                 f"aux {list(m.aux_names)} vs {first.arch}@{first.preprocessing.input_size} "
                                 f"aux {list(first.aux_names)}; expected one arch, preprocessing and set of heads")
        if any(m.tta is not None for m in members):
            # TTA belongs to the ensemble: every member sees the same views once, not V x V.
            raise ValueError("ensemble members carry TTA; set it on the ensemble (set_tta) instead")
        self.members = nn.ModuleList(members)
        self.arch = first.arch
        self.num_features = first.num_features
        self.preprocessing = first.preprocessing
        self.weights_info = dict(first.weights_info)
        self.pretrained = first.pretrained
        # Grad-CAM needs one layer; with averaged logits the gradient reaching member 0's last
        # block is its own CAM (scaled by 1/k), i.e. the panels show member 0's evidence.
        self.cam_layer_name = f"members.0.{first.cam_layer_name}"
        self.aux_names = first.aux_names
        self.tta: TTA | None = None  # test-time augmentation in eval mode: set_tta

    def nets(self) -> Iterable[FibrosisNet]:
        """The members: the FibrosisNets given to ``__init__`` (ModuleList types them Module)."""
        return cast("Iterable[FibrosisNet]", self.members)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over members of (B, 1 + len(aux_names)) logits (see FibrosisNet.forward_all)."""
        return torch.stack([m.forward_all(x) for m in self.nets()]).mean(0)

    def set_tta(self, variants: Sequence[Variant] | None) -> "EnsembleNet":
        """Average eval-mode logits over ``variants`` (fibrosis.model.tta); None: off."""
        self.tta = make_tta(variants, self)
        return self

    @property
    def cam_layer(self) -> nn.Module:
        return self.get_submodule(self.cam_layer_name)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Mean member logit of ``x`` as given, never augmented (Grad-CAM explains this one)."""
        return torch.stack([m.forward_plain(x) for m in self.nets()]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta is not None and not self.training:
            return self.tta(x, self.forward_plain)
        return self.forward_plain(x)


def build_ensemble(arch: str, n_members: int, **shape: Any) -> EnsembleNet:
    """An untrained ensemble of ``n_members`` randomly initialised members (load a state dict
    next); ``shape``: build_model's keywords (input_size, dropout, resize, gray_fold)."""
    return EnsembleNet([build_model(arch, "none", **shape) for _ in range(n_members)])
