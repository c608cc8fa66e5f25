"""Windows, checks and alerts: the whole monitoring result from joined rows (pure).

Alert rules (stated in monitor.json and on the page):

* input / output shift: p < alpha / m (Bonferroni over the m shift tests of that window),
  and for continuous values also PSI >= ``PSI_ALERT`` (a shift too small to matter is
  not an alert however many images show it);
* performance: the new interval excludes the validation report's value;
* a window below the subgroup minimums (``evaluate.min_subgroup_n`` images;
  ``min_subgroup_positives`` positives and negatives for performance) is flagged
  ``small`` and raises no alert: its numbers are shown, never over-read.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fibrosis.monitor.drift import Row, input_checks, output_checks, status_kind
from fibrosis.monitor.performance import performance

MONITOR_FORMAT = 1
ALPHA = 0.01
PSI_ALERT = 0.1
WINDOW_MODES = ("auto", "month", "batch")
RULES = ("input/output shift: alert when p < alpha / m (Bonferroni over the m shift tests of the window) "
         f"and, for continuous values, PSI >= {PSI_ALERT}",
         "performance: flagged when the new interval excludes the value in the validation report; an alert "
         "when, in addition, the validation interval excludes the new value (both are samples)",
         "a window under the subgroup minimums (images; positives and negatives for performance) is "
         "flagged small and raises no alert")
METRIC_NAMES = {"auc": "AUC", "calibration_intercept": "calibration-in-the-large",
                "calibration_slope": "calibration slope", "ece": "ECE",
                "sensitivity": "sensitivity", "specificity": "specificity"}


def window_of(row: Row, mode: str) -> str:
    """Study month (``YYYY-MM``) or scoring batch of one row."""
    month = str(row.get("study_month") or "")
    if mode == "month":
        return month or "no date"
    return str(row.get("_batch") or "batch")


def resolve_mode(rows: Sequence[Row], mode: str) -> str:
    """``auto``: by month when most scored images carry a StudyDate/AcquisitionDate, else by batch."""
    if mode not in WINDOW_MODES:
        raise ValueError(f"window mode {mode!r}; allowed: {list(WINDOW_MODES)}")
    if mode != "auto":
        return mode
    dated = sum(bool(r.get("study_month")) for r in rows)
    return "month" if rows and dated >= 0.5 * len(rows) else "batch"


def _fmt_ci(ci: Any, pct: bool = False) -> str:
    if not ci:
        return "n/a"
    return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%" if pct else f"{ci[0]:.3f}-{ci[1]:.3f}"


def _fmt(v: Any, pct: bool = False) -> str:
    return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")


def decide(checks: list[dict[str, Any]], small: bool, alpha: float) -> None:
    """Set ``alert`` (and the corrected threshold) on every shift check of one window."""
    tested = [c for c in checks if c.get("p") is not None]
    cut = alpha / max(1, len(tested))
    for c in checks:
        big_enough = c.get("psi") is None or c["psi"] >= PSI_ALERT
        c["alpha_corrected"] = cut
        c["alert"] = bool(not small and c.get("p") is not None and c["p"] < cut and big_enough)


def assess_window(ref: dict[str, Any], name: str, rows: Sequence[Row], alpha: float) -> dict[str, Any]:
    mins = ref["minimums"]
    n_ok = sum(status_kind(r) == "ok" for r in rows)
    small = n_ok < mins["min_n"]
    checks = input_checks(ref, rows) + output_checks(ref, rows)
    decide(checks, small, alpha)
    labelled = [r for r in rows if status_kind(r) == "ok" and r.get("_label") is not None]
    perf = None
    if labelled:
        perf = performance(ref["performance"], [r["_label"] for r in labelled],
                           [float(r["logit_uncalibrated"]) for r in labelled],
                           [float(r["probability_calibrated"]) for r in labelled],
                           [int(r["decision_fibrosis"]) for r in labelled], mins["min_n"], mins["min_positives"])
    window = {"name": name, "n": len(rows), "n_ok": n_ok, "n_labelled": len(labelled), "small": small,
              "flags": [f"n={n_ok} scored ok < {mins['min_n']}"] if small else [],
              "checks": checks, "performance": perf}
    window["alerts"], window["notes"] = window_alerts(window, ref)
    return window


def window_alerts(w: dict[str, Any], ref: dict[str, Any]) -> tuple[list[str], list[str]]:
    """One line per alert (the cause, the numbers, the test and both sample sizes) and notes."""
    alerts, notes = [], []
    where = f"[{w['name']}]"
    for c in w["checks"]:
        if c["alert"]:
            alerts.append(f"{where} {c['family']} shift: {c['check']}: {c['summary']} ({c['test']}, "
                          f"p={c['p']:.2g} < {c['alpha_corrected']:.2g}; n={c['n_batch']} vs reference "
                          f"{c['n_reference']})")
    if w["small"]:
        notes.append(f"{where} small batch ({'; '.join(w['flags'])}): shown, not tested for alerts")
    perf = w["performance"]
    if perf is not None and perf["small"]:
        notes.append(f"{where} performance on {perf['n']} labelled images ({'; '.join(perf['flags'])}): "
                     "shown, not flagged")
    elif perf is not None:
        level = f"{100 * perf['level']:.4g}% CI"
        for key, m in perf["metrics"].items():
            if m["changed"]:
                pct = key in ("sensitivity", "specificity")
                alerts.append(f"{where} performance: {METRIC_NAMES[key]} {_fmt(m['value'], pct)} ({level} "
                              f"{_fmt_ci(m['ci'], pct)}, {m['method']}) vs validation {_fmt(m['reference'], pct)}: "
                              f"({_fmt_ci(m['reference_ci'], pct)}): each interval excludes the other's value (n={perf['n']}, "
                              f"{perf['n_pos']} positive)")
    return alerts, notes


def monitor_result(ref: dict[str, Any], rows: Sequence[Row], *, alpha: float = ALPHA,
                   mode: str = "auto") -> dict[str, Any]:
    """All windows (``all`` first, then each month or batch when there are several)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r}; allowed: 0 < alpha < 1 (e.g. 0.01)")
    mode = resolve_mode(rows, mode)
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(window_of(r, mode), []).append(r)
    windows = [assess_window(ref, "all", rows, alpha)]
    if len(groups) > 1:
        windows += [assess_window(ref, name, groups[name], alpha) for name in sorted(groups)]
    alerts = [a for w in windows for a in w["alerts"]]
    return {"format": MONITOR_FORMAT, "window_mode": mode, "alpha": alpha, "psi_alert": PSI_ALERT,
            "rules": list(RULES),
            "windows": windows, "alerts": alerts, "notes": [n for w in windows for n in w["notes"]],
            "status": "alert" if alerts else "ok"}
