"""Test-time augmentation (TTA): the model's logit is the mean logit over a few small
rotations and scalings of the input.

Why these variants (``DEFAULT_VARIANTS``): identity, rotation by -5 and +5 degrees, and
scaling by 0.93 and 1.07. They lie inside the training augmentation's range
(``train.augment``: up to 7 degrees, scale 0.9-1.1), so a trained model has seen inputs
like them, and they model what really varies between chest radiographs: patient tilt,
source-to-detector distance and collimation. No flips and no shear: a mirrored chest is a
different anatomy (situs, heart on the left), not the same image seen again; every
variant's matrix has a positive determinant. No translation either: the cache centres
and pads every image the same way, so a shift adds nothing a scale does not. Five
variants cost five forward passes per image; more, smaller steps buy little variance.

The warp is done in torch (``F.affine_grid`` + ``F.grid_sample``, bilinear) inside the
model's forward, so every engine (eager, channels_last, bf16, the ONNX export) runs the
same graph. Where a variant looks outside the image it sees *black* -- the normalised
value of intensity 0 -- which is what the cache pads with and what the training
augmentation fills with (``border_mode=BORDER_CONSTANT, fill=0``); ``grid_sample``'s own
zero padding would be mid-gray after normalisation, and 'border' would smear the edge
rows (collimator edges, labels) into the corners. An identity variant skips the warp,
so an identity-only TTA is exactly the plain model.

The variants are plain data: a checkpoint stores them (:class:`TTARecord`) and a loaded model
gets them back, so scoring reproduces what was chosen in training even
if ``DEFAULT_VARIANTS`` changes later.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TTA_FORMAT = 1


@dataclass(frozen=True)
class Variant:
    """One test-time view: rotate by ``rotate_deg`` (counter-clockwise as displayed) and scale
    the content by ``scale`` (> 1 zooms in) about the image centre."""

    name: str
    rotate_deg: float = 0.0
    scale: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self.rotate_deg == 0.0 and self.scale == 1.0

    def theta(self) -> list[list[float]]:
        """The 2x3 ``F.affine_grid`` matrix: output (normalised) coordinates -> where to sample
        the input. The inverse of the content transform: rotate back, divide by the scale."""
        a = math.radians(self.rotate_deg)
        c, s = math.cos(a) / self.scale, math.sin(a) / self.scale
        return [[c, -s, 0.0], [s, c, 0.0]]


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("identity"),
    Variant("rot-5", rotate_deg=-5.0),
    Variant("rot+5", rotate_deg=5.0),
    Variant("scale0.93", scale=0.93),
    Variant("scale1.07", scale=1.07),
)
_FIELDS = tuple(f.name for f in fields(Variant))
MAX_ROTATE_DEG = 30.0  # bounds for a stored record: anything larger is not a "small" variant
SCALE_RANGE = (0.5, 2.0)


@dataclass(frozen=True, slots=True)
class TTARecord:
    """The checkpoint's ``tta`` entry (and a tune twin's ``tta_variants``): the variants, with the
    combination and padding they imply in words."""
    variants: tuple[Variant, ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": TTA_FORMAT, "combine": "mean logit", "padding": "black (normalised intensity 0)",
                "variants": [asdict(v) for v in self.variants]}

    @classmethod
    def from_json(cls, record: Any, source: str = "checkpoint") -> "TTARecord":
        """Validated variants of a stored entry; ValueError naming ``source`` otherwise."""
        if not isinstance(record, dict) or record.get("format") != TTA_FORMAT or \
                not isinstance(record.get("variants"), list) or not record["variants"]:
            raise ValueError(f"{source}: tta={str(record)[:200]!r}; expected None or "
                             f"{{'format': {TTA_FORMAT}, 'variants': [{{{', '.join(_FIELDS)}}}, ...]}}")
        out = []
        for i, v in enumerate(record["variants"]):
            if not isinstance(v, dict) or set(v) != set(_FIELDS):
                raise ValueError(f"{source}: tta.variants[{i}]={str(v)[:120]!r}; expected exactly the keys {list(_FIELDS)}")
            out.append(Variant(str(v["name"]), float(v["rotate_deg"]), float(v["scale"])))
        check_variants(out, source)
        return cls(tuple(out))

    @classmethod
    def of(cls, variants: Sequence[Variant] | None) -> "TTARecord | None":
        """The record of ``variants`` (None: no TTA)."""
        return None if variants is None else cls(tuple(variants))


def check_variants(variants: Sequence[Variant], source: str = "tta") -> None:
    """Small, orientation-preserving, uniquely named variants; raise ValueError otherwise."""
    if not variants:
        raise ValueError(f"{source}: no TTA variants; expected at least one (or no TTA at all)")
    names = [v.name for v in variants]
    for v in variants:
        if names.count(v.name) > 1:
            raise ValueError(f"{source}: TTA variant name {v.name!r} repeats; names must be unique")
        if not (math.isfinite(v.rotate_deg) and abs(v.rotate_deg) <= MAX_ROTATE_DEG):
            raise ValueError(f"{source}: TTA variant {v.name!r} rotate_deg={v.rotate_deg!r}; "
                             f"allowed: |rotate_deg| <= {MAX_ROTATE_DEG:g}")
        if not (math.isfinite(v.scale) and SCALE_RANGE[0] <= v.scale <= SCALE_RANGE[1]):
            raise ValueError(f"{source}: TTA variant {v.name!r} scale={v.scale!r}; "
                             f"allowed: {SCALE_RANGE[0]:g} <= scale <= {SCALE_RANGE[1]:g} (no flips)")


def describe(variants: Sequence[Variant] | None) -> str:
    """One line for logs and the report."""
    if not variants:
        return "none"
    return f"mean logit over {len(variants)} views: " + ", ".join(v.name for v in variants)


class TTA(nn.Module):
    """Applies ``variants`` around a plain forward: (B, ...) logits = mean over the views.

    No parameters and no persistent buffers, so a model's state dict is the same with or
    without TTA; the matrices are a non-persistent buffer that follows ``.to(device)``.
    """

    theta: torch.Tensor

    def __init__(self, variants: Sequence[Variant], pad_value: float):
        super().__init__()
        check_variants(variants)
        self.variants = tuple(variants)
        self.pad_value = float(pad_value)
        self.identity = [v.is_identity for v in self.variants]
        warped = [v for v in self.variants if not v.is_identity]
        self.register_buffer("theta", torch.tensor([v.theta() for v in warped], dtype=torch.float32)
                             .reshape(len(warped), 2, 3), persistent=False)

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (V * B, C, H, W): every view of the batch, variant-major."""
        b = x.shape[0]
        views = []
        k = 0
        for ident in self.identity:
            if ident:
                views.append(x)
                continue
            theta = self.theta[k:k + 1].to(x.dtype).expand(b, 2, 3)
            k += 1
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            # grid_sample pads with 0; shifting by the pad value makes the outside black.
            views.append(F.grid_sample(x - self.pad_value, grid, mode="bilinear", padding_mode="zeros",
                                       align_corners=False) + self.pad_value)
        return torch.cat(views) if len(views) > 1 else views[0]

    def forward(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        b = x.shape[0]
        out = fn(self.warp(x))  # one batch of V * B: one graph, one pass through the network
        return out.reshape(len(self.variants), b, *out.shape[1:]).mean(0)

    def extra_repr(self) -> str:
        return describe(self.variants)


def black(preprocessing: Any) -> float:
    """The normalised value of intensity 0: what the cache pads with."""
    return (0.0 - float(preprocessing.mean)) / float(preprocessing.std)


def make_tta(variants: Sequence[Variant] | None, model: nn.Module) -> TTA | None:
    """A TTA module for ``model`` (padding from its preprocessing, on its device), or None."""
    if variants is None:
        return None
    param = next(model.parameters(), None)
    tta = TTA(variants, black(model.preprocessing))
    return tta.to(param.device) if param is not None else tta


def variants_of(model: nn.Module) -> tuple[Variant, ...] | None:
    """The TTA variants a model applies in eval mode (None: no TTA)."""
    tta = getattr(model, "tta", None)
    return tta.variants if tta is not None else None
