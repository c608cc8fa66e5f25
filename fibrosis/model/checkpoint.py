"""Checkpoints: one typed record (:class:`Checkpoint`), written atomically, read with
``torch.load(weights_only=True)``.

On disk a checkpoint is a plain dict with ``format == FORMAT`` and ``format_version`` (its
schema); anything else is refused (a bare state dict, someone else's pickle). Everything in it is
weights_only-safe: tensors and plain Python containers/scalars (RNG states included, see
``rng_state``), so loading never executes code from the file. :func:`save_checkpoint` is its one
writer and :func:`load_checkpoint` its one reader; the record's fields are the file's keys, with
the model's state dict under ``model`` and, in `fibrosis train`'s per-epoch files, the resume
state (:class:`Training`) flattened beside them.

Nested entries are typed records written as plain data (:meth:`Checkpoint.to_payload` and
:meth:`Checkpoint.from_payload` convert them): ``preprocessing``
(:class:`fibrosis.data.records.Preprocessing`), ``tta`` (:class:`fibrosis.model.tta.TTARecord`),
``ensemble`` (:class:`EnsembleRecord`), ``tune`` (:class:`TuneProvenance`), ``tune_selection``
(:class:`TuneSelection`), ``aux`` (:class:`AuxRecord`). These stay plain data, each with its own
reader one layer down or up: ``config`` (:func:`fibrosis.config.config_from_dict`), ``run``
(``fibrosis.train.loop.RunState``). ``calibration`` and ``threshold`` are typed records too
(:class:`fibrosis.model.calibration.CalibrationRecord`, :class:`fibrosis.model.threshold.ThresholdRecord`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fibrosis.artefacts import SchemaError, check_schema
from fibrosis.data.records import Preprocessing
from fibrosis.io import atomic_write_bytes
from fibrosis.model.calibration import CalibrationRecord
from fibrosis.model.threshold import ThresholdRecord
from fibrosis.model.tta import TTARecord

if TYPE_CHECKING:
    from fibrosis.model.ensemble import EnsembleNet
    from fibrosis.model.net import FibrosisNet
    from fibrosis.model.tta import Variant

logger = logging.getLogger(__name__)

FORMAT = "fibrosis-checkpoint"
FORMAT_VERSION = 1
# What evaluation adds to a trained model; everything else defines what the model *is*.
UPDATABLE = ("calibration", "threshold", "tune_selection", "split_keys")


class CheckpointError(ValueError):
    """A file is not a fibrosis checkpoint, or an update would corrupt one."""


ENSEMBLE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class EnsembleRecord:
    """The ``ensemble`` entry of a `fibrosis tune` fold ensemble: how load_model rebuilds it
    (``members``, mean logit), and which arm, budget and folds it is."""
    members: int
    arm: str
    epoch: int
    folds: int
    repeats: int

    def to_json(self) -> dict[str, Any]:
        return {"format": ENSEMBLE_FORMAT, "members": self.members, "combine": "mean logit", "arm": self.arm,
                "epoch": self.epoch, "folds": self.folds, "repeats": self.repeats}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "EnsembleRecord":
        entries = _entries(data, where, "ensemble", ("members", "arm", "epoch", "folds", "repeats"))
        if data.get("format") != ENSEMBLE_FORMAT or data.get("combine") != "mean logit":
            raise CheckpointError(f"{where}: ensemble format={data.get('format')!r} combine={data.get('combine')!r}; "
                                  f"expected {ENSEMBLE_FORMAT} and 'mean logit'")
        return cls(**entries)


@dataclass(frozen=True, slots=True)
class TuneProvenance:
    """The ``tune`` entry: the arm of `fibrosis tune` this model is, its epoch budget and
    ``tune.final`` (ensemble | refit)."""
    arm: str
    epoch: int
    final: str

    def to_json(self) -> dict[str, Any]:
        return {"arm": self.arm, "epoch": self.epoch, "final": self.final}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "TuneProvenance":
        return cls(**_entries(data, where, "tune", ("arm", "epoch", "final")))


@dataclass(frozen=True, slots=True)
class TuneSelection:
    """The ``tune_selection`` entry: tune's choice, why, and its selection-adjusted AUC."""
    chosen: str
    reason: str
    selection_adjusted_auc: float

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "reason": self.reason, "selection_adjusted_auc": self.selection_adjusted_auc}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "TuneSelection":
        return cls(**_entries(data, where, "tune_selection", ("chosen", "reason", "selection_adjusted_auc")))


@dataclass(frozen=True, slots=True)
class AuxRecord:
    """The ``aux`` entry: the auxiliary-finding heads' names, loss weight, per-head pos_weight,
    the findings left without a head and why; a tune arm adds each head's own OOF AUC."""
    names: list[str]
    weight: float
    pos_weight: list[float]
    dropped: dict[str, str]
    min_positives: int
    oof_auc: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names, "weight": self.weight, "pos_weight": self.pos_weight, "dropped": self.dropped,
                "min_positives": self.min_positives, **({} if self.oof_auc is None else {"oof_auc": self.oof_auc})}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "AuxRecord":
        keys = ("names", "weight", "pos_weight", "dropped", "min_positives")
        return cls(**_entries(data, where, "aux", keys, ("oof_auc",)))


def _entries(data: Any, where: str, key: str, names: tuple[str, ...], optional: tuple[str, ...] = ()
             ) -> dict[str, Any]:
    """The entries ``names`` (and ``optional``) of the checkpoint's ``key``; anything else is refused."""
    if not isinstance(data, dict) or not set(names) <= set(data):
        raise CheckpointError(f"{where}: {key}={str(data)[:200]!r}; expected a dict with {list(names)}")
    other = sorted(set(data) - set(names) - set(optional) - {"format", "combine"})
    if other:
        raise CheckpointError(f"{where}: {key} has unknown entries {other}; expected {list(names + optional)}")
    return {k: data[k] for k in names + optional if k in data}


@dataclass(frozen=True)
class Training:
    """Where `fibrosis train` stood after an epoch: what ``--resume`` continues bit-exactly from.
    Only train's own last.pt/best.pt carry it; a packaged tune model has none."""
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    stage: int  # index into the checkpoint's ``stages``
    stage_name: str
    epoch: int  # epochs done over all stages
    # fibrosis.train.loop.RunState as plain data: train's own resume state, read back (history rows
    # as fibrosis.train.runlog.EpochRow) by the loop, which this layer may not import.
    run: dict[str, Any]
    rng: dict[str, Any]  # rank 0's RNG states (rng_state())
    rng_per_rank: list[dict[str, Any]]


_TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(Training))


@dataclass(frozen=True)
class Checkpoint:
    """A trained model and everything that fixes how it is fed, judged and applied."""
    weights: dict[str, torch.Tensor]  # the model's state dict (key ``model`` on disk)
    config: dict[str, Any]  # the resolved Config as plain data
    preprocessing: Preprocessing
    arch: str
    weights_info: dict[str, Any] = field(default_factory=dict)  # where the initial weights came from
    pretrained: bool = False
    manifest_hash: str = ""  # sha256 of the manifest it was trained on
    world_size: int = 1
    tta: TTARecord | None = None  # test-time augmentation variants; None: off
    # The schedule as configured, as plain data: train writes its StageConfigs whole, tune a probe
    # and a fine-tuning stage with fewer keys; evaluate's run summary shows either.
    stages: list[dict[str, Any]] = field(default_factory=list)
    preset: str = ""  # why this schedule, in words
    versions: dict[str, str] = field(default_factory=dict)  # package versions at training
    split_keys: dict[str, dict[str, list[str]]] | None = None  # salted train/val patients and images
    best_epoch: int | None = None
    best_val_auc: float | None = None  # train's own validation AUC at best_epoch
    aux: AuxRecord | None = None  # auxiliary-finding heads (fibrosis.train.aux.aux_record)
    ensemble: EnsembleRecord | None = None  # the fold models of `fibrosis tune`
    tune: TuneProvenance | None = None  # the tune arm this model is
    training: Training | None = None
    calibration: CalibrationRecord | None = None  # added by evaluate (or tune, out of fold)
    threshold: ThresholdRecord | None = None  # operating points on the calibrated probability
    tune_selection: TuneSelection | None = None  # tune's choice and its selection-adjusted AUC

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-epoch training records up to this file's epoch; [] for a packaged model."""
        return list(self.training.run.get("history") or []) if self.training else []

    @property
    def aux_names(self) -> tuple[str, ...]:
        """The auxiliary findings the model has heads for; () for none."""
        return tuple(self.aux.names) if self.aux else ()

    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk: every field under its own key (optional ones only when set)."""
        out: dict[str, Any] = {"model": self.weights}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("weights", "training"):
                continue
            if f.name == "preprocessing":
                value = value.to_dict()
            elif f.name in _RECORDS and value is not None:
                value = value.to_json()
            if value is None and f.name in _OPTIONAL:
                continue
            out[f.name] = value
        if self.training is not None:
            out.update(dataclasses.asdict(self.training))
        return out

    @classmethod
    def from_payload(cls, data: dict[str, Any], path: str | Path) -> "Checkpoint":
        """The record of a loaded dict; names the file and the key when one is missing or unknown."""
        where = str(path)
        body = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        known = {f.name for f in dataclasses.fields(cls)} - {"weights", "training"} | {"model"} | set(_TRAINING_KEYS)
        unknown = sorted(set(body) - known - set(_DROPPED))
        if unknown:
            raise CheckpointError(f"{where}: unknown checkpoint key(s) {unknown}; this version of fibrosis "
                                  f"writes {sorted(known)}")
        missing = sorted({"model", "config", "preprocessing"} - set(body))
        if missing:
            raise CheckpointError(f"{where}: checkpoint without {missing}")
        config = body.pop("config")
        training = None
        if "run" in body:
            missing = sorted(set(_TRAINING_KEYS) - set(body))
            if missing:
                raise CheckpointError(f"{where}: a training checkpoint without {missing}")
            training = Training(**{k: body.pop(k) for k in _TRAINING_KEYS})
        for k in _DROPPED:
            body.pop(k, None)
        # Files written before the architecture had its own key: it is the config's.
        arch = body.pop("arch", None) or (config.get("model") or {}).get("arch", "")
        for k, record in _RECORDS.items():
            if body.get(k) is not None:
                body[k] = record.from_json(body[k], where)
        return cls(weights=body.pop("model"), config=config, arch=str(arch), training=training,
                   preprocessing=Preprocessing.from_dict(body.pop("preprocessing"), where), **body)


# Optional fields are left out of the file when unset, as `train` and `tune` always wrote them.
_OPTIONAL = frozenset({"best_epoch", "best_val_auc", "aux", "ensemble", "tune", "calibration",
                       "threshold", "tune_selection"})
# Entries stored as their record's JSON and read back into it.
_RecordType = (type[TTARecord] | type["EnsembleRecord"] | type["TuneProvenance"] | type["TuneSelection"]
               | type["AuxRecord"] | type[CalibrationRecord] | type[ThresholdRecord])
_RECORDS: dict[str, _RecordType] = {
    "tta": TTARecord, "ensemble": EnsembleRecord, "tune": TuneProvenance, "tune_selection": TuneSelection,
    "aux": AuxRecord, "calibration": CalibrationRecord, "threshold": ThresholdRecord}
# Keys of older files that the record no longer carries: the history sits in ``run``.
_DROPPED = ("history",)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` (+ format marker and schema) to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({**ckpt.to_payload(), "format": FORMAT, "format_version": FORMAT_VERSION}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> Checkpoint:
    """The record of ``path``; ``mmap``: the weights stay on disk, mapped, until read (a caller
    after the other fields only, such as `fibrosis runs`, never reads them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        # mmap needs torch's zip layout; any other file gets the reader's own error, not mmap's
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as exc:  # pickle that needs code, truncated file, not a torch file
        raise CheckpointError(f"{path}: not a loadable fibrosis checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: format={found!r}; expected {FORMAT!r} "
                              f"(written by fibrosis.train.loop)")
    try:
        check_schema(path, data.get("format_version"), FORMAT_VERSION)
    except SchemaError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        return Checkpoint.from_payload(data, path)
    except TypeError as exc:  # a field of the wrong kind for the record
        raise CheckpointError(f"{path}: {exc}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Checkpoint]:
    """Rebuild the model a checkpoint describes, load its weights, eval mode."""
    from fibrosis.model.net import build_model, set_aux_heads  # local: keeps checkpoint importable on its own

    ckpt = load_checkpoint(path)
    prep = ckpt.preprocessing
    # The stem and resize the weights were trained with, not today's defaults.
    shape = {"input_size": prep.input_size, "dropout": ckpt.config["model"].get("dropout", 0.0),
             "resize": prep.resize, "gray_fold": prep.gray_fold}
    model: FibrosisNet | EnsembleNet
    if ckpt.ensemble:  # `fibrosis tune`: the fold models as one mean-logit ensemble
        from fibrosis.model.ensemble import build_ensemble

        model = build_ensemble(ckpt.arch, ckpt.ensemble.members, **shape)
    else:
        model = build_model(ckpt.arch, "none", **shape)
    aux = ckpt.aux_names
    if aux:  # the heads must exist before their weights load (strict state dict)
        for m in getattr(model, "members", [model]):
            set_aux_heads(m, aux)
        model.aux_names = aux
    model.load_state_dict(ckpt.weights)
    model.preprocessing = prep
    model.weights_info = dict(ckpt.weights_info)
    model.pretrained = bool(ckpt.pretrained)
    model.set_tta(checkpoint_tta(ckpt, str(path)))
    return model.to(device).eval(), ckpt


def checkpoint_tta(ckpt: Checkpoint, source: str) -> tuple[Variant, ...] | None:
    """The TTA variants a checkpoint recorded (``tta``; absent in older files: no TTA)."""
    variants = ckpt.tta.variants if ckpt.tta else None
    if variants is None and ckpt.config["model"].get("tta"):
        # Written with model.tta on but without its variants: guessing today's defaults
        # could score differently from the model that was evaluated.
        raise CheckpointError(f"{source}: config model.tta=true but no 'tta' variants recorded; "
                              f"retrain or re-package the model")
    return variants


def update_checkpoint(path: str | Path, **fields: Any) -> Checkpoint:
    """Add/replace what evaluation adds (``UPDATABLE``: JSON-able records) atomically."""
    ckpt = load_checkpoint(path)
    bad = sorted(set(fields) - set(UPDATABLE))
    if bad:
        raise CheckpointError(f"{path}: refusing to overwrite {bad}; an update may set only {list(UPDATABLE)}")
    for key, value in fields.items():
        record = _RECORDS.get(key)
        if record is not None and value is not None and not isinstance(value, record):
            raise CheckpointError(f"{path}: field {key!r} is a {type(value).__name__}; expected a {record.__name__}")
        try:
            json.dumps(value.to_json() if record is not None and value is not None else value, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: field {key!r} is not JSON-able ({exc}); store plain "
                                  f"dicts/lists/numbers/strings") from None
    ckpt = dataclasses.replace(ckpt, **fields)
    save_checkpoint(path, ckpt)
    return ckpt


# ------------------------------------------------------------------ RNG states


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain lists (weights_only-safe)."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the global RandomState is MT19937, whose legacy state is a tuple
    kind, keys, pos, has_gauss, gauss = state
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
