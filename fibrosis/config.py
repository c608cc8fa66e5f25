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
    # auto | eager | channels_last | bf16 | onnx (see fibrosis.model.engine; auto = first of a
    # fixed per-device order that agrees with eager fp32 within fibrosis.model.engine.TOLERANCES)
    engine: str = "auto"


@dataclass(frozen=True)
class ArmConfig:
    """One arm of `fibrosis tune`: how the backbone starts and how much of it fine-tunes."""

    name: str = "head-only"
    init: str = "pretrained"  # pretrained (model.weights) | random
    # none (linear probe only) | last1, last2, ... (the last N resolution stages) | all
    unfreeze: str = "none"
    lr_ratio: float = 1.0  # backbone lr = tune.lr / lr_ratio (10: 10x below the head's)
    arch: str | None = None  # optional axis: overrides model.arch for this arm
    input_size: int | None = None  # optional axis: overrides model.input_size for this arm


DEFAULT_ARMS: tuple[ArmConfig, ...] = (
    ArmConfig("random-init", init="random", unfreeze="all", lr_ratio=1.0),
    ArmConfig("head-only"),
    ArmConfig("last1-x0.1", unfreeze="last1", lr_ratio=10.0),
    ArmConfig("last1-x0.01", unfreeze="last1", lr_ratio=100.0),
    ArmConfig("last2-x0.1", unfreeze="last2", lr_ratio=10.0),
    ArmConfig("last2-x0.01", unfreeze="last2", lr_ratio=100.0),
    ArmConfig("all-x0.1", unfreeze="all", lr_ratio=10.0),
    ArmConfig("all-x0.01", unfreeze="all", lr_ratio=100.0),
)


@dataclass(frozen=True)
class TuneConfig:
    folds: int = 5  # patient-level, label-stratified k-fold over train + val (never test/calib)
    repeats: int = 1  # repeated k-fold: each repeat re-deals the folds
    seed: int = 0
    arms: tuple[ArmConfig, ...] = DEFAULT_ARMS
    # Linear probe: L2 logistic regression by L-BFGS on standardised frozen features; the
    # inverse regularisation C is chosen by inner grouped CV (log-loss) inside each training fold.
    # With a few hundred images and 512-2048 features the useful range reaches far down; a C
    # chosen at either end of the grid is logged as a warning (extend the grid).
    probe_c: tuple[float, ...] = (1e-6, 1e-5, 0.0001, 0.001, 0.01, 0.1, 1.0)
    probe_inner_folds: int = 3
    lr: float = 0.001  # head lr while fine-tuning; the backbone gets lr / arm.lr_ratio
    weight_decay: float = 0.0001
    max_epochs: int = 10  # fine-tuning epochs per fold; the budget is chosen from the OOF curves
    min_epochs: int = 1  # a fine-tuning arm runs at least this many epochs (0 = may stay the probe)
    batch_size: int = 32
    selection: str = "one-se"  # one-se (least-unfrozen arm within 1 SE of the best) | best
    final: str = "ensemble"  # ensemble (the k fold models, mean logit) | refit (one model on all dev data)
    cache_mb: int = 4096  # frozen-prefix activations kept in memory up to this size, else recomputed per batch


@dataclass(frozen=True)
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


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


def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
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
    "tune.selection": ("one-se", "best"),
    "tune.final": ("ensemble", "refit"),
}
ARM_INITS = ("pretrained", "random")
_ARM_UNFREEZE = re.compile(r"none|all|last[1-9]\d*")


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
    _validate_tune(cfg.tune)
    return cfg


def _validate_tune(t: TuneConfig) -> None:
    if t.folds < 2 or t.repeats < 1 or t.max_epochs < 0 or not 0 <= t.min_epochs <= max(t.max_epochs, 0):
        raise ConfigError(f"tune: folds={t.folds} (>= 2), repeats={t.repeats} (>= 1), "
                          f"0 <= min_epochs={t.min_epochs} <= max_epochs={t.max_epochs} expected")
    if not t.arms or not t.probe_c or any(c <= 0 for c in t.probe_c) or t.probe_inner_folds < 2:
        raise ConfigError(f"tune: needs arms, probe_c > 0 and probe_inner_folds >= 2; got "
                          f"{len(t.arms)} arm(s), probe_c={list(t.probe_c)}, probe_inner_folds={t.probe_inner_folds}")
    names = [a.name for a in t.arms]
    for i, a in enumerate(t.arms):
        where = f"tune.arms[{i}] ({a.name!r})"
        if names.count(a.name) > 1 or not re.fullmatch(r"[A-Za-z0-9._+-]+", a.name):
            raise ConfigError(f"{where}: names must be unique and use letters, digits and ._+- (they name folders)")
        if a.init not in ARM_INITS:
            raise ConfigError(f"{where}.init: {a.init!r} is not one of {list(ARM_INITS)}")
        if not _ARM_UNFREEZE.fullmatch(a.unfreeze):
            raise ConfigError(f"{where}.unfreeze: {a.unfreeze!r}; allowed: none, last1, last2, ..., all")
        if a.lr_ratio <= 0 or (a.input_size is not None and a.input_size < 1):
            raise ConfigError(f"{where}: lr_ratio={a.lr_ratio} must be > 0, input_size >= 1")


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
        data = merge_dicts(data, parse_override(text))
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
