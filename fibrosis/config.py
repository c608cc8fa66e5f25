"""Configuration: frozen dataclasses loaded from YAML, unknown keys rejected.

Every stage reads its own section. The resolved config (defaults + YAML + CLI
overrides) is saved inside each checkpoint so that scoring cannot drift from
training. Keys are strict on purpose: a typo such as ``learning_rate:`` instead
of ``lr:`` must fail loudly rather than silently train with the default.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class IngestConfig:
    image_size: int = 512  # side of the square cache image (aspect kept, padded)
    cache_dtype: str = "uint8"  # uint8 | uint16
    workers: int = 0  # 0 = one per CPU core
    shard_size: int = 64  # images per cache shard (also the commit unit for resume)
    max_rows: int = 16384  # refuse before decoding: absurd dimensions
    max_cols: int = 16384
    min_side: int = 256  # smaller than this is not a diagnostic radiograph
    # Bytes a worker may hold for one input, so its memory is bounded by the largest
    # legitimate image, not by a hostile file: 600 MiB covers max_rows x max_cols at
    # 16 bits (512 MiB) plus headers. A larger file is refused before it is read.
    max_file_mb: int = 600
    # Deflated Explicit VR Little Endian: a few MB can inflate to many GB, so the
    # inflated dataset is measured (streaming) before pydicom inflates it in memory.
    max_inflated_mb: int = 600
    voi_percentiles: tuple[float, float] = (0.5, 99.5)  # fallback window
    j2k_reduce: bool = True  # decode JPEG 2000 at a reduced resolution level
    allowed_modalities: tuple[str, ...] = ("CR", "DX")
    allowed_body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "")  # "" = tag absent
    excluded_views: tuple[str, ...] = ("LL", "RL", "LLD", "RLD", "LATERAL", "LAT")
    # Words in series/image-level descriptions (SeriesDescription, ProtocolName,
    # AcquisitionDeviceProcessingDescription, protocol/anatomy codes) that mark a
    # non-chest or non-human image even when BodyPartExamined is absent or says THORAX.
    excluded_description_terms: tuple[str, ...] = (
        "TEETH", "DENTAL", "PANORAMIC", "OPG", "SKULL", "SINUS", "HAND", "WRIST", "FINGER",
        "FOOT", "ANKLE", "KNEE", "HIP", "PELVIS", "FEMUR", "HUMERUS", "ELBOW", "SHOULDER",
        "SPINE", "CSPINE", "TSPINE", "LSPINE", "ABDOMEN", "KUB", "EXTREMITY", "MAMMO", "BREAST",
        "CANINE", "FELINE", "EQUINE", "BOVINE", "VETERINARY", "DOG", "CAT", "HORSE")
    labels_csv: str | None = None
    label_column: str = "fibrosis"


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    calib: float = 0.0  # optional separate calibration split
    seed: int = 0
    near_duplicate_hamming: int = 4  # bits of a 256-bit dHash at or below which images are near-duplicates


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    weights: str = "imagenet"  # imagenet | none | path/to/weights.pth
    weights_sha256: str | None = None  # expected hash of a local weights file
    allow_random_init: bool = False  # demo only: proceed when ImageNet weights are unavailable
    input_size: int = 224
    dropout: float = 0.0


@dataclass(frozen=True)
class StageConfig:
    name: str = "head"
    epochs: int = 1
    lr: float = 1e-3
    # Which backbone blocks train in this stage: [] = head only, ["layer4"], or ["all"].
    unfreeze: tuple[str, ...] = ()
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-4
    layer_decay: float = 1.0  # <1: discriminative lr, earlier blocks get lr * decay**depth


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    affine_degrees: float = 7.0
    affine_scale: tuple[float, float] = (0.9, 1.1)
    affine_translate: float = 0.05
    brightness_contrast: float = 0.15
    gamma: tuple[float, float] = (0.85, 1.15)
    noise_std: float = 0.02
    horizontal_flip: bool = False  # off: situs (heart on the left) is anatomy, not noise
    p: float = 0.5  # probability of each transform above


@dataclass(frozen=True)
class TrainConfig:
    preset: str | None = "partial"  # head-only | partial | full | auto | None (use `stages`)
    stages: tuple[StageConfig, ...] = ()
    batch_size: int = 32
    num_workers: int = 2
    seed: int = 0
    imbalance: str = "pos_weight"  # pos_weight | sampler | none
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping_patience: int = 5  # epochs without val-AUC gain (0 = off)
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True
    compile: bool = False
    cache_features: bool = True  # head-only stage on a frozen backbone: compute features once
    mlflow_uri: str | None = None
    # Preset stage parameters (ignored when `stages` is given). head-only spends
    # head_epochs + finetune_epochs on the head, so all presets get the same budget.
    head_epochs: int = 5
    head_lr: float = 1e-3
    finetune_epochs: int = 15
    finetune_lr: float = 1e-4  # 10x lower than the head: pretrained features move gently
    finetune_warmup_epochs: float = 1.0
    layer_decay: float = 1.0  # `full` preset: <1 gives earlier blocks lr * decay**depth
    auto_full_min_train: int = 10000  # preset `auto`: full at or above this many train images
    val_batch_size: int | None = None  # default: 2 x batch_size
    deterministic: bool = True  # monai set_determinism; False lets cuDNN pick fastest kernels


@dataclass(frozen=True)
class EvaluateConfig:
    bootstrap_resamples: int = 2000
    ci_level: float = 0.95
    ece_bins: int = 10
    # platt (default): a*logit + b. Class weighting (pos_weight, sampler) shifts the
    # logit by about log(pos_weight); temperature scaling (logit / T) cannot undo a shift.
    calibration: str = "platt"  # platt | temperature | isotonic | none
    target_sensitivities: tuple[float, ...] = (0.90, 0.95)
    deployment_prevalence: float | None = None
    subgroups: tuple[str, ...] = ("sex", "age_band", "view_position", "manufacturer")
    min_subgroup_n: int = 30
    min_subgroup_positives: int = 5
    seed: int = 0
    ece_strategy: str = "uniform"  # uniform (equal-width bins) | quantile (equal-count bins)
    fit_split: str = "auto"  # split that fits calibration + thresholds: auto (calib if any, else val) | val | calib
    gradcam_per_kind: int = 2  # Grad-CAM panels per kind (most confident TP, FP, FN); 0 = none
    data_source: str | None = None  # one line for the report header, e.g. "NIH ChestX-ray14 sample"


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = 32
    workers: int = 0  # 0 = one per CPU core
    study_aggregate: str = "max"  # max | mean
    gradcam: bool = False
    # auto | eager | channels_last | bf16 | onnx (see fibrosis.engine; auto = first of a
    # fixed per-device order that agrees with eager fp32 within fibrosis.engine.TOLERANCES)
    engine: str = "auto"


@dataclass(frozen=True)
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


# ---------------------------------------------------------------- loading


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        # PyYAML (YAML 1.1) reads `1e-3` as a string; accept such plain numerals.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {unknown}; allowed: {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``train.batch_size=16`` -> {"train": {"batch_size": 16}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = yaml.safe_load(raw)
    return node


# Allowed values of the enumerated keys: checked when the config is loaded, so a
# typo fails in the first second rather than after hours of training.
CHOICES: dict[str, tuple[Any, ...]] = {
    "ingest.cache_dtype": ("uint8", "uint16"),
    "train.preset": ("head-only", "partial", "full", "auto", None),
    "train.imbalance": ("pos_weight", "sampler", "none"),
    "evaluate.calibration": ("temperature", "platt", "isotonic", "none"),
    "evaluate.ece_strategy": ("uniform", "quantile"),
    "evaluate.fit_split": ("auto", "val", "calib"),
    "score.study_aggregate": ("max", "mean"),
    "score.engine": ("auto", "eager", "channels_last", "bf16", "onnx"),
}


def validate(cfg: Config) -> Config:
    """Check enumerations and ranges; raise ConfigError naming the key, value and allowed set."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    fractions = {k: getattr(cfg.split, k) for k in ("train", "val", "test", "calib")}
    if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"split: fractions {fractions} must be >= 0 and sum to 1")
    if not 0.0 < cfg.evaluate.ci_level < 1.0:
        raise ConfigError(f"evaluate.ci_level: {cfg.evaluate.ci_level} must lie in (0, 1)")
    for s in cfg.evaluate.target_sensitivities:
        if not 0.0 < s <= 1.0:
            raise ConfigError(f"evaluate.target_sensitivities: {s} must lie in (0, 1]")
    prev = cfg.evaluate.deployment_prevalence
    if prev is not None and not 0.0 < prev < 1.0:
        raise ConfigError(f"evaluate.deployment_prevalence: {prev} must lie in (0, 1)")
    for key in ("ingest.image_size", "model.input_size", "train.batch_size", "score.batch_size",
                "ingest.shard_size", "evaluate.ece_bins"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key}: {getattr(getattr(cfg, section), name)} must be >= 1")
    for name in ("max_file_mb", "max_inflated_mb"):  # 0 or less would refuse every file
        if getattr(cfg.ingest, name) < 1:
            raise ConfigError(f"ingest.{name}: {getattr(cfg.ingest, name)} must be >= 1 (MiB)")
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    return validate(_build(Config, data or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``a.b=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    for text in overrides:
        data = _merge(data, parse_override(text))
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)
