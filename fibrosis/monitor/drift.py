"""Input and output shift of one window of scored rows against the reference (pure).

A window is a list of joined rows: the scores.csv row (status, probability, decision)
with its side-file row (header fields, image statistics) merged in. Each check is a
:class:`Check`: ``family`` (input / output), ``check`` (what was compared), the test record of
:mod:`fibrosis.monitor.stattests` and a one-line ``summary``. Whether a check alerts is
decided later, over all checks of the window (:func:`fibrosis.monitor.compute.decide`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fibrosis.evaluate.reference import (CATEGORIES, CONTINUOUS, UNITS, Reference, category_value, continuous_value,
                                        reason_class)
from fibrosis.monitor import stattests as T
from fibrosis.monitor.load import ScoredImage

HIST_BINS = 20


@dataclass(frozen=True, slots=True)
class Histogram:
    """Calibrated probabilities of the reference and the batch over the same bins."""
    edges: list[float]
    reference: list[int]
    batch: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"edges": self.edges, "reference": self.reference, "batch": self.batch}


@dataclass(frozen=True, slots=True)
class Check:
    """One shift test of a window; ``alpha_corrected`` and ``alert`` are set over the window."""
    family: str  # input | output
    check: str
    kind: str  # category | continuous | rate
    result: T.TestResult
    summary: str
    unit: str | None = None  # continuous header values and image statistics
    reasons: dict[str, int] | None = None  # rates of excluded/failed images: theirs, by class
    reference_reasons: dict[str, int] | None = None
    histogram: Histogram | None = None  # the calibrated probability
    alpha_corrected: float | None = None
    alert: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.family, "check": self.check, "kind": self.kind}
        if self.unit is not None:
            out["unit"] = self.unit
        out.update(self.result.to_json())
        if self.reasons is not None:
            out.update(reasons=dict(self.reasons), reference_reasons=dict(self.reference_reasons or {}))
        if self.histogram is not None:
            out["histogram"] = self.histogram.to_json()
        out.update(summary=self.summary, alpha_corrected=self.alpha_corrected, alert=self.alert)
        return out


def status_kind(row: ScoredImage) -> str:
    """scores.csv `status`: ok, excluded or error (the reason is its own column)."""
    return row.status


def _top(counts: dict[str, int], k: int = 3) -> str:
    return ", ".join(f"{c} {v}" for c, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


def _continuous_summary(res: T.ContinuousTest, digits: str, unit: str = "") -> str:
    assert res.reference_quartiles is not None and res.batch_quartiles is not None  # both samples non-empty
    return (f"median {res.batch_quartiles[1]:{digits}} vs reference {res.reference_quartiles[1]:{digits}}{unit}; "
            f"KS D={res.statistic:.3f}, PSI {res.psi:.2f}")


def input_checks(ref: Reference, rows: Sequence[ScoredImage]) -> list[Check]:
    """Metadata mix, continuous header values, image statistics, excluded and failed shares."""
    ok = [r.cells for r in rows if status_kind(r) == "ok" and r.has_meta]
    checks: list[Check] = []
    for name in CATEGORIES:
        cat = T.categorical_test(ref.categories[name], Counter(category_value(r, name) for r in ok))
        unseen = f"; never seen in the reference: {', '.join(repr(u) for u in cat.unseen)}" if cat.unseen else ""
        checks.append(Check("input", name, "category", cat,
                            f"batch {_top(cat.batch)} vs reference {_top(cat.reference)}{unseen}"))
    for name in CONTINUOUS:
        values = [v for v in (continuous_value(r, name) for r in ok) if v is not None]
        res = T.continuous_test(ref.continuous[name], values)
        if res.p is None:
            continue  # e.g. no pixel spacing in PNG exports: nothing to compare, not a shift
        checks.append(Check("input", name, "continuous", res, _continuous_summary(res, ".4g", f" {UNITS[name]}"),
                            unit=UNITS[name]))
    out = ref.outcomes
    kinds = Counter(status_kind(r) for r in rows)
    level = ref.minimums.level
    reasons = Counter(f"{status_kind(r)}: {reason_class(str(r.cells.get('reason', '')))}"
                      for r in rows if status_kind(r) in ("excluded", "error"))
    for kind in ("excluded", "error"):
        before = out.excluded if kind == "excluded" else out.error
        rate = T.rate_test(before, out.n, kinds[kind], len(rows), level)
        name = "excluded share" if kind == "excluded" else "failed share"
        mine = {k: v for k, v in reasons.items() if k.startswith(kind)}
        checks.append(Check("input", name, "rate", rate,
                            f"{kinds[kind]}/{len(rows)} vs reference {before}/{out.n}"
                            + (f" ({_top(mine)})" if mine else ""), reasons=dict(mine),
                            reference_reasons={k: v for k, v in out.reasons.items() if k.startswith(kind)}))
    return checks


def output_checks(ref: Reference, rows: Sequence[ScoredImage]) -> list[Check]:
    """Calibrated probabilities and the positive rate at the frozen operating point."""
    ok = [r.cells for r in rows if status_kind(r) == "ok" and str(r.cells.get("probability_calibrated", "")) != ""]
    probs = [float(r["probability_calibrated"]) for r in ok]
    res = T.continuous_test(ref.probabilities, probs)
    checks = []
    if res.p is not None:
        edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
        hist = Histogram(edges.tolist(), np.histogram(ref.probabilities, edges)[0].tolist(),
                         np.histogram(probs, edges)[0].tolist())
        checks.append(Check("output", "calibrated probability", "continuous", res, _continuous_summary(res, ".3f"),
                            histogram=hist))
    thr = ref.threshold
    k = sum(int(r.get("decision_fibrosis") or 0) for r in ok)
    rate = T.rate_test(ref.positive_k, ref.positive_n, k, len(ok), ref.minimums.level)
    if len(ok):
        b, r = rate.batch, rate.reference
        assert b.value is not None and b.ci is not None and r.value is not None and r.ci is not None  # n > 0
        checks.append(Check("output", f"positive rate at {thr.name} ({thr.value:.4g})", "rate", rate,
                            f"{k}/{len(ok)} = {100 * b.value:.1f}% ({100 * b.ci[0]:.1f}-"
                            f"{100 * b.ci[1]:.1f}%) vs reference {100 * r.value:.1f}% "
                            f"({100 * r.ci[0]:.1f}-{100 * r.ci[1]:.1f}%)"))
    return checks
