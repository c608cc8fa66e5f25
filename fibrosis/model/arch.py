"""The one architecture registry: everything the pipeline must know about a backbone.

Per torchvision architecture: the stem convolution (folded to one gray channel), the
classifier (replaced by the fibrosis head), the ordered *block groups* that the
freeze-then-unfreeze schedule trains or freezes (stem first, last block last), which of
them "the last blocks" are for the ``partial`` preset, and the Grad-CAM target layer.
Adding an architecture means adding one entry here, nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    first_conv: str  # module path of the RGB stem convolution (folded to one channel)
    classifier: str  # module replaced by Identity; its keys may be absent from a weights file
    cam_layer: str  # last convolutional block: the Grad-CAM target
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (group name, backbone module names), stem first
    # "The last blocks" for the `partial` preset: the stride-32 stage(s), whose features are the
    # most ImageNet-specific and the first to re-learn for X-rays. One rule for every arch;
    # deeper unfreezing (e.g. layer3+layer4) is an explicit stage's `unfreeze` list.
    partial: tuple[str, ...]
    densenet_keys: bool = False  # old-style "norm.1" keys in torchvision's DenseNet files

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)


def _numbered(n: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((f"features.{i}", (f"features.{i}",)) for i in range(n))


_RESNET = ArchSpec(
    "conv1", "fc", "layer4",
    groups=(("stem", ("conv1", "bn1")), *((f"layer{i}", (f"layer{i}",)) for i in range(1, 5))),
    partial=("layer4",))
ARCHS: dict[str, ArchSpec] = {
    **{f"resnet{d}": _RESNET for d in (18, 34, 50, 101, 152)},
    "densenet121": ArchSpec(
        "features.conv0", "classifier", "features.norm5",
        groups=(("stem", ("features.conv0", "features.norm0")),
                *((f"denseblock{i}", (f"features.denseblock{i}", f"features.transition{i}")) for i in range(1, 4)),
                ("denseblock4", ("features.denseblock4", "features.norm5"))),
        partial=("denseblock4",), densenet_keys=True),
    "efficientnet_b0": ArchSpec("features.0.0", "classifier", "features.8", groups=_numbered(9),
                                partial=("features.6", "features.7", "features.8")),
    "mobilenet_v2": ArchSpec("features.0.0", "classifier", "features.18", groups=_numbered(19),
                             partial=tuple(f"features.{i}" for i in range(14, 19))),
}


def arch_spec(arch: str) -> ArchSpec:
    """The registry entry of ``arch``; ValueError naming the allowed set otherwise."""
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r}; allowed: {sorted(ARCHS)}")
    return ARCHS[arch]
