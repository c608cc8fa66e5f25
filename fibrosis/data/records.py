"""Typed records at the data stage's boundaries: what a decode worker returns to ingest
and score, an image's metadata, and the one parser of a manifest label (and of its auxiliary findings).

Why types: a dict result would have its ``status`` string and optional keys branched on
wherever it is read, and a raw PatientID key that every writer must remember to drop. Here a
result is one of three classes, and the raw
PatientID is a :class:`PatientId`, which has no text form at all: a CSV writer, ``json``,
an f-string or ``str()`` that meets one raises ``TypeError`` instead of writing it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Union, get_args

import numpy as np

from fibrosis.config import ResizeMethod

RejectKind = Literal["error", "excluded", "duplicate"]  # rejects.csv `kind`


class PatientId:
    """A raw PatientID. It is hashed into a patient key and never written anywhere; it
    pickles (it crosses from a decode worker to the run) but has no ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str = ""):
        self._value = str(value or "").strip()

    def __bool__(self) -> bool:
        return bool(self._value)

    def __str__(self) -> str:
        raise TypeError("a raw PatientID is never written; write its salted patient key")

    __format__ = None  # type: ignore[assignment]  # f"{pid}" raises too

    def __repr__(self) -> str:
        return "PatientId(<withheld>)" if self._value else "PatientId()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatientId) and other._value == self._value

    def __hash__(self) -> int:
        return hash((PatientId, self._value))

    def __reduce__(self) -> tuple[Any, ...]:
        return PatientId, (self._value,)

    def key(self, salt: str) -> str:
        """Pseudonymous patient key: first 16 hex digits of sha256(salt + id)."""
        return hashlib.sha256((salt + self._value).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ImageMeta:
    """An image's header facts, in manifest column names; ``patient_id`` is not one of them."""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    view_position: str = ""
    body_part: str = ""
    modality: str = ""
    manufacturer: str = ""
    model_name: str = ""
    sex: str = ""
    age: str = ""
    pixel_spacing: str = ""
    rows: int = 0
    cols: int = 0
    transfer_syntax: str = ""
    photometric: str = ""
    source_format: str = ""  # dicom | acr-nema | png | jpeg
    patient_id: PatientId = field(default_factory=PatientId, repr=False)
    # YYYY-MM of StudyDate (else AcquisitionDate): `fibrosis monitor` groups scores by month.
    # Not a manifest column, and never a full date.
    study_month: str = ""

    def manifest_fields(self) -> dict[str, Any]:
        """Every field but the raw PatientID (the manifest keeps the MANIFEST_COLUMNS of them)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "patient_id"}

    def replace(self, **changes: Any) -> "ImageMeta":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Decoded:
    """A file that decoded: its cache image (quantised) and what the pixel path did."""
    path: str
    content_hash: str
    meta: ImageMeta
    steps: tuple[str, ...]
    image: np.ndarray
    dhash: str = ""  # hex dHash of ``image`` (split.stored_dhash): split never re-reads pixels
    stamp: FileStamp | None = None  # file_stamp() taken before reading (None: not trusted)


@dataclass(frozen=True)
class Skipped:
    """A file already committed with this content hash: not decoded again."""
    path: str
    content_hash: str
    stamp: FileStamp | None = None  # file_stamp() taken before reading (None: not trusted)


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What tells an unchanged file without reading it (as rsync and make do): size,
    modification time in ns and the file's identity (device:inode). A rewrite changes the
    mtime, a replacement by rename changes the inode; ``--verify`` still hashes everything.
    The manifest's file_size, file_mtime_ns and file_id columns."""
    size: int
    mtime_ns: int
    id: str


def file_stamp(st: os.stat_result) -> FileStamp:
    return FileStamp(st.st_size, st.st_mtime_ns, f"{st.st_dev}:{st.st_ino}")


@dataclass(frozen=True)
class Rejected:
    """A file that is not ingested or scored, and why (the tag, value and what was expected)."""
    path: str
    content_hash: str
    kind: RejectKind
    reason: str
    transfer_syntax: str = ""


DecodeResult = Union[Decoded, Skipped, Rejected]


# How the pretrained RGB stem meets a gray image (``Preprocessing.gray_fold``):
# - "rgb-stem": the model takes gray in [0, 1] and its first convolution feeds the pretrained
#   RGB weights three copies, each normalised by that channel's own mean/std: exactly the
#   input the network was trained on for a gray photograph, zero-padded borders included.
# - "summed": the first convolution's weights summed over RGB on one gray channel normalised
#   by the average of the three statistics. Not exact (each channel's input is offset by up
#   to 0.18 of its standard deviation, and the padding means another gray); kept so that
#   checkpoints written with it load and score as they did.
GrayFold = Literal["rgb-stem", "summed"]
# Records written before ``gray_fold`` and ``resize`` held a code held these sentences.
_LEGACY_TEXT = {"first conv weights summed over RGB; gray replicated x3 == folded": "summed",
                "cv2.INTER_AREA from the cache image to input_size x input_size": "area"}


@dataclass(frozen=True)
class Preprocessing:
    """What a model wants as input. It travels with the weights into every checkpoint
    (as a plain dict), so evaluation and scoring feed exactly what training fed."""
    input_size: int  # the cache image is resized to input_size x input_size
    in_chans: int
    mean: float  # gray normalisation before the network: (x - mean) / std, x in [0, 1]
    std: float
    rgb_mean: tuple[float, ...]  # the weights' own RGB statistics
    rgb_std: tuple[float, ...]
    gray_fold: str  # GrayFold: how the RGB stem meets one gray channel
    resize: str  # ResizeMethod (fibrosis.config): cache image -> input when shrinking

    def __post_init__(self) -> None:
        for key, allowed in (("gray_fold", get_args(GrayFold)), ("resize", get_args(ResizeMethod))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"preprocessing {key}={getattr(self, key)!r}; expected one of {list(allowed)}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, "rgb_mean": list(self.rgb_mean), "rgb_std": list(self.rgb_std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "checkpoint") -> "Preprocessing":
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"{where}: preprocessing keys {sorted(data)}; expected {sorted(names)}")
        try:
            return cls(**{**data, "input_size": int(data["input_size"]), "in_chans": int(data["in_chans"]),
                          "mean": float(data["mean"]), "std": float(data["std"]),
                          "rgb_mean": tuple(data["rgb_mean"]), "rgb_std": tuple(data["rgb_std"]),
                          "gray_fold": _LEGACY_TEXT.get(data["gray_fold"], data["gray_fold"]),
                          "resize": _LEGACY_TEXT.get(data["resize"], data["resize"])})
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def parse_label(text: Any) -> int | None:
    """A manifest/predictions label cell: 1, 0, or None when missing (never read as 0)."""
    value = str("" if text is None else text).strip()
    if value in ("1", "1.0"):
        return 1
    if value in ("0", "0.0"):
        return 0
    if value == "":
        return None
    raise ValueError(f"label {value!r}; allowed: 0, 1 or empty (unlabelled)")


def require_label(text: Any, where: str, why: str) -> int:
    """:func:`parse_label` where a label must be there: ValueError naming ``where`` otherwise."""
    try:
        label = parse_label(text)
    except ValueError:
        label = None
    if label is None:
        raise ValueError(f"{where}: label={'' if text is None else text!r}; expected 0 or 1 ({why})")
    return label


# ---------------------------------------------------------------- auxiliary finding labels

# A manifest's ``aux_labels`` cell: the other findings a labels CSV carries for the image,
# as ``name=v`` entries joined by ``|`` with names sorted, e.g. ``Atelectasis=1|Effusion=0``.
# A finding whose value is missing is left out (never written as 0); "" = none known.
AUX_SEPARATOR = "|"
AUX_ASSIGN = "="
AUX_VALUES = {"0": 0, "1": 1}  # the only values a cell may hold


def aux_name_problem(name: str) -> str:
    """Why ``name`` cannot name an auxiliary finding ("" when it can): it must be non-empty,
    start with a letter or digit (a name is no formula: ``+A1-1`` or ``=1+2`` would run in a
    spreadsheet opening the manifest), have no surrounding spaces and neither of the two
    characters the cell is built from."""
    if not name or name != name.strip():
        return "expected a non-empty name without leading or trailing spaces"
    if not name[0].isalnum():
        return "expected a name that starts with a letter or digit"
    if AUX_SEPARATOR in name or AUX_ASSIGN in name:
        return f"expected a name without {AUX_SEPARATOR!r} or {AUX_ASSIGN!r} (they delimit the manifest's aux_labels)"
    return ""


def format_aux(values: Mapping[str, int]) -> str:
    """The ``aux_labels`` cell of ``{finding: 0 | 1}`` (missing findings are simply absent)."""
    parts = []
    for name in sorted(values):
        problem, value = aux_name_problem(name), str(values[name])
        if problem or value not in AUX_VALUES:
            raise ValueError(f"auxiliary label {name!r}={values[name]!r}; "
                             f"{problem or f'expected a value in {sorted(AUX_VALUES)}'}")
        parts.append(f"{name}{AUX_ASSIGN}{value}")
    return AUX_SEPARATOR.join(parts)


def parse_aux(text: str | None, where: str = "") -> dict[str, int]:
    """``{finding: 0 | 1}`` of an ``aux_labels`` cell; ``""``/None (no column: a manifest of an
    older version) is ``{}``. Strict: a malformed cell is a ValueError naming ``where``."""
    cell = (text or "").strip()
    if not cell:
        return {}
    values: dict[str, int] = {}
    for entry in cell.split(AUX_SEPARATOR):
        name, sep, value = entry.partition(AUX_ASSIGN)
        problem = _aux_entry_problem(name, sep, value, values)
        if problem:
            raise ValueError(f"{where or 'aux_labels'}: aux_labels {cell!r}: entry {entry!r} ({problem}); expected "
                             f"name=0 or name=1 entries joined by {AUX_SEPARATOR!r}, names without "
                             f"{AUX_SEPARATOR!r} or {AUX_ASSIGN!r}")
        values[name] = AUX_VALUES[value]
    return values


def _aux_entry_problem(name: str, sep: str, value: str, seen: Mapping[str, int]) -> str:
    if not sep:
        return f"no {AUX_ASSIGN!r}"
    if aux_name_problem(name):
        return f"name {name!r}"
    if value not in AUX_VALUES:
        return f"value {value!r}"
    if name in seen:
        return f"{name!r} given twice"
    return ""
