"""The reference `fibrosis monitor` compares new scores with: what the evaluated split looked like.

`fibrosis evaluate` writes ``RUN/eval/<split>/reference.json`` beside ``metrics.json``:
the calibrated probabilities and the positive rate at the frozen operating point, the
metadata mix (manufacturer, model, view, modality, transfer syntax, sex, age band),
continuous values (pixel spacing, image size, cached-image statistics), the share of
inputs the cache excluded or failed (by reason), and the headline numbers of the
validation report. Aggregates and per-image numbers only: no paths, keys or UIDs.

The value functions here (:func:`category_value`, :func:`continuous_value`,
:func:`reason_class`) are what the monitor applies to scored rows, so both sides are
read the same way.
"""
from __future__ import annotations

import dataclasses

import datetime as dt
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis import artefacts
from fibrosis.data.cache import IMAGE_STATS, image_statistics
from fibrosis.data.manifest import ManifestRow
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.subgroups import age_band
from fibrosis.io import file_sha256, read_csv, write_json
from fibrosis.model.threshold import ThresholdRecord

logger = logging.getLogger(__name__)

REFERENCE_FORMAT = 1
ECE_RESAMPLES = 1000
CATEGORIES: tuple[str, ...] = ("manufacturer", "model_name", "view_position", "modality",
                               "transfer_syntax", "sex", "age_band")
CONTINUOUS: tuple[str, ...] = ("pixel_spacing", "rows", "cols", *IMAGE_STATS)
UNITS = {"pixel_spacing": "mm (row spacing)", "rows": "pixels", "cols": "pixels",
         **{k: "[0, 1] display scale" for k in IMAGE_STATS}}
_TAG_REASON = re.compile(r"^(\(\w{4},\w{4}\) \w+)")


def _need(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{where}: no {key!r}; expected a reference written by `fibrosis evaluate`")
    return data[key]


@dataclass(frozen=True, slots=True)
class Interval:
    """A value with its interval (either None when not estimable)."""
    value: float | None
    ci: list[float] | None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "ci": self.ci}


@dataclass(frozen=True, slots=True)
class PerformanceSummary:
    """The validation report's headline numbers (``performance`` of reference.json)."""
    auc: float
    auc_ci: list[float] | None
    intercept: float | None
    intercept_ci: list[float] | None
    slope: float | None
    slope_ci: list[float] | None
    ece: float
    ece_bins: int
    ece_strategy: str
    sensitivity: Interval
    specificity: Interval
    operating_point: str
    level: float
    n: int
    n_pos: int
    ece_ci: list[float] | None = None  # absent in references of earlier versions

    def to_json(self) -> dict[str, Any]:
        out = {"auc": self.auc, "auc_ci": self.auc_ci, "intercept": self.intercept, "intercept_ci": self.intercept_ci,
               "slope": self.slope, "slope_ci": self.slope_ci, "ece": self.ece, "ece_bins": self.ece_bins,
               "ece_strategy": self.ece_strategy, "sensitivity": self.sensitivity.to_json(),
               "specificity": self.specificity.to_json(), "operating_point": self.operating_point,
               "level": self.level, "n": self.n, "n_pos": self.n_pos}
        return out if self.ece_ci is None else {**out, "ece_ci": self.ece_ci}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "PerformanceSummary":
        where = f"{where}: performance"
        get = {k: _need(data, k, where) for k in ("auc", "auc_ci", "ece", "ece_bins", "ece_strategy",
                                                  "sensitivity", "specificity", "operating_point", "level",
                                                  "n", "n_pos")}
        sens, spec = (Interval(_need(get[k], "value", f"{where}.{k}"), _need(get[k], "ci", f"{where}.{k}"))
                      for k in ("sensitivity", "specificity"))
        return cls(get["auc"], get["auc_ci"], data.get("intercept"), data.get("intercept_ci"), data.get("slope"),
                   data.get("slope_ci"), get["ece"], int(get["ece_bins"]), str(get["ece_strategy"]), sens, spec,
                   str(get["operating_point"]), float(get["level"]), int(get["n"]), int(get["n_pos"]),
                   data.get("ece_ci"))


@dataclass(frozen=True, slots=True)
class FrozenThreshold:
    """The operating point scoring applies (``threshold`` of reference.json)."""
    name: str
    value: float
    rule: str | None = None  # absent in hand-made references

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value}
        return out if self.rule is None else {**out, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class Outcomes:
    """ok / excluded / error counts of the evaluated cache, and the reasons by class."""
    n: int
    ok: int
    excluded: int
    error: int
    reasons: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "ok": self.ok, "excluded": self.excluded, "error": self.error,
                "reasons": dict(self.reasons)}


@dataclass(frozen=True, slots=True)
class Minimums:
    """Below these a monitored window is small: shown, not tested (the subgroup minimums)."""
    min_n: int
    min_positives: int
    level: float

    def to_json(self) -> dict[str, Any]:
        return {"min_n": self.min_n, "min_positives": self.min_positives, "level": self.level}


@dataclass(frozen=True, slots=True)
class Reference:
    """reference.json as `fibrosis monitor` reads it (:func:`build_reference` writes it)."""
    split: str
    frozen: bool
    model_id: str
    created: str
    n: int
    threshold: FrozenThreshold
    probabilities: list[float]
    positive_k: int  # images at or above the threshold
    positive_n: int
    categories: dict[str, dict[str, int]]  # CATEGORIES -> value -> images
    continuous: dict[str, list[float]]  # CONTINUOUS -> values
    outcomes: Outcomes
    performance: PerformanceSummary
    minimums: Minimums

    def to_json(self) -> dict[str, Any]:
        return {"format": REFERENCE_FORMAT, "split": self.split, "frozen": self.frozen, "model_id": self.model_id,
                "created": self.created, "n": self.n, "threshold": self.threshold.to_json(),
                "probabilities": list(self.probabilities), "positive": {"k": self.positive_k, "n": self.positive_n},
                "categories": {c: dict(v) for c, v in self.categories.items()},
                "continuous": {c: list(v) for c, v in self.continuous.items()},
                "outcomes": self.outcomes.to_json(), "performance": self.performance.to_json(),
                "minimums": self.minimums.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Reference":
        """Validate a reference.json; errors name ``where`` (the file) and the key."""
        if not isinstance(data, dict) or data.get("format") != REFERENCE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{where}: reference format={found!r}; this version reads {REFERENCE_FORMAT}")
        thr, pos, out, mins = (_need(data, k, where) for k in ("threshold", "positive", "outcomes", "minimums"))
        categories, continuous = _need(data, "categories", where), _need(data, "continuous", where)
        for key, table, names in (("categories", categories, CATEGORIES), ("continuous", continuous, CONTINUOUS)):
            for name in names:
                _need(table, name, f"{where}: {key}")
        return cls(
            str(_need(data, "split", where)), bool(_need(data, "frozen", where)), str(_need(data, "model_id", where)),
            str(_need(data, "created", where)), int(_need(data, "n", where)),
            FrozenThreshold(str(_need(thr, "name", f"{where}: threshold")),
                            float(_need(thr, "value", f"{where}: threshold")), thr.get("rule")),
            list(_need(data, "probabilities", where)), int(_need(pos, "k", f"{where}: positive")),
            int(_need(pos, "n", f"{where}: positive")), categories, continuous,
            Outcomes(int(_need(out, "n", f"{where}: outcomes")), int(_need(out, "ok", f"{where}: outcomes")),
                     int(_need(out, "excluded", f"{where}: outcomes")), int(_need(out, "error", f"{where}: outcomes")),
                     dict(_need(out, "reasons", f"{where}: outcomes"))),
            PerformanceSummary.from_json(_need(data, "performance", where), where),
            Minimums(int(_need(mins, "min_n", f"{where}: minimums")),
                     int(_need(mins, "min_positives", f"{where}: minimums")),
                     float(_need(mins, "level", f"{where}: minimums"))))


def category_value(row: dict[str, Any], name: str) -> str:
    """One metadata category of a manifest or side-file row; '' becomes 'unknown'."""
    if name == "age_band":
        return age_band(row.get("age"))
    return str(row.get(name) or "").strip().upper() or "unknown"


def continuous_value(row: dict[str, Any], name: str) -> float | None:
    """A number, or None when absent (PNG exports have no pixel spacing)."""
    value = row.get(name)
    text = "" if value is None else str(value).strip()  # not `or ""`: 0.0 is a value (dark 5th percentiles)
    if name == "pixel_spacing":
        text = text.split("\\")[0]
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) and (name not in ("rows", "cols", "pixel_spacing") or value > 0) else None


def reason_class(reason: str) -> str:
    """A short, value-free class of an exclusion/error reason, for counting: the DICOM tag
    and keyword when the reason starts with one, else its first words (values cut at '=', ':',
    digits or quotes)."""
    text = " ".join(str(reason).split())
    m = _TAG_REASON.match(text)
    if m:
        return m.group(1)
    head = re.split(r"[=:'\"(\d]", text, maxsplit=1)[0].strip(" ,;")
    return " ".join(head.split()[:6]) or "other"


def outcome_counts(n_ok: int, rejects: Sequence[dict[str, str]]) -> Outcomes:
    """ok / excluded / error counts and reasons; duplicates are not outcomes of an image."""
    kinds = [r for r in rejects if r.get("kind") in ("excluded", "error")]
    return Outcomes(n_ok + len(kinds), n_ok, sum(r["kind"] == "excluded" for r in kinds),
                    sum(r["kind"] == "error" for r in kinds),
                    dict(Counter(f"{r['kind']}: {reason_class(r.get('reason', ''))}" for r in kinds)))


def ece_interval(y: Any, p: Any, n_bins: int, strategy: str, level: float,
                 seed: int = 0, n_resamples: int = ECE_RESAMPLES) -> list[float]:
    """Percentile bootstrap interval of the ECE (images resampled, seeded): the report gives
    the ECE without one, and the monitor compares ECEs of two samples."""
    from fibrosis.evaluate.metrics import expected_calibration_error

    y, p = np.asarray(y, int), np.asarray(p, float)
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(y[i], p[i], n_bins, strategy)
              for i in (rng.integers(0, len(y), len(y)) for _ in range(n_resamples))]
    a = (1 - level) / 2
    return np.quantile(values, [a, 1 - a]).tolist()


def performance_summary(metrics: EvaluationResult, threshold_name: str) -> PerformanceSummary:
    """The validation report's headline numbers, each with its interval (the ECE's is added by
    :func:`build_reference`, which has the images)."""
    disc, after = metrics.discrimination, metrics.calibration.after
    cs = after.intercept_slope
    op = next((o for o in metrics.operating_points if o.name == threshold_name),
              metrics.operating_points[0])
    ecfg = metrics.evaluate_config
    return PerformanceSummary(disc.auc, disc.delong.ci, cs.intercept, cs.intercept_ci, cs.slope, cs.slope_ci,
                              after.reliability.ece, ecfg["ece_bins"], ecfg["ece_strategy"],
                              Interval(op.sensitivity.value, op.sensitivity.ci),
                              Interval(op.specificity.value, op.specificity.ci), op.name, ecfg["ci_level"],
                              metrics.data.n, metrics.data.n_pos)


def build_reference(rows: Sequence[ManifestRow], labels: Any, prob: Any, stats: Sequence[dict[str, float]],
                    metrics: EvaluationResult, threshold: ThresholdRecord, rejects: Sequence[dict[str, str]],
                    model_id: str, n_cached: int) -> Reference:
    """Pure: the reference record of one evaluated split (rows, calibrated probabilities and
    image statistics aligned). Rejects belong to no split, so the excluded/failed shares are
    those of the whole cache (``n_cached`` images ingested)."""
    p = np.asarray(prob, float)
    if not len(rows) == len(p) == len(stats):
        raise ValueError(f"reference: {len(rows)} rows, {len(p)} probabilities, {len(stats)} image statistics; "
                         "expected one of each per image")
    # as cells: the value functions read the monitor's scored rows (dicts of text) alike
    cells = [r.cells() for r in rows]
    merged = [{**r, **s} for r, s in zip(cells, stats)]
    name, value = threshold.default, threshold.value
    ecfg = metrics.evaluate_config
    perf = performance_summary(metrics, name)
    perf = dataclasses.replace(perf, ece_ci=ece_interval(labels, p, perf.ece_bins, perf.ece_strategy, perf.level))
    return Reference(
        metrics.split, metrics.frozen, model_id, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        len(rows), FrozenThreshold(name, value, threshold.rule or ""), [round(float(v), 6) for v in p],
        int((p >= value).sum()), int(len(p)),
        {c: dict(Counter(category_value(r, c) for r in cells)) for c in CATEGORIES},
        {c: [v for v in (continuous_value(r, c) for r in merged) if v is not None] for c in CONTINUOUS},
        outcome_counts(n_cached, rejects), perf,
        Minimums(ecfg["min_subgroup_n"], ecfg["min_subgroup_positives"], ecfg["ci_level"]))


def write_reference(out: Path, ckpt_path: Path, rows: Sequence[ManifestRow], labels: Any, prob: Any,
                    metrics: EvaluationResult, threshold: ThresholdRecord, reader: Any,
                    index: Sequence[int]) -> Path:
    """I/O adapter: image statistics from the cache, rejects.csv, the checkpoint's model id
    (as `fibrosis score` writes it), then ``out/reference.json``."""
    stats = [image_statistics(reader.raw(i)) for i in index]
    rejects_csv = Path(reader.root) / artefacts.REJECTS
    rejects = read_csv(rejects_csv) if rejects_csv.exists() else []
    ref = build_reference(rows, labels, prob, stats, metrics, threshold, rejects, file_sha256(ckpt_path)[:16],
                          len(reader.rows))
    path = Path(out) / artefacts.REFERENCE
    write_json(path, ref.to_json())
    logger.info("monitoring reference (%d images of %r) -> %s", ref.n, ref.split, path)
    return path
