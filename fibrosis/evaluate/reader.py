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
import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis.data.labels import load_labels
from fibrosis.evaluate.metrics import auc_delong, roc_points
from fibrosis.evaluate.operating import binary_metrics, confusion
from fibrosis.io import write_json
from fibrosis.numeric import MetricWarning

logger = logging.getLogger(__name__)

READER_FORMAT = 1
UNCERTAIN = "uncertain"  # fibrosis.review.labels CALLS: the one call that is not a label


def reader_vs_model(prob: Any, threshold: float, reader: Any, truth: Any | None = None,
                    level: float = 0.95) -> dict[str, Any]:
    """``prob``: the model's calibrated probabilities; ``reader``: 1 / 0 / NaN (uncertain) per case;
    ``truth``: 1 / 0 / NaN (no reference label) per case, or None. JSON-able result; a part that the
    cases cannot support (one class only) is None with its reason."""
    p, r = np.asarray(prob, float), np.asarray(reader, float)
    called = ~np.isnan(r)
    out: dict[str, Any] = {"format": READER_FORMAT, "level": level, "threshold": threshold, "n_cases": int(len(p)),
                           "n_uncertain": int((~called).sum()), "n_reader_positive": int((r == 1).sum())}
    out["against_reader"] = _against(r[called], p[called], threshold, level, "the reader's labels")
    if truth is None:
        out["against_truth"] = None
        return out
    t = np.asarray(truth, float)
    known = ~np.isnan(t)
    both = known & called
    model = _against(t[known], p[known], threshold, level, "the reference standard")
    if model.get("auc") is not None:
        model["roc"] = roc_points(t[known].astype(int), p[known])
    reader_cm = confusion(t[both].astype(int), r[both], 0.5) if both.any() else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # an empty cell is reported as None
        model["reader"] = binary_metrics(reader_cm, level).to_json() if reader_cm else None
    model["n_reader_called"] = int(both.sum())
    out["against_truth"] = model
    return out


def _against(y: np.ndarray, p: np.ndarray, threshold: float, level: float, what: str) -> dict[str, Any]:
    """The model's AUC and its sensitivity/specificity at ``threshold`` against labels ``y``."""
    n_pos = int((y == 1).sum())
    res: dict[str, Any] = {"n": int(len(y)), "n_pos": n_pos}
    if n_pos == 0 or n_pos == len(y):
        res.update(auc=None, why=f"{len(y)} case(s) with {what}, {n_pos} positive: an AUC needs both classes")
        return res
    with warnings.catch_warnings(record=True) as caught:  # small samples: kept for the report to print
        warnings.simplefilter("always", MetricWarning)
        res["auc"] = auc_delong(y.astype(int), p, level)
        res["model"] = binary_metrics(confusion(y.astype(int), p, threshold), level).to_json()
    res["warnings"] = [f"against {what}: {w.message}" for w in caught if issubclass(w.category, MetricWarning)]
    return res


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
                          label_column: str, truth: Path | None = None, level: float = 0.95) -> dict[str, Any] | None:
    """``out`` (JSON, atomically) from :func:`reader_cases` and :func:`reader_vs_model`; None (and
    nothing written) when the reader labelled none of the scored images. Files are named by their
    name only: a folder may carry a patient's name."""
    prob, threshold, calls, ref = reader_cases(scores, rows, reader_labels, label_column, truth)
    if len(prob) == 0:
        return None
    res = reader_vs_model(prob, threshold, calls, ref, level)
    res.update(scores=scores.name, reader_labels=reader_labels.name, truth=truth.name if truth else None,
               created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res)
    logger.info("reader vs model: %s", out)
    return res
