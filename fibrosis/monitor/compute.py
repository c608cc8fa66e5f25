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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fibrosis.evaluate.reference import Reference
from fibrosis.monitor.drift import Check, input_checks, output_checks, status_kind
from fibrosis.monitor.load import ScoredImage
from fibrosis.monitor.performance import Performance, performance

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


def window_of(row: ScoredImage, mode: str) -> str:
    """Study month (``YYYY-MM``) or scoring batch of one row."""
    month = str(row.cells.get("study_month") or "")
    if mode == "month":
        return month or "no date"
    return row.batch or "batch"


def resolve_mode(rows: Sequence[ScoredImage], mode: str) -> str:
    """``auto``: by month when most scored images carry a StudyDate/AcquisitionDate, else by batch."""
    if mode not in WINDOW_MODES:
        raise ValueError(f"window mode {mode!r}; allowed: {list(WINDOW_MODES)}")
    if mode != "auto":
        return mode
    dated = sum(bool(r.cells.get("study_month")) for r in rows)
    return "month" if rows and dated >= 0.5 * len(rows) else "batch"


def _fmt_ci(ci: Any, pct: bool = False) -> str:
    if not ci:
        return "n/a"
    return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%" if pct else f"{ci[0]:.3f}-{ci[1]:.3f}"


def _fmt(v: Any, pct: bool = False) -> str:
    return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")


@dataclass(frozen=True, slots=True)
class Window:
    """The checks, performance, alerts and notes of one window (all rows, a month or a batch)."""
    name: str
    n: int
    n_ok: int
    n_labelled: int
    flags: list[str]  # why the window is small; [] when it is not
    checks: list[Check]
    performance: Performance | None  # None: no labelled row
    alerts: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def small(self) -> bool:
        return bool(self.flags)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "n_ok": self.n_ok, "n_labelled": self.n_labelled,
                "small": self.small, "flags": list(self.flags), "checks": [c.to_json() for c in self.checks],
                "performance": self.performance.to_json() if self.performance else None,
                "alerts": list(self.alerts), "notes": list(self.notes)}


@dataclass(frozen=True, slots=True)
class MonitorContext:
    """What was monitored against what: the run's part of monitor.json."""
    created: str
    version: str
    checkpoint: str
    model_id: str
    reference_path: str
    reference: Reference  # monitor.json repeats what the page shows of it
    scores: list[str]
    labels: str | None
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "version": self.version,
                "model": {"checkpoint": self.checkpoint, "model_id": self.model_id},
                "reference": {"path": self.reference_path, "split": self.reference.split, "n": self.reference.n,
                              "created": self.reference.created, "threshold": self.reference.threshold.to_json(),
                              "performance": self.reference.performance.to_json(),
                              "minimums": self.reference.minimums.to_json()}, "scores": list(self.scores),
                "labels": self.labels, "warnings": list(self.warnings)}


@dataclass(frozen=True, slots=True)
class MonitorResult:
    """What monitor.json holds: the windows and, once `fibrosis monitor` adds it, the context."""
    window_mode: str
    alpha: float
    windows: list[Window]
    context: MonitorContext | None = None  # set by fibrosis.monitor.run

    @property
    def alerts(self) -> list[str]:
        return [a for w in self.windows for a in w.alerts]

    @property
    def notes(self) -> list[str]:
        return [n for w in self.windows for n in w.notes]

    def to_json(self) -> dict[str, Any]:
        return {"format": MONITOR_FORMAT, "window_mode": self.window_mode, "alpha": self.alpha,
                "psi_alert": PSI_ALERT, "rules": list(RULES),
                "windows": [w.to_json() for w in self.windows], "alerts": self.alerts, "notes": self.notes,
                "status": "alert" if self.alerts else "ok", **(self.context.to_json() if self.context else {})}


def decide(checks: list[Check], small: bool, alpha: float) -> list[Check]:
    """The checks of one window with ``alert`` (and the corrected threshold) decided."""
    tested = [c for c in checks if c.result.p is not None]
    cut = alpha / max(1, len(tested))
    out = []
    for c in checks:
        p, psi = c.result.p, c.result.psi
        big_enough = psi is None or psi >= PSI_ALERT
        out.append(dataclasses.replace(c, alpha_corrected=cut,
                                       alert=bool(not small and p is not None and p < cut and big_enough)))
    return out


def assess_window(ref: Reference, name: str, rows: Sequence[ScoredImage], alpha: float) -> Window:
    mins = ref.minimums
    n_ok = sum(status_kind(r) == "ok" for r in rows)
    small = n_ok < mins.min_n
    checks = decide(input_checks(ref, rows) + output_checks(ref, rows), small, alpha)
    labelled = [r for r in rows if status_kind(r) == "ok" and r.label is not None]
    perf = None
    if labelled:
        perf = performance(ref.performance, [r.label for r in labelled],
                           [float(r.cells["logit_uncalibrated"]) for r in labelled],
                           [float(r.cells["probability_calibrated"]) for r in labelled],
                           [int(r.cells["decision_fibrosis"]) for r in labelled], mins.min_n, mins.min_positives)
    window = Window(name, len(rows), n_ok, len(labelled), [f"n={n_ok} scored ok < {mins.min_n}"] if small else [],
                    checks, perf)
    alerts, notes = window_alerts(window)
    return dataclasses.replace(window, alerts=alerts, notes=notes)


def window_alerts(w: Window) -> tuple[list[str], list[str]]:
    """One line per alert (the cause, the numbers, the test and both sample sizes) and notes."""
    alerts, notes = [], []
    where = f"[{w.name}]"
    for c in w.checks:
        if c.alert:
            r = c.result
            alerts.append(f"{where} {c.family} shift: {c.check}: {c.summary} ({r.test}, "
                          f"p={r.p:.2g} < {c.alpha_corrected:.2g}; n={r.n_batch} vs reference "
                          f"{r.n_reference})")
    if w.small:
        notes.append(f"{where} small batch ({'; '.join(w.flags)}): shown, not tested for alerts")
    perf = w.performance
    if perf is not None and perf.small:
        notes.append(f"{where} performance on {perf.n} labelled images ({'; '.join(perf.flags)}): "
                     "shown, not flagged")
    elif perf is not None:
        level = f"{100 * perf.level:.4g}% CI"
        for key, m in perf.metrics.items():
            if m.changed:
                pct = key in ("sensitivity", "specificity")
                alerts.append(f"{where} performance: {METRIC_NAMES[key]} {_fmt(m.value, pct)} ({level} "
                              f"{_fmt_ci(m.ci, pct)}, {m.method}) vs validation {_fmt(m.reference, pct)}: "
                              f"({_fmt_ci(m.reference_ci, pct)}): each interval excludes the other's value (n={perf.n}, "
                              f"{perf.n_pos} positive)")
    return alerts, notes


def monitor_result(ref: Reference, rows: Sequence[ScoredImage], *, alpha: float = ALPHA,
                   mode: str = "auto") -> MonitorResult:
    """All windows (``all`` first, then each month or batch when there are several)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r}; allowed: 0 < alpha < 1 (e.g. 0.01)")
    mode = resolve_mode(rows, mode)
    groups: dict[str, list[ScoredImage]] = {}
    for r in rows:
        groups.setdefault(window_of(r, mode), []).append(r)
    windows = [assess_window(ref, "all", rows, alpha)]
    if len(groups) > 1:
        windows += [assess_window(ref, name, groups[name], alpha) for name in sorted(groups)]
    return MonitorResult(mode, alpha, windows)
