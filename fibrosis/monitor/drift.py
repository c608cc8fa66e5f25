"""Input and output shift of one window of scored rows against the reference (pure).

A window is a list of joined rows: the scores.csv row (status, probability, decision)
with its side-file row (header fields, image statistics) merged in. Each check is a
dict: ``family`` (input / output), ``check`` (what was compared), the test record of
:mod:`fibrosis.monitor.stattests` and a one-line ``summary``. Whether a check alerts is
decided later, over all checks of the window (:mod:`fibrosis.monitor.alerts`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fibrosis.evaluate.reference import CATEGORIES, CONTINUOUS, UNITS, category_value, continuous_value, reason_class
from fibrosis.monitor import stattests as T

Row = dict[str, Any]
HIST_BINS = 20


def status_kind(row: Row) -> str:
    """scores.csv `status`: ok, excluded or error (the reason is its own column)."""
    return str(row.get("status", ""))


def _top(counts: dict[str, int], k: int = 3) -> str:
    return ", ".join(f"{c} {v}" for c, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


def input_checks(ref: dict[str, Any], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Metadata mix, continuous header values, image statistics, excluded and failed shares."""
    ok = [r for r in rows if status_kind(r) == "ok" and r.get("_has_meta")]
    checks: list[dict[str, Any]] = []
    for name in CATEGORIES:
        res = T.categorical_test(ref["categories"][name], Counter(category_value(r, name) for r in ok))
        unseen = f"; never seen in the reference: {', '.join(repr(u) for u in res['unseen'])}" if res["unseen"] else ""
        checks.append({"family": "input", "check": name, "kind": "category", **res,
                       "summary": f"batch {_top(res['batch'])} vs reference {_top(res['reference'])}{unseen}"})
    for name in CONTINUOUS:
        values = [v for v in (continuous_value(r, name) for r in ok) if v is not None]
        res = T.continuous_test(ref["continuous"][name], values)
        if res["p"] is None:
            continue  # e.g. no pixel spacing in PNG exports: nothing to compare, not a shift
        rq, bq = res["reference_quartiles"][1], res["batch_quartiles"][1]
        checks.append({"family": "input", "check": name, "kind": "continuous", "unit": UNITS[name], **res,
                       "summary": f"median {bq:.4g} vs reference {rq:.4g} {UNITS[name]}; "
                                  f"KS D={res['statistic']:.3f}, PSI {res['psi']:.2f}"})
    out = ref["outcomes"]
    kinds = Counter(status_kind(r) for r in rows)
    level = ref["minimums"]["level"]
    reasons = Counter(f"{status_kind(r)}: {reason_class(str(r.get('reason', '')))}"
                      for r in rows if status_kind(r) in ("excluded", "error"))
    for kind in ("excluded", "error"):
        res = T.rate_test(out[kind], out["n"], kinds[kind], len(rows), level)
        name = "excluded share" if kind == "excluded" else "failed share"
        mine = {k: v for k, v in reasons.items() if k.startswith(kind)}
        checks.append({"family": "input", "check": name, "kind": "rate", **res, "reasons": dict(mine),
                       "reference_reasons": {k: v for k, v in out["reasons"].items() if k.startswith(kind)},
                       "summary": f"{kinds[kind]}/{len(rows)} vs reference {out[kind]}/{out['n']}"
                                  + (f" ({_top(mine)})" if mine else "")})
    return checks


def output_checks(ref: dict[str, Any], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Calibrated probabilities and the positive rate at the frozen operating point."""
    ok = [r for r in rows if status_kind(r) == "ok" and str(r.get("probability_calibrated", "")) != ""]
    probs = [float(r["probability_calibrated"]) for r in ok]
    res = T.continuous_test(ref["probabilities"], probs)
    checks = []
    if res["p"] is not None:
        edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
        hist = {"edges": edges.tolist(), "reference": np.histogram(ref["probabilities"], edges)[0].tolist(),
                "batch": np.histogram(probs, edges)[0].tolist()}
        checks.append({"family": "output", "check": "calibrated probability", "kind": "continuous", **res,
                       "histogram": hist,
                       "summary": f"median {res['batch_quartiles'][1]:.3f} vs reference "
                                  f"{res['reference_quartiles'][1]:.3f}; KS D={res['statistic']:.3f}, "
                                  f"PSI {res['psi']:.2f}"})
    thr = ref["threshold"]
    k = sum(int(r.get("decision_fibrosis") or 0) for r in ok)
    rate = T.rate_test(ref["positive"]["k"], ref["positive"]["n"], k, len(ok), ref["minimums"]["level"])
    if len(ok):
        b, r = rate["batch"], rate["reference"]
        checks.append({"family": "output", "check": f"positive rate at {thr['name']} ({thr['value']:.4g})",
                       "kind": "rate", **rate,
                       "summary": f"{k}/{len(ok)} = {100 * b['value']:.1f}% ({100 * b['ci'][0]:.1f}-"
                                  f"{100 * b['ci'][1]:.1f}%) vs reference {100 * r['value']:.1f}% "
                                  f"({100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f}%)"})
    return checks
