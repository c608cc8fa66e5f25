"""``tune.json``: what `fibrosis tune` decided and why (:class:`TuneResult`), its one writer and its
one reader, and the records of the judging it holds. The tune workflow (:mod:`fibrosis.pipeline.tune`)
writes it; the report reads it. Torch-free, so the report can read it without loading torch.

Why here and not in fibrosis.train: an arm's row joins what training reports of the arm (its recipe,
epoch budget and cost: the ``arm.json`` row of :class:`fibrosis.train.tune.results.ArmResult`) with
how :func:`fibrosis.evaluate.selection.select_arm` judged it (:class:`ArmScore`). Training may not
import evaluation, so the row is typed on the judging side, reading training's row at that boundary.

``replication`` is the list of checks :func:`fibrosis.evaluate.selection.replicated_choice` made
(:class:`ReplicationCheck`), ``selection_adjusted`` the Tibshirani & Tibshirani estimate
(:class:`SelectionAdjusted`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fibrosis.artefacts import check_schema
from fibrosis.io import read_text, write_json

# 0: files written before tune.json carried a schema number; the same fields, read as they are.
TUNE_SCHEMA = 1


def _fields(cls: type, data: Any, where: str, optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``data``'s entries for the dataclass ``cls``; names the file/key when one is missing or unknown."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: {str(data)[:120]!r}; expected an object with {names}")
    missing = [n for n in names if n not in data and n not in optional]
    unknown = sorted(set(data) - set(names))
    if missing or unknown:
        raise ValueError(f"{where} " + "; ".join(
            ([f"without {missing}"] if missing else []) + ([f"with unknown keys {unknown}"] if unknown else []))
            + f"; expected {names}")
    return dict(data)


@dataclass(frozen=True, slots=True)
class Paired:
    """A paired DeLong comparison of two arms on the same patients (this arm minus the other)."""
    difference: float
    p: float
    ci: list[float] | None

    def to_json(self) -> dict[str, Any]:
        return {"difference": self.difference, "p": self.p, "ci": self.ci}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Paired | None":
        return None if data is None else cls(**_fields(cls, data, where))


@dataclass(frozen=True, slots=True)
class ArmTraits:
    """What selection needs to know of an arm: how complex it is, whether it failed, and which
    arm it is compared with, paired, to say whether its add-on helped (``base``: a TTA twin's own
    arm, or the same recipe without auxiliary heads)."""
    name: str
    depth: int  # 0 head only, N last N stages; random init ranks last
    lr_ratio: float  # head lr / fine-tuning lr: larger is slower fine-tuning, i.e. simpler
    extras: int = 0  # add-ons such as auxiliary heads
    tta: bool = False
    recipe: str = "lp-ft"
    init: str = "pretrained"
    failed: str | None = None  # why it has no AUC (a fold model with constant output)
    base: str | None = None


@dataclass(frozen=True, slots=True)
class ArmScore:
    """How :func:`fibrosis.evaluate.selection.select_arm` judged an arm: pooled out-of-fold AUC
    with its DeLong SE and CI, the ROC points, and paired comparisons (None: not applicable, or
    the arm failed and has no AUC)."""
    auc: float | None
    se: float | None
    ci: list[float] | None
    roc: Mapping[str, Sequence[float | None]] | None
    vs_best: Paired | None = None
    vs_random: Paired | None = None
    vs_reference: Paired | None = None
    vs_base: Paired | None = None

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc, "se": self.se, "ci": self.ci, "roc": self.roc,
                **{k: None if v is None else v.to_json() for k, v in self._pairs().items()}}

    def _pairs(self) -> dict[str, Paired | None]:
        return {"vs_best": self.vs_best, "vs_random": self.vs_random, "vs_reference": self.vs_reference,
                "vs_base": self.vs_base}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "ArmScore":
        return cls(data["auc"], data["se"], data["ci"], data["roc"],
                   **{k: Paired.from_json(data[k], f"{where}.{k}") for k in ("vs_best", "vs_random",
                                                                             "vs_reference", "vs_base")})


SCORE_KEYS = tuple(f.name for f in dataclasses.fields(ArmScore))


@dataclass(frozen=True, slots=True)
class JudgedArm:
    """One row of :func:`fibrosis.evaluate.selection.select_arm`'s table: an arm and its score."""
    traits: ArmTraits
    score: ArmScore

    @property
    def name(self) -> str:
        return self.traits.name

    @property
    def auc(self) -> float:
        """The pooled OOF AUC of an arm that did not fail (selection never asks a failed one)."""
        if self.score.auc is None:
            raise ValueError(f"arm {self.name!r} failed ({self.traits.failed}); it has no AUC")
        return self.score.auc


@dataclass(frozen=True, slots=True)
class ReplicationCheck:
    """Does ``chosen`` beat ``rival`` in every repeat of the k-fold both ran?"""
    chosen: str
    rival: str
    repeats: list[int]
    chosen_auc: list[float]
    rival_auc: list[float]
    difference: list[float]
    holds: bool
    failed: bool  # ``chosen`` failed in a further deal: it beats nothing

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ReplicationCheck":
        return cls(**_fields(cls, data, where))


@dataclass(frozen=True, slots=True)
class SelectionAdjusted:
    """Tibshirani & Tibshirani (2009): the chosen arm's pooled OOF AUC less the estimated bias of
    having chosen it."""
    auc: float
    pooled_auc: float
    bias: float
    folds: int  # folds with an AUC for the chosen arm and another
    arms: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "SelectionAdjusted | None":
        """None for ``{}``: a run without a choice to adjust."""
        return cls(**_fields(cls, data, where)) if data else None


@dataclass(frozen=True, slots=True)
class AuxSummary:
    """Which auxiliary findings had heads, their development label counts (+, -), which had none."""
    names: list[str]
    dropped: dict[str, str]
    counts: dict[str, list[int]]

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names, "dropped": self.dropped, "counts": self.counts}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "AuxSummary | None":
        """None for ``{}``: a run without auxiliary findings."""
        return cls(**_fields(cls, data, where)) if data else None


@dataclass(frozen=True, slots=True)
class TwinInfo:
    """A TTA twin's own entries: the arm it twins, its variants and the cost of its passes."""
    base_arm: str
    tta_variants: dict[str, Any]  # fibrosis.model.tta.TTARecord as written (read back there)
    tta_seconds: float
    tta_cost: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"tta": True, "base_arm": self.base_arm, "tta_variants": self.tta_variants,
                "tta_seconds": self.tta_seconds, "tta_cost": self.tta_cost}


TWIN_KEYS = ("tta", "base_arm", "tta_variants", "tta_seconds", "tta_cost")


@dataclass(frozen=True, slots=True)
class TuneArm:
    """One arm's row of tune.json: training's report of the arm (its ``arm.json`` row, without
    logits), the arm it is paired against, selection's :class:`ArmScore`, and its AUC per repeat."""
    name: str
    describe: str
    recipe: str
    init: str
    unfreeze: str
    lr_ratio: float
    arch: str
    input_size: int
    groups: list[str]
    depth: int
    aux_weight: float
    aux_auc: dict[str, float]  # auxiliary heads' own OOF AUC
    extras: int
    epoch: int  # the chosen epoch budget
    curve: list[dict[str, float]]  # per epoch: pooled OOF loss and AUC
    minutes: float  # every repeat it ran, the finalists' included
    cpu_minutes: float
    cost: dict[str, float]  # seconds (wall, cpu) of its first repeats
    repeat_cost: dict[str, float]
    units: list[str]
    failed: str | None
    oof_sd: float
    twin: TwinInfo | None
    base: str | None
    score: ArmScore
    repeat_aucs: dict[str, float]  # repeat -> pooled OOF AUC

    @property
    def tta(self) -> bool:
        return self.twin is not None

    @property
    def traits(self) -> ArmTraits:
        return ArmTraits(self.name, self.depth, self.lr_ratio, self.extras, self.tta, self.recipe, self.init,
                         self.failed, self.base)

    def to_json(self) -> dict[str, Any]:
        """The row's keys in field order, with the twin's and the score's entries in their places."""
        trained = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in ("twin", "base", "score", "repeat_aucs")}
        return {**trained, **(self.twin.to_json() if self.twin else {}), "base": self.base, **self.score.to_json(),
                "repeat_aucs": self.repeat_aucs}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "TuneArm":
        flat = [f.name for f in dataclasses.fields(cls) if f.name not in ("twin", "score")]
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: {str(data)[:120]!r}; expected an arm's row")
        twin_keys = TWIN_KEYS if data.get("tta") else ()
        missing = [k for k in (*flat, *SCORE_KEYS, *twin_keys) if k not in data]
        unknown = sorted(set(data) - {*flat, *SCORE_KEYS, *TWIN_KEYS})
        if missing or unknown:
            raise ValueError(f"{where}: arm {data.get('name')!r} " + "; ".join(
                ([f"without {missing}"] if missing else []) + ([f"with unknown keys {unknown}"] if unknown else [])))
        twin = (TwinInfo(data["base_arm"], data["tta_variants"], data["tta_seconds"], data["tta_cost"])
                if twin_keys else None)
        return cls(**{k: data[k] for k in flat}, twin=twin, score=ArmScore.from_json(data, where))


@dataclass(frozen=True)
class TuneResult:
    """The arms compared, the choice and its evidence, for one `fibrosis tune` run."""
    level: float  # confidence level of every interval
    rule: str  # tune.selection: best | replicated
    n: int  # development images (pooled out of fold)
    n_pos: int
    arms: list[TuneArm]  # reference first
    best: str  # the arm with the highest pooled OOF AUC
    random_control: str | None
    reference: str | None
    chosen: str  # the arm packaged into best.pt
    reason: str  # why, in words
    warnings: list[str]
    created: str  # UTC, ISO 8601
    tune_config: dict[str, Any]  # the tune section of the config, as plain data (fibrosis.config)
    arch: str
    folds: int
    repeats: int
    finalist_repeats: int
    n_dev: int
    n_dev_pos: int
    n_dev_patients: int
    features: dict[str, float]  # minutes spent on frozen features and augmented views
    final: str  # tune.final: ensemble | refit
    checkpoint: str  # the file name of the packaged model, beside tune.json
    first_choice: str  # before replication
    replication: list[ReplicationCheck]
    selection_adjusted: SelectionAdjusted | None
    skipped_arms: dict[str, str]  # arm -> why it was not run
    aux: AuxSummary | None  # auxiliary findings: heads and their labels
    minutes_total: float

    def arm(self, name: str) -> TuneArm:
        return next(a for a in self.arms if a.name == name)

    def to_json(self) -> dict[str, Any]:
        """tune.json's object (its schema number aside), in the order of the fields."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "arms": [a.to_json() for a in self.arms],
                "replication": [c.to_json() for c in self.replication],
                "selection_adjusted": self.selection_adjusted.to_json() if self.selection_adjusted else {},
                "aux": self.aux.to_json() if self.aux else {}}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> "TuneResult":
        body = _fields(cls, data, f"{where}: tune.json")
        return cls(**{**body, "arms": [TuneArm.from_json(a, f"{where}: arms[{i}]") for i, a in enumerate(body["arms"])],
                      "replication": [ReplicationCheck.from_json(c, f"{where}: replication[{i}]")
                                      for i, c in enumerate(body["replication"])],
                      "selection_adjusted": SelectionAdjusted.from_json(body["selection_adjusted"],
                                                                        f"{where}: selection_adjusted"),
                      "aux": AuxSummary.from_json(body["aux"], f"{where}: aux")})

    def write(self, path: Path) -> None:
        """Standard JSON: a quantity that does not exist (a failed arm's AUC) is null."""
        write_json(path, {"schema": TUNE_SCHEMA, **self.to_json()})

    @classmethod
    def read(cls, path: Path) -> "TuneResult":
        data = json.loads(read_text(path))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object written by `fibrosis tune`")
        check_schema(path, data.pop("schema", 0), TUNE_SCHEMA, oldest=0)
        return cls.from_json(data, str(path))
