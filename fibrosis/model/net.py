"""The classifier: an ImageNet CNN backbone with its classifier removed and a one-logit head.

Grayscale input: the model takes the gray image in [0, 1] (one channel, 3x less input
bandwidth than RGB) and its first convolution is :class:`GrayRGBStem`: the pretrained RGB
weights applied to three copies of the image, each normalised by that channel's own
ImageNet mean/std. That is exactly what the pretrained network computes for a gray
photograph, the zero padding at the border included; the only extra cost is the first
convolution's three input channels. (Summing the RGB weights onto one channel normalised by
the average statistics is not exact: each channel's input would be offset by up to 0.18 of
its standard deviation, and the padding would mean another gray. Checkpoints written that
way record ``gray_fold: summed`` and are rebuilt with that stem, so they score as before.)

Weights:
- ``imagenet``: torchvision's weights for the arch, from the torch hub cache, downloaded
  there if missing, and refused unless their sha256 matches the prefix torchvision
  embeds in the file name. Offline, the error says which file to put where.
- a path: a torchvision-layout state dict loaded with ``weights_only=True``; keys are
  checked strictly (only the ImageNet classifier may be missing or extra).
- ``none``: random init (tests).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import torch
import torchvision
from torch import nn

from fibrosis.config import ResizeMethod
from fibrosis.data.records import GrayFold, Preprocessing
from fibrosis.model.arch import ArchSpec, arch_spec
from fibrosis.model.tta import DEFAULT_VARIANTS, TTA, Variant, make_tta
from fibrosis.io import file_sha256

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Pretrained weights are unavailable, corrupt or do not fit the architecture."""


class FibrosisNet(nn.Module):
    """Backbone (torchvision layout under ``backbone.``) + dropout + Linear(features, 1)."""

    def __init__(self, arch: str, backbone: nn.Module, num_features: int, dropout: float,
                 preprocessing: Preprocessing, weights_info: dict[str, Any]):
        super().__init__()
        self.arch = arch
        self.backbone = backbone
        self.num_features = num_features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, 1))
        self.preprocessing = preprocessing
        self.weights_info = weights_info
        self.pretrained = bool(weights_info.get("pretrained", False))
        self.cam_layer_name = f"backbone.{arch_spec(arch).cam_layer}"
        # Module names kept in eval mode by train(): set by fibrosis.train.schedule.freeze.
        self.frozen_eval: tuple[str, ...] = ()
        # Auxiliary findings: extra logits on the same pooled features, trained
        # jointly so the backbone learns from every labelled finding. They are never part of
        # forward(): calibration, thresholds, engines, Grad-CAM and scoring see fibrosis only.
        self.aux_names: tuple[str, ...] = ()
        self.aux_head: nn.Sequential | None = None
        self.tta: TTA | None = None  # test-time augmentation in eval mode: set_tta

    def set_tta(self, variants: Sequence[Variant] | None) -> "FibrosisNet":
        """Average eval-mode logits over ``variants`` (fibrosis.model.tta); None: off."""
        self.tta = make_tta(variants, self)
        return self

    @property
    def cam_layer(self) -> nn.Module:
        return self.get_submodule(self.cam_layer_name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) normalised gray -> (B, num_features) pooled features."""
        return self.backbone(x)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """(B, num_features) -> (B, 1) logits: a class axis like any classifier, so CAM code,
        DDP and ONNX see a standard model; losses and predictors take column 0."""
        return self.head(f)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` as given, never augmented (Grad-CAM explains this one)."""
        return self.forward_head(self.forward_features(x))

    def forward_aux(self, f: torch.Tensor) -> torch.Tensor:
        """(B, num_features) -> (B, len(aux_names)) auxiliary logits."""
        if self.aux_head is None:
            raise RuntimeError("this model has no auxiliary heads (see set_aux_heads)")
        return self.aux_head(f)

    def forward_heads(self, f: torch.Tensor) -> torch.Tensor:
        """(B, num_features) -> (B, 1 + len(aux_names)) logits: fibrosis first, then the
        auxiliary findings (just fibrosis's (B, 1) without auxiliary heads)."""
        if self.aux_head is None:
            return self.forward_head(f)
        return torch.cat([self.forward_head(f), self.forward_aux(f)], 1)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> :meth:`forward_heads` logits, un-augmented."""
        return self.forward_heads(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TTA only in eval mode: training sees its own random augmentation, once per image.
        if self.tta is not None and not self.training:
            return self.tta(x, self.forward_plain)
        return self.forward_plain(x)

    def train(self, mode: bool = True) -> "FibrosisNet":
        # Frozen blocks stay in eval mode whatever the caller does: BatchNorm running
        # statistics must not move and stochastic depth must not fire in a block that
        # does not learn (this also makes a frozen backbone a fixed function, which is
        # what lets the head stage train on cached features).
        super().train(mode)
        if mode:
            for name in self.frozen_eval:
                self.get_submodule(name).eval()
        return self


def set_aux_heads(model: FibrosisNet, names: tuple[str, ...] | list[str]) -> FibrosisNet:
    """Attach one logit per auxiliary finding (``names``; empty removes them), zero-initialised:
    a fresh head contributes no gradient to the backbone until it has learned something, so
    adding heads never kicks pretrained features at the first step."""
    names = tuple(names)
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(f"auxiliary finding names {list(names)}; expected distinct non-empty names")
    model.aux_names = names
    if not names:
        model.aux_head = None
        return model
    linear = nn.Linear(model.num_features, len(names))
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    dropout = model.head[0].p if isinstance(model.head[0], nn.Dropout) else 0.0
    model.aux_head = nn.Sequential(nn.Dropout(dropout), linear)
    return model


class GrayRGBStem(nn.Conv2d):
    """The pretrained 3-channel stem convolution on a (B, 1, H, W) gray image in [0, 1]:
    channel c gets (gray - mean_c) / std_c, as the pretrained network expects. Its weights keep
    their torchvision name and shape; the statistics are buffers, so they travel with them."""

    rgb_mean: torch.Tensor
    rgb_std: torch.Tensor

    def __init__(self, conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float]):
        if conv.in_channels != 3:
            raise ValueError(f"first conv has {conv.in_channels} input channels; expected 3")
        # torch types a conv's geometry attributes tuple[int, ...], Conv2d's parameters tuple[int, int].
        super().__init__(3, conv.out_channels,
                         conv.kernel_size, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                         conv.groups, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                assert self.bias is not None  # built with a bias just above
                self.bias.copy_(conv.bias)
        self.register_buffer("rgb_mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            raise ValueError(f"input has {x.shape[1]} channels; expected one gray channel in [0, 1]")
        return super().forward((x - self.rgb_mean) / self.rgb_std)


def fold_first_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """3-channel conv -> 1-channel conv with weights summed over RGB (the ``summed`` gray fold
    of older checkpoints; see the module docstring for why it is not exact)."""
    if conv.in_channels != 3:
        raise ValueError(f"first conv has {conv.in_channels} input channels; expected 3")
    # torch types a conv's geometry attributes tuple[int, ...], Conv2d's parameters tuple[int, int].
    folded = nn.Conv2d(1, conv.out_channels,
                       conv.kernel_size, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                       conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            assert folded.bias is not None  # built with a bias just above
            folded.bias.copy_(conv.bias)
    return folded


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _classifier_in_features(net: nn.Module, spec: ArchSpec) -> int:
    clf = net.get_submodule(spec.classifier)
    linear = clf if isinstance(clf, nn.Linear) else [m for m in clf.modules() if isinstance(m, nn.Linear)][-1]
    return linear.in_features


_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def load_state_strict(net: nn.Module, state: dict[str, torch.Tensor], spec: ArchSpec, source: str) -> None:
    """Load a torchvision-layout state dict; only the ImageNet classifier may be missing or extra."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: expected a state dict of tensors (torchvision layout)")
    if spec.densenet_keys:  # torchvision's own DenseNet files use "norm.1" style names
        state = {(_DENSENET_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
    own = net.state_dict()
    is_clf: Callable[[str], bool] = lambda k: k.startswith(spec.classifier + ".")  # noqa: E731
    missing = sorted(k for k in own if k not in state and not is_clf(k))
    unexpected = sorted(k for k in state if k not in own and not is_clf(k))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: keys do not match torchvision {type(net).__name__}: "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and not is_clf(k) and v.shape != own[k].shape]
    if bad:
        raise WeightsError(f"{source}: tensor shapes do not match: {bad[:5]}")
    body = {k: v for k, v in state.items() if not is_clf(k)}
    net.load_state_dict(body, strict=False)


def _hash_prefix(filename: str) -> str | None:
    m = re.search(r"-([0-9a-f]{8,})\.pth$", filename)
    return m.group(1) if m else None


def imagenet_file(arch: str) -> tuple[Any, Path]:
    """torchvision's default ImageNet weights enum for ``arch`` and where the hub cache keeps it."""
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    return enum, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)


def fetch_imagenet(arch: str) -> tuple[Path, str]:
    """(path, sha256) of torchvision's ImageNet file for ``arch``, downloading it if absent;
    hash-checked against the prefix in torchvision's file name."""
    enum, path = imagenet_file(arch)
    prefix = _hash_prefix(path.name)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(enum.url, str(path), hash_prefix=prefix, progress=False)
        except Exception as exc:  # URLError, timeouts, hash mismatch, read-only dir...
            raise WeightsError(
                f"ImageNet weights for {arch} ({enum}) are not available: download of {enum.url} "
                f"failed ({type(exc).__name__}: {exc}). Either place the file {path.name!r} "
                f"(from {enum.url}) in {path.parent}/, or set `model.weights: /path/to/{path.name}` "
                f"in the config. Random init is never used silently for real runs.") from exc
    digest = file_sha256(path)
    if prefix and not digest.startswith(prefix):
        raise WeightsError(f"{path}: sha256 {digest[:16]}... does not start with {prefix!r} as "
                           f"torchvision's file name promises; the file is corrupt or not {enum.url}")
    return path, digest


def make_preprocessing(input_size: int, gray_fold: str = "rgb-stem", resize: str = "area") -> Preprocessing:
    """The input a model built by :func:`build_model` wants (see ``Preprocessing`` for the codes)."""
    if gray_fold == "rgb-stem":  # gray in [0, 1]: the stem normalises each channel itself
        mean, std = 0.0, 1.0
    elif gray_fold == "summed":
        mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    else:
        raise ValueError(f"gray_fold={gray_fold!r}; allowed: {list(get_args(GrayFold))}")
    if resize not in get_args(ResizeMethod):
        raise ValueError(f"model.resize={resize!r}; allowed: {list(get_args(ResizeMethod))}")
    return Preprocessing(input_size=int(input_size), in_chans=1, mean=mean, std=std,
                         rgb_mean=tuple(IMAGENET_MEAN), rgb_std=tuple(IMAGENET_STD),
                         gray_fold=gray_fold, resize=resize)


def build_model(arch: str, weights: str = "none", *, weights_sha256: str | None = None,
                allow_random_init: bool = False, input_size: int = 224, dropout: float = 0.0,
                resize: str = "area", gray_fold: str = "rgb-stem") -> FibrosisNet:
    """Build a one-logit gray-input classifier; see the module docstring for ``weights``.
    ``gray_fold``: "summed" only to rebuild a checkpoint written with that stem."""
    spec = arch_spec(arch)
    preprocessing = make_preprocessing(input_size, gray_fold, resize)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout!r}; expected 0 <= dropout < 1")
    net = torchvision.models.get_model(arch, weights=None)
    info: dict[str, Any] = {"source": "none", "sha256": None, "pretrained": False}
    path: Path | None = None
    digest: str | None = None  # known already when fetch_imagenet hashed the file
    if weights == "imagenet":
        try:
            path, digest = fetch_imagenet(arch)
            info["source"] = f"imagenet:{imagenet_file(arch)[0]}"
        except WeightsError as exc:
            if not allow_random_init:
                raise
            logger.warning("!" * 72)
            logger.warning("WARNING: %s", exc)
            logger.warning("WARNING: allow_random_init=True (demo only): the backbone is NOT "
                           "pretrained; results do not reflect transfer learning.")
            logger.warning("!" * 72)
            info["source"] = "random-init (imagenet weights unavailable)"
    elif weights != "none":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights={weights!r}: file not found; expected 'imagenet', "
                               f"'none' or the path of a torchvision {arch} state dict (.pth)")
        info["source"] = str(path)
    if path is not None:
        digest = digest or file_sha256(path)
        if weights_sha256 and digest != weights_sha256.lower():
            raise WeightsError(f"{path}: sha256 {digest}; expected model.weights_sha256={weights_sha256}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled code, truncated or foreign file
            raise WeightsError(f"{path}: not loadable as a plain state dict with weights_only=True "
                               f"({type(exc).__name__}: {str(exc)[:300]})") from exc
        load_state_strict(net, state, spec, str(path))
        info.update(sha256=digest, pretrained=True, file=path.name)
        logger.info("loaded %s weights from %s (sha256 %s)", arch, path, digest)
    elif weights == "none":
        # Debug, not info: load_model and ensembles build this skeleton and load trained weights
        # next; a run that really trains from random init says so loudly in fibrosis.train.
        logger.debug("%s: built without pretrained weights (model.weights=none)", arch)
    num_features = _classifier_in_features(net, spec)
    stem = net.get_submodule(spec.first_conv)
    _set_module(net, spec.first_conv, GrayRGBStem(stem, IMAGENET_MEAN, IMAGENET_STD)
                if gray_fold == "rgb-stem" else fold_first_conv(stem))
    _set_module(net, spec.classifier, nn.Identity())
    return FibrosisNet(arch, net, num_features, dropout, preprocessing, info)


def build_model_from_config(mcfg: Any) -> FibrosisNet:
    """Adapter from ``fibrosis.config.ModelConfig``; ``model.tta`` attaches DEFAULT_VARIANTS
    (the checkpoint records them, so a later change of the defaults leaves this model alone)."""
    model = build_model(mcfg.arch, mcfg.weights, weights_sha256=mcfg.weights_sha256,
                        allow_random_init=mcfg.allow_random_init, input_size=mcfg.input_size,
                        dropout=mcfg.dropout, resize=mcfg.resize)
    return model.set_tta(DEFAULT_VARIANTS if mcfg.tta else None)
