"""Reader versus model on the same cases: the reader's sensitivity and specificity (Wilson CIs)
beside the model's ROC curve against a reference standard, and the model's AUC (DeLong CI) against
the reader's labels.

Cases are the scored images (``ok`` rows of ``scores.csv``) joined to the reader's labels file
(written by `fibrosis review`) as `monitor --labels` joins a labels CSV (SOP Instance UID, file,
Study Instance UID: a study's label applies to each of its images), and to an optional reference
standard labels CSV the same way. A reader's "uncertain" is no call: such cases are counted and
left out of the reader's sensitivity and specificity and of the AUC against the reader, never
counted as negative.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis.data.labels import load_labels
from fibrosis.evaluate.metrics import DelongAuc, RocCurve, auc_delong, roc_points
from fibrosis.evaluate.operating import BinaryMetrics, binary_metrics, confusion
from fibrosis.evaluate.shape import arr, obj
from fibrosis.io import read_text, write_json
from fibrosis.numeric import MetricWarning

logger = logging.getLogger(__name__)

READER_FORMAT = 1
UNCERTAIN = "uncertain"  # fibrosis.review.labels CALLS: the one call that is not a label


@dataclass(frozen=True, slots=True)
class Agreement:
    """The model against one set of labels (the reader's, or the reference standard): its AUC
    (None with the reason ``why`` when the labels hold one class) and its sensitivity/specificity
    at the threshold. Against the reference standard it also carries the model's ROC curve and
    the reader's own sensitivity/specificity on the cases the reader called."""
    n: int
    n_pos: int
    auc: DelongAuc | None
    why: str | None = None  # only when auc is None
    model: BinaryMetrics | None = None
    warnings: list[str] | None = None  # the small-sample warnings, kept for the report
    roc: RocCurve | None = None  # against the reference standard, when the AUC exists
    reader: BinaryMetrics | None = None  # against the reference standard; None when the reader called none
    n_reader_called: int | None = None  # set against the reference standard only

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "n_pos": self.n_pos}
        if self.auc is None:
            out.update(auc=None, why=self.why)
        else:
            out.update(auc=self.auc.to_json(), model=None if self.model is None else self.model.to_json(),
                       warnings=list(self.warnings or []))
        if self.roc is not None:
            out["roc"] = self.roc.to_json()
        if self.n_reader_called is not None:
            out.update(reader=None if self.reader is None else self.reader.to_json(),
                       n_reader_called=self.n_reader_called)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Agreement":
        d = obj(data, where, ("n", "n_pos", "auc"))
        if d["auc"] is None:
            d = obj(d, where, ("why",))
        else:
            d = obj(d, where, ("model", "warnings"))
        return cls(d["n"], d["n_pos"], None if d["auc"] is None else DelongAuc.from_json(d["auc"], f"{where}.auc"),
                   d.get("why"), None if d.get("model") is None else BinaryMetrics.from_json(d["model"], f"{where}.model"),
                   None if d.get("warnings") is None else arr(d["warnings"], f"{where}.warnings"),
                   None if d.get("roc") is None else RocCurve.from_json(d["roc"], f"{where}.roc"),
                   None if d.get("reader") is None else BinaryMetrics.from_json(d["reader"], f"{where}.reader"),
                   d.get("n_reader_called"))


@dataclass(frozen=True, slots=True)
class ReaderVsModel:
    """``RUN/reader/reader.json``: the reader's calls and the model on the same scored cases."""
    level: float
    threshold: float
    n_cases: int
    n_uncertain: int
    n_reader_positive: int
    against_reader: Agreement
    against_truth: Agreement | None  # None: no reference standard given
    # where the cases came from (file names only), set when the record is written
    scores: str | None = None
    reader_labels: str | None = None
    truth: str | None = None
    created: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": READER_FORMAT, "level": self.level, "threshold": self.threshold, "n_cases": self.n_cases,
            "n_uncertain": self.n_uncertain, "n_reader_positive": self.n_reader_positive,
            "against_reader": self.against_reader.to_json(),
            "against_truth": None if self.against_truth is None else self.against_truth.to_json()}
        if self.created is not None:
            out.update(scores=self.scores, reader_labels=self.reader_labels, truth=self.truth, created=self.created)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ReaderVsModel":
        d = obj(data, where, ("format", "level", "threshold", "n_cases", "n_uncertain", "n_reader_positive",
                              "against_reader", "against_truth"))
        if d["format"] != READER_FORMAT:
            raise ValueError(f"{where}: format={d['format']!r}; this version reads {READER_FORMAT}")
        return cls(d["level"], d["threshold"], d["n_cases"], d["n_uncertain"], d["n_reader_positive"],
                   Agreement.from_json(d["against_reader"], f"{where}: against_reader"),
                   None if d["against_truth"] is None else Agreement.from_json(d["against_truth"],
                                                                               f"{where}: against_truth"),
                   d.get("scores"), d.get("reader_labels"), d.get("truth"), d.get("created"))

    @classmethod
    def read(cls, path: Path) -> "ReaderVsModel":
        return cls.from_json(json.loads(read_text(path)), str(path))


def reader_vs_model(prob: Any, threshold: float, reader: Any, truth: Any | None = None,
                    level: float = 0.95) -> ReaderVsModel:
    """``prob``: the model's calibrated probabilities; ``reader``: 1 / 0 / NaN (uncertain) per case;
    ``truth``: 1 / 0 / NaN (no reference label) per case, or None. A part that the cases cannot
    support (one class only) is None with its reason."""
    p, r = np.asarray(prob, float), np.asarray(reader, float)
    called = ~np.isnan(r)
    against_reader = _against(r[called], p[called], threshold, level, "the reader's labels")
    head = (level, threshold, int(len(p)), int((~called).sum()), int((r == 1).sum()), against_reader)
    if truth is None:
        return ReaderVsModel(*head, None)
    t = np.asarray(truth, float)
    known = ~np.isnan(t)
    both = known & called
    model = _against(t[known], p[known], threshold, level, "the reference standard")
    roc = RocCurve.from_json(roc_points(t[known].astype(int), p[known]), "reader vs model: roc") \
        if model.auc is not None else None
    reader_cm = confusion(t[both].astype(int), r[both], 0.5) if both.any() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # an empty cell is reported as None
        reader_metrics = binary_metrics(reader_cm, level) if reader_cm else None
    return ReaderVsModel(*head, replace(model, roc=roc, reader=reader_metrics, n_reader_called=int(both.sum())))


def _against(y: np.ndarray, p: np.ndarray, threshold: float, level: float, what: str) -> Agreement:
    """The model's AUC and its sensitivity/specificity at ``threshold`` against labels ``y``."""
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == len(y):
        return Agreement(int(len(y)), n_pos, None,
                         why=f"{len(y)} case(s) with {what}, {n_pos} positive: an AUC needs both classes")
    with warnings.catch_warnings(record=True) as caught:  # small samples: kept for the report to print
        warnings.simplefilter("always", MetricWarning)
        auc = DelongAuc.from_json(auc_delong(y.astype(int), p, level), f"against {what}: auc")
        model = binary_metrics(confusion(y.astype(int), p, threshold), level)
    return Agreement(int(len(y)), n_pos, auc, model=model,
                     warnings=[f"against {what}: {w.message}" for w in caught if issubclass(w.category, MetricWarning)])


def _value(label: str) -> float:
    return float(label) if label in ("0", "1") else np.nan


def reader_cases(scores: Path, rows: Iterable[Mapping[str, str]], reader_labels: Path, label_column: str,
                 truth: Path | None = None) -> tuple[np.ndarray, float, np.ndarray, np.ndarray | None]:
    """(probabilities, threshold, reader calls, reference labels or None) of the ``ok`` images among
    ``rows`` of ``scores`` (read by its own stage's reader) that the reader labelled (uncertain
    included, as NaN)."""
    reader = load_labels(reader_labels, label_column)
    ref = load_labels(truth, label_column) if truth is not None else None
    probs, calls, refs, thresholds = [], [], [], set()
    for row in rows:
        if row["status"] != "ok":
            continue
        hit, _ = reader.row(row["path"], row["sop_uid"], row["study_uid"])
        if hit is None:
            continue
        probs.append(float(row["probability_calibrated"]))
        thresholds.add(float(row["threshold"]))
        calls.append(np.nan if hit.get("reader_call") == UNCERTAIN else _value(hit["_label"]))
        if ref is not None:
            refs.append(_value(ref.label(row["path"], row["sop_uid"], row["study_uid"])[0]))
    if len(thresholds) > 1:
        raise ValueError(f"{scores}: {len(thresholds)} different thresholds; expected the scores of one model")
    logger.info("%s: %d scored image(s) with a reader label (%d uncertain)", reader_labels, len(probs),
                sum(np.isnan(calls)))
    return (np.array(probs), thresholds.pop() if thresholds else float("nan"), np.array(calls, float),
            np.array(refs, float) if ref is not None else None)


def write_reader_vs_model(out: Path, scores: Path, rows: Iterable[Mapping[str, str]], reader_labels: Path,
                          label_column: str, truth: Path | None = None, level: float = 0.95) -> ReaderVsModel | None:
    """``out`` (JSON, atomically) from :func:`reader_cases` and :func:`reader_vs_model`; None (and
    nothing written) when the reader labelled none of the scored images. Files are named by their
    name only: a folder may carry a patient's name."""
    prob, threshold, calls, ref = reader_cases(scores, rows, reader_labels, label_column, truth)
    if len(prob) == 0:
        return None
    res = replace(reader_vs_model(prob, threshold, calls, ref, level), scores=scores.name,
                  reader_labels=reader_labels.name, truth=truth.name if truth else None,
                  created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res.to_json())
    logger.info("reader vs model: %s", out)
    return res
