"""Configuration: frozen dataclasses loaded from YAML, unknown keys rejected.

Every stage reads its own section. The resolved config (defaults + YAML + CLI
overrides) is saved inside each checkpoint so that scoring cannot drift from
training. Keys are strict on purpose: a typo such as ``learning_rate:`` instead
of ``lr:`` must fail loudly rather than silently train with the default.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


# Every enumerated setting's allowed values, declared once. The modules that act on them
# (calibration, schedule, engine, score output, cache) and the CLI's `choices` derive their
# sets from these with typing.get_args; validate() checks every Literal field in one place.
CacheDtype = Literal["uint8", "uint16"]
# What the polarity check (fibrosis.data.polarity) does with an image: auto = invert when it is
# confidently inverted, exclude when unsure, keep otherwise (fibrosis.data.pixels.POLARITY_ACTIONS).
PolarityQA = Literal["auto", "exclude", "keep", "invert"]
Preset = Literal["head-only", "partial", "full", "auto"]
Imbalance = Literal["pos_weight", "sampler", "none"]
CalibrationMethod = Literal["temperature", "platt", "isotonic", "none"]
EceStrategy = Literal["uniform", "quantile"]
FitSplit = Literal["auto", "val", "calib"]
StudyAggregate = Literal["max", "mean"]
EngineName = Literal["auto", "eager", "channels_last", "bf16", "onnx"]
ArmInit = Literal["pretrained", "random"]
# What an arm of `fibrosis tune` trains, simplest first (the one-SE rule's order among equally
# unfrozen arms): reference = the plain scikit-learn baseline on the pooled features; lp-ft = the
# tool's linear probe, then (unfreeze != none) fine-tuning from it; train = `fibrosis train`'s own
# loop with a preset (its own stages and early stopping), so tune compares with what a team gets.
ArmRecipe = Literal["reference", "lp-ft", "train"]
# BatchNorm of the blocks a tune arm fine-tunes: frozen = the pretrained statistics (eval mode,
# affine weights train); batch = statistics of each training batch, as `fibrosis train` does.
BatchNormMode = Literal["frozen", "batch"]
# How `fibrosis tune` picks its arm (fibrosis.evaluate.selection): replicated = the highest pooled
# out-of-fold AUC, kept only if it beats each simpler arm on its path of rivals in every repeat
# (the first it does not beat takes its place); one-se = the simplest
# arm within one standard error of the best, with the same replication check; best = the highest.
Selection = Literal["replicated", "one-se", "best"]
FinalModel = Literal["ensemble", "refit"]
EpochCriterion = Literal["calibrated-loss", "loss"]
# The cache image -> model input when shrinking: area averaging (cv2.INTER_AREA, no aliasing)
# or bilinear (cv2.INTER_LINEAR: sharper, aliases fine texture above a 2x step).
ResizeMethod = Literal["area", "linear"]
# The linear probe's C: by the inner-CV log-loss after Platt recalibration, or by inner-CV AUC.
ProbeCriterion = Literal["calibrated-loss", "auc"]
# `fibrosis tune` names the test-time-augmentation twin of arm A "A+tta" (tune.tta).
TTA_ARM_SUFFIX = "+tta"


@dataclass(frozen=True)
class IngestConfig:
    image_size: int = 512  # side of the square cache image (aspect kept, padded)
    cache_dtype: CacheDtype = "uint8"  # uint8 | uint16
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
    # Auxiliary findings, stored per image in the manifest's aux_labels for
    # auxiliary heads: extra binary columns of the labels CSV (1 / 0 / empty = missing) ...
    aux_label_columns: tuple[str, ...] = ()
    # ... and/or one pipe-separated findings column (NIH: finding_labels = "Atelectasis|Effusion"):
    # a non-empty cell is 1 for each finding listed, 0 for every other finding of the column;
    # an empty cell leaves all missing. A finding named like label_column is the target, not an aux.
    findings_column: str | None = None
    findings_none: str = "No Finding"  # the findings-column entry that means "labelled, no finding"
    # Distinct findings a findings column may name: each is a 0/1 of every labelled image, so a
    # column of free text or IDs (a finding per row) would cost rows x findings; refused above this.
    max_findings: int = 256
    # An image the polarity check finds inverted (lungs bright, bone dark) or cannot call:
    # auto (invert the confident ones, exclude the unsure), exclude both, invert (and note the
    # unsure), or keep both as shown with a QA note. Images shown correctly are always kept.
    polarity_qa: PolarityQA = "auto"  # auto | exclude | keep | invert


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    calib: float = 0.0  # optional separate calibration split
    seed: int = 0
    near_duplicate_hamming: int = 4  # bits of a 256-bit dHash at or below which images are near-duplicates
    # A near-duplicate group merging more patient keys than this is named in a warning: it is
    # more likely a template, a phantom or a placeholder export than one person under many IDs.
    max_group_patients: int = 10


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    weights: str = "imagenet"  # imagenet | none | path/to/weights.pth
    weights_sha256: str | None = None  # expected hash of a local weights file
    allow_random_init: bool = False  # demo only: proceed when ImageNet weights are unavailable
    input_size: int = 224
    resize: ResizeMethod = "area"  # cache image -> input_size when shrinking: area | linear
    dropout: float = 0.0
    # Test-time augmentation: mean logit over small rotations/scalings, no flips
    # (fibrosis.model.tta); the checkpoint records the variants used.
    tta: bool = False


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
    preset: Preset | None = "partial"  # head-only | partial | full | auto | None (use `stages`)
    stages: tuple[StageConfig, ...] = ()
    batch_size: int = 32
    num_workers: int = 2
    seed: int = 0
    imbalance: Imbalance = "pos_weight"  # pos_weight | sampler | none
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
    # Auxiliary heads: one logit per other finding in the manifest's aux_labels,
    # trained jointly; loss = fibrosis BCE + aux_weight * masked BCE of the findings.
    # 0 = no auxiliary heads. `fibrosis tune` chooses it by cross-validation (tune.arms).
    aux_weight: float = 0.0
    aux_min_positives: int = 5  # a finding with fewer positive training labels gets no head


@dataclass(frozen=True)
class EvaluateConfig:
    bootstrap_resamples: int = 2000
    ci_level: float = 0.95
    ece_bins: int = 10
    # platt (default): a*logit + b. Class weighting (pos_weight, sampler) shifts the
    # logit by about log(pos_weight); temperature scaling (logit / T) cannot undo a shift.
    calibration: CalibrationMethod = "platt"  # platt | temperature | isotonic | none
    target_sensitivities: tuple[float, ...] = (0.90, 0.95)
    deployment_prevalence: float | None = None
    subgroups: tuple[str, ...] = ("sex", "age_band", "view_position", "manufacturer")
    min_subgroup_n: int = 30
    min_subgroup_positives: int = 5
    seed: int = 0
    ece_strategy: EceStrategy = "uniform"  # uniform (equal-width bins) | quantile (equal-count bins)
    fit_split: FitSplit = "auto"  # split that fits calibration + thresholds: auto (calib if any, else val) | val | calib
    gradcam_per_kind: int = 2  # Grad-CAM panels per kind (most confident TP, FP, FN); 0 = none
    data_source: str | None = None  # one line for the report header, e.g. "NIH ChestX-ray14 sample"
    # The study facts the data cannot tell (TRIPOD+AI 5b, 6a, 8a-b; STARD 8, 10b): the report
    # states them in words, or says they were not stated.
    data_setting: str | None = None  # e.g. "one tertiary hospital, inpatients and outpatients"
    data_dates: str | None = None  # e.g. "studies acquired 2019-01 to 2023-12"
    reference_standard: str | None = None  # who labelled, how, blinded to what


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = 32
    workers: int = 0  # 0 = one per CPU core
    study_aggregate: StudyAggregate = "max"  # max | mean
    gradcam: bool = False
    # auto | eager | channels_last | bf16 | onnx (see fibrosis.model.engine; auto = first of a
    # fixed per-device order that agrees with eager fp32 within fibrosis.model.engine.TOLERANCES)
    engine: EngineName = "auto"


@dataclass(frozen=True)
class ArmConfig:
    """One arm of `fibrosis tune`: how the backbone starts and how much of it fine-tunes."""

    name: str = "head-only"
    recipe: ArmRecipe = "lp-ft"  # lp-ft | reference | train (see ArmRecipe)
    init: ArmInit = "pretrained"  # pretrained (model.weights) | random
    # none (linear probe only) | last1, last2, ... (the last N resolution stages) | all
    unfreeze: str = "none"
    lr_ratio: float = 1.0  # fine-tuning lr (head and unfrozen blocks) = tune.lr / lr_ratio
    arch: str | None = None  # optional axis: overrides model.arch for this arm
    input_size: int | None = None  # optional axis: overrides model.input_size for this arm
    aux_weight: float = 0.0  # > 0: auxiliary heads on the other findings, at this loss weight
    preset: Preset | None = None  # recipe train: the train.preset it runs (null: train.preset)


DEFAULT_ARMS: tuple[ArmConfig, ...] = (
    ArmConfig("reference", recipe="reference"),
    # The control: the last stage and the head from random init, with the pretrained arm's
    # recipe and rate (BatchNorm statistics estimated on the development images). A whole
    # network from scratch does not fit 2 CPU cores.
    ArmConfig("random-init", init="random", unfreeze="last1", lr_ratio=100.0),
    ArmConfig("head-only"),
    # lr / 100: at lr / 10 the probe's fit was undone in the first epochs (NIH sample: training
    # loss 0.88 -> 2.27, OOF AUC 0.68 -> 0.54 at epoch 3 before it recovered); at lr / 100 the
    # loss falls from the first epoch.
    ArmConfig("last1-x0.01", unfreeze="last1", lr_ratio=100.0),
    ArmConfig("partial", recipe="train", preset="partial"),
    # Auxiliary-finding heads on the same recipe; skipped, with the reason in the report, when
    # the labels carry no other findings.
    ArmConfig("last1-x0.01-aux", unfreeze="last1", lr_ratio=100.0, aux_weight=1.0),
)


@dataclass(frozen=True)
class TuneConfig:
    folds: int = 5  # patient-level, label-stratified k-fold over train + val (never test/calib)
    repeats: int = 1  # repeated k-fold for every arm: each repeat re-deals the folds
    # More repeats (new deals) for the finalists only (the first choice and its path of simpler
    # rivals), which it must beat in every repeat (fibrosis.evaluate.selection).
    finalist_repeats: int = 1
    seed: int = 0
    arms: tuple[ArmConfig, ...] = DEFAULT_ARMS
    # Linear probe: L2 logistic regression by L-BFGS on frozen features; the inverse
    # regularisation C is chosen by inner grouped CV inside each training fold. A C chosen at
    # either end of the grid is logged as a warning (extend the grid).
    probe_c: tuple[float, ...] = (1e-6, 1e-5, 0.0001, 0.001, 0.01, 0.1, 1.0)
    probe_inner_folds: int = 3
    probe_criterion: ProbeCriterion = "calibrated-loss"  # calibrated-loss | auc (inner CV)
    probe_standardise: bool = True  # the L2 penalty on unit-variance features (else raw)
    # Fine-tuning arms: AdamW at lr / arm.lr_ratio for the head and the unfrozen blocks alike
    # (the head starts at the probe's optimum), linear warm-up, then constant.
    lr: float = 0.001
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0001
    batchnorm: BatchNormMode = "frozen"  # frozen | batch: BatchNorm statistics of the unfrozen blocks
    max_epochs: int = 10  # fine-tuning epochs per fold; the budget is chosen from the OOF curves
    min_epochs: int = 1  # a fine-tuning arm runs at least this many epochs (0 = may stay the probe)
    batch_size: int = 32
    selection: Selection = "replicated"  # replicated | one-se | best (see Selection)
    final: FinalModel = "ensemble"  # ensemble (the k fold models, mean logit) | refit (one model on all dev data)
    # The epoch budget minimises, over the pooled OOF logits: calibrated-loss = the log-loss after the
    # Platt recalibration the deployed model gets (ranking that recalibration can use, not logit
    # scale); loss = the raw class-weighted training loss (penalises growing logits as well).
    epoch_criterion: EpochCriterion = "calibrated-loss"
    # Frozen-prefix activations (plain, and each epoch's augmented view for fine-tuning) kept in
    # memory up to this size, else recomputed per batch (the same inputs either way).
    cache_mb: int = 4096
    # Each arm also gets a "<arm>+tta" twin: its chosen fold models scored with test-time
    # augmentation (one extra pass over the development images per arm, no training).
    tta: bool = True


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
# A config is a few kB; a bound keeps a hostile file from costing memory before any check.
MAX_CONFIG_BYTES = 1 << 20
SHOW_CHARS = 120  # of a value quoted in an error message


def _short(value: Any) -> str:
    """``repr(value)``, cut: an error message must stay one readable line whatever the input."""
    text = repr(value)
    return text if len(text) <= SHOW_CHARS else f"{text[:SHOW_CHARS]}... ({len(text)} characters)"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases and without duplicate keys. ``*alias`` re-uses a node, and a
    few hundred bytes of nested aliases expand to gigabytes once the values are walked or
    printed (a "billion laughs" file); a config never needs them. A key given twice in one
    mapping is refused like an unknown key: PyYAML keeps the last silently, so the first
    value a reader sees would not be the one that runs."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
            raise yaml.composer.ComposerError(
                None, None, f"found alias *{_short(event.anchor)[1:-1]}: YAML aliases are not allowed "
                            "in fibrosis configs (write the value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except (TypeError, yaml.YAMLError):
                    continue  # an unhashable key: SafeLoader's own error names it
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_short(key)} (first given on line {first[key] + 1}); "
                                    "expected each key once in a mapping", key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, where: str) -> Any:
    """Parse YAML text; any YAML problem becomes one ConfigError line naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{where}: invalid YAML: {at}{problem[:2 * SHOW_CHARS]}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {str(exc)[:2 * SHOW_CHARS]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{where}: invalid YAML value: {str(exc)[:2 * SHOW_CHARS]}") from None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):  # a dataclass type, not an instance
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {_short(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        # PyYAML (YAML 1.1) reads `1e-3` as a string; accept such plain numerals.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_short(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {_short(value)}")
        return value
    if tp is str or origin is Literal:  # membership of a Literal: validate(), for every config
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_short(value)}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {_short(unknown)}; allowed: {sorted(names)}"
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
        raise ConfigError(f"override {_short(text)}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = _load_yaml(raw, f"override {_short(text)}")
    return node


# Range of every numeric key (list/stage entries share their key's range): checked when
# the config is loaded, after finiteness, so a NaN fraction or a negative learning rate
# fails at once instead of silently moving patients or training nothing.
# tests/test_config_ranges.py checks that every numeric key has an entry.
SEED = "[0, 4294967295]"  # what NumPy and torch accept
RANGES: dict[str, str] = {
    "ingest.image_size": "[16, 4096]", "ingest.workers": "[0, inf)", "ingest.shard_size": "[1, inf)",
    "ingest.max_rows": "[1, 65535]", "ingest.max_cols": "[1, 65535]",  # (0028,0010/0011) are US
    "ingest.min_side": "[0, inf)", "ingest.max_file_mb": "[1, inf)", "ingest.max_inflated_mb": "[1, inf)", "ingest.voi_percentiles": "[0, 100]",
    "ingest.max_findings": "[1, inf)",
    "split.train": "[0, 1]", "split.val": "[0, 1]", "split.test": "[0, 1]", "split.calib": "[0, 1]",
    "split.seed": SEED, "split.near_duplicate_hamming": "[0, 256]",  # bits of a 256-bit dHash
    "split.max_group_patients": "[1, inf)",
    "model.input_size": "[16, 4096]", "model.dropout": "[0, 1)",
    "train.stages.epochs": "[0, inf)", "train.stages.lr": "(0, inf)", "train.stages.warmup_epochs": "[0, inf)",
    "train.stages.weight_decay": "[0, inf)", "train.stages.layer_decay": "(0, 1]",
    "train.batch_size": "[1, inf)", "train.num_workers": "[0, inf)", "train.seed": SEED,
    "train.augment.affine_degrees": "[0, 180]", "train.augment.affine_scale": "(0, inf)",
    "train.augment.affine_translate": "[0, 1]", "train.augment.brightness_contrast": "[0, 1]",
    "train.augment.gamma": "(0, inf)", "train.augment.noise_std": "[0, 1]", "train.augment.p": "[0, 1]",
    "train.early_stopping_patience": "[0, inf)", "train.head_epochs": "[0, inf)", "train.head_lr": "(0, inf)",
    "train.finetune_epochs": "[0, inf)", "train.finetune_lr": "(0, inf)",
    "train.finetune_warmup_epochs": "[0, inf)", "train.layer_decay": "(0, 1]",
    "train.auto_full_min_train": "[0, inf)", "train.val_batch_size": "[1, inf)",
    "train.aux_weight": "[0, inf)", "train.aux_min_positives": "[1, inf)", "tune.arms.aux_weight": "[0, inf)",
    "evaluate.bootstrap_resamples": "[0, inf)", "evaluate.ci_level": "(0, 1)", "evaluate.ece_bins": "[1, inf)",
    "evaluate.target_sensitivities": "(0, 1]", "evaluate.deployment_prevalence": "(0, 1)",
    "evaluate.min_subgroup_n": "[0, inf)", "evaluate.min_subgroup_positives": "[0, inf)",
    "evaluate.seed": SEED, "evaluate.gradcam_per_kind": "[0, inf)",
    "score.batch_size": "[1, inf)", "score.workers": "[0, inf)",
    "tune.folds": "[2, inf)", "tune.repeats": "[1, inf)", "tune.seed": SEED, "tune.arms.lr_ratio": "(0, inf)",
    "tune.arms.input_size": "[16, 4096]", "tune.probe_c": "(0, inf)", "tune.probe_inner_folds": "[2, inf)",
    "tune.lr": "(0, inf)", "tune.weight_decay": "[0, inf)", "tune.max_epochs": "[0, inf)",
    "tune.min_epochs": "[0, inf)", "tune.batch_size": "[1, inf)", "tune.cache_mb": "[0, inf)",
    "tune.finalist_repeats": "[0, inf)", "tune.warmup_epochs": "[0, inf)",
}
# An arm's `unfreeze`: none (linear probe), last1, last2, ... (the last N block groups) or all.
_ARM_UNFREEZE = re.compile(r"none|all|last[1-9]\d*")
# (key of a pair, strict): the pair's first value must be < (strict) or <= its second.
ORDERED: tuple[tuple[str, bool], ...] = (
    ("ingest.voi_percentiles", True), ("train.augment.affine_scale", False), ("train.augment.gamma", False))


def literal_values(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, tuple[Any, ...]]]:
    """(key, value, allowed values) for every Literal-typed field of a config tree."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp, key = getattr(cfg, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from literal_values(value, key + ".")
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                yield from literal_values(item, f"{key}[{i}].")
        else:
            allowed = _literal_args(tp)
            if allowed:
                yield key, value, allowed


def _literal_args(tp: Any) -> tuple[Any, ...]:
    """Allowed values of ``Literal[...]`` or ``Literal[...] | None`` (None included); else ()."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [_literal_args(a) for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and inner[0]:
            return inner[0] + ((None,) if type(None) in typing.get_args(tp) else ())
    return ()


def numeric_values(cfg: Any, prefix: str = "") -> Iterator[tuple[str, str, float]]:
    """(key as written, RANGES key, value) for every int/float in a config tree: list items
    get ``[i]`` in the written key; the RANGES key drops indices (``train.stages.lr``)."""
    for f in dataclasses.fields(cfg):
        yield from _numbers(getattr(cfg, f.name), f"{prefix}{f.name}", f"{prefix}{f.name}")


def _numbers(value: Any, key: str, pattern: str) -> Iterator[tuple[str, str, float]]:
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _numbers(getattr(value, f.name), f"{key}.{f.name}", f"{pattern}.{f.name}")
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{key}[{i}]", pattern)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, pattern, value


def _in_range(value: float, spec: str) -> bool:
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    return ((lo < value) if spec[0] == "(" else (lo <= value)) and ((value < hi) if spec[-1] == ")" else (value <= hi))


def validate(cfg: Config) -> Config:
    """Check enumerations and ranges; raise ConfigError naming the key, value and allowed set."""
    for key, value, allowed in literal_values(cfg):
        if value not in allowed:
            raise ConfigError(f"{key}: {_short(value)} is not one of {list(allowed)}")
    for key, pattern, value in numeric_values(cfg):
        spec = RANGES.get(pattern, "(-inf, inf)")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not a finite number; expected a number in {spec}")
        if not _in_range(value, spec):
            raise ConfigError(f"{key}: {value!r} must " + (
                f"be {'>=' if spec[0] == '[' else '>'} {spec[1:].split(',')[0]}" if spec.endswith("inf)")
                else f"lie in {spec}"))
    for key, strict in ORDERED:
        section, *rest = key.split(".")
        node = getattr(cfg, section)
        for name in rest:
            node = getattr(node, name)
        first, second = node
        if first > second or (strict and first == second):
            raise ConfigError(f"{key}: {list(node)}; expected first {'<' if strict else '<='} second")
    fractions = {k: getattr(cfg.split, k) for k in ("train", "val", "test", "calib")}
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"split: fractions {fractions} must be >= 0 and sum to 1")
    _validate_tune(cfg.tune)
    return cfg


def _validate_tune(t: TuneConfig) -> None:
    """What ranges and Literals cannot say: arms present and uniquely named, their
    `unfreeze` spelled right, and min_epochs <= max_epochs."""
    if t.min_epochs > t.max_epochs:
        raise ConfigError(f"tune.min_epochs: {t.min_epochs} must be <= tune.max_epochs ({t.max_epochs})")
    if not t.arms or not t.probe_c:
        raise ConfigError(f"tune: needs at least one arm and one probe_c; got {len(t.arms)} arm(s), "
                          f"probe_c={list(t.probe_c)}")
    names = [a.name for a in t.arms]
    for i, a in enumerate(t.arms):
        where = f"tune.arms[{i}] ({_short(a.name)})"
        if names.count(a.name) > 1 or not re.fullmatch(r"[A-Za-z0-9._+-]+", a.name):
            raise ConfigError(f"{where}: names must be unique and use letters, digits and ._+- (they name folders)")
        if t.tta and a.name.endswith(TTA_ARM_SUFFIX):
            raise ConfigError(f"{where}: names ending in {TTA_ARM_SUFFIX!r} are reserved for the test-time "
                              f"augmentation twins of tune.tta=true; rename the arm")
        if not _ARM_UNFREEZE.fullmatch(a.unfreeze):
            raise ConfigError(f"{where}.unfreeze: {_short(a.unfreeze)}; allowed: none, last1, last2, ..., all")
        if a.recipe != "lp-ft":
            own = {"unfreeze": "none", "lr_ratio": 1.0, "aux_weight": 0.0, "init": "pretrained"}
            set_ = {k: getattr(a, k) for k, v in own.items() if getattr(a, k) != v}
            if set_:
                raise ConfigError(f"{where}: recipe {a.recipe!r} sets what it trains itself; "
                                  f"remove {sorted(set_)} (allowed only with recipe 'lp-ft')")
        if a.preset is not None and a.recipe != "train":
            raise ConfigError(f"{where}.preset: {a.preset!r} applies to recipe 'train' only")
        if a.aux_weight > 0 and a.unfreeze == "none":
            # Separate linear heads on frozen features cannot change the fibrosis head: the arm
            # would be the head-only arm under another name.
            raise ConfigError(f"{where}.aux_weight: {a.aux_weight!r} with unfreeze 'none' has no effect on "
                              f"fibrosis; expected aux_weight 0 or an arm that unfreezes blocks")


def config_from_dict(data: dict[str, Any]) -> Config:
    return validate(_build(Config, data or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``a.b=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes; expected a config of at most {MAX_CONFIG_BYTES} bytes")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML config") from None
        loaded = _load_yaml(text, str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def config_to_dict(cfg: DataclassInstance) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
