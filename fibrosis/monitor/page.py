"""The monitoring page: monitor.json as report blocks, rendered by the report's own renderer."""
from __future__ import annotations

from typing import Any

from fibrosis.monitor import figures as F
from fibrosis.monitor.compute import METRIC_NAMES, RULES, MonitorResult, Window
from fibrosis.report.plots import png_bytes
from fibrosis.report.render import Block, render_html


def _p(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2g}"


def _ci(ci: Any, pct: bool) -> str:
    if not ci:
        return "n/a"
    return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%" if pct else f"{ci[0]:.3f}-{ci[1]:.3f}"


def _v(v: Any, pct: bool) -> str:
    return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")


def _checks_table(w: Window) -> Block:
    rows = [[c.family, c.check, c.result.test, c.result.n_batch, c.result.n_reference,
             "n/a" if c.result.statistic is None else f"{c.result.statistic:.3g}", _p(c.result.p),
             "" if c.result.psi is None else f"{c.result.psi:.2f}", "ALERT" if c.alert else "", c.summary]
            for c in w.checks]
    return {"type": "table", "caption": f"Shift tests, window {w.name} (corrected threshold "
                                        f"p < {w.checks[0].alpha_corrected:.2g})" if w.checks else "",
            "header": ["family", "check", "test", "n batch", "n reference", "statistic", "p", "PSI", "", "what"],
            "rows": rows}


def _performance_table(w: Window) -> Block:
    perf = w.performance
    assert perf is not None  # only labelled windows get the table
    level = f"{100 * perf.level:.4g}% CI"
    rows = []
    for key, m in perf.metrics.items():
        pct = key in ("sensitivity", "specificity")
        rows.append([METRIC_NAMES[key], _v(m.value, pct), _ci(m.ci, pct), _v(m.reference, pct),
                     _ci(m.reference_ci, pct), m.method,
                     "" if perf.small or not m.excludes_reference else
                     "ALERT: each interval excludes the other's value" if m.changed else
                     "new interval excludes the validated value"])
    return {"type": "table", "caption": f"Performance, window {w.name}: {perf.n} labelled images, "
                                        f"{perf.n_pos} positive" + (f" — small: {'; '.join(perf.flags)}"
                                                                    if perf.small else ""),
            "header": ["metric", "now", level, "validation", f"validation {level}", "method", "flag"], "rows": rows}


def build_blocks(result: MonitorResult) -> list[Block]:
    """Blocks for :func:`fibrosis.report.render.render_html`; figures that were not drawn are skipped there."""
    run = result.context
    assert run is not None  # the page shows a monitored run
    ref = run.reference
    thr, mins = ref.threshold, ref.minimums
    n_alerts = len(result.alerts)
    blocks: list[Block] = [
        {"type": "h1", "text": f"Monitoring: model {run.model_id} against its validation"},
        {"type": "p", "style": "warn" if n_alerts else "summary",
         "text": (f"{n_alerts} alert(s): the validation report may no longer describe what the model meets."
                  if n_alerts else "No alert: the scored images, the model's outputs and (where labelled) its "
                                   "performance are consistent with the validation.")
         + f" Reference: the {ref.split} split of the evaluation ({ref.n} images, {ref.created})."},
    ]
    if result.alerts:
        blocks += [{"type": "h2", "text": "Alerts"}, {"type": "list", "items": result.alerts}]
    if result.notes or run.warnings:
        blocks += [{"type": "h3", "text": "Notes"}, {"type": "list", "items": run.warnings + result.notes}]
    blocks.append({"type": "kv", "items": [
        ("scores", ", ".join(run.scores)), ("labels", run.labels or "none"),
        ("windows", f"by {result.window_mode}: {', '.join(w.name for w in result.windows)}"),
        ("frozen threshold", f"{thr.name} = {thr.value:.4g}"),
        ("alpha", f"{result.alpha} (Bonferroni within each window)"),
        ("minimums", f"{mins.min_n} images, {mins.min_positives} positives "
                     "and negatives (as the subgroup analysis)"),
        ("rules", " | ".join(RULES))]})
    blocks += [{"type": "h2", "text": "Output and performance over windows"},
               {"type": "figure", "key": "probabilities",
                "caption": "Calibrated probabilities of each window over the reference's (grey)."},
               {"type": "figure", "key": "over_time",
                "caption": "Per window, with intervals (Wilson; DeLong); dashed: the validation value, band: its CI."}]
    for w in result.windows:
        small = f" — small ({'; '.join(w.flags)}), not tested for alerts" if w.small else ""
        blocks += [{"type": "h2", "text": f"Window {w.name}: {w.n} files, {w.n_ok} scored ok{small}"},
                   {"type": "figure", "key": f"categories-{w.name}",
                    "caption": "Category mix: reference (grey) vs this window; red = alert."},
                   _checks_table(w)]
        if w.performance and w.performance.metrics:
            blocks.append(_performance_table(w))
    return blocks


def make_figures(result: MonitorResult) -> dict[str, bytes]:
    assert result.context is not None  # the page shows a monitored run
    figs = {"probabilities": F.probability_figure(result.windows, result.context.reference.threshold),
            "over_time": F.over_time_figure(result.windows)}
    for w in result.windows:
        figs[f"categories-{w.name}"] = F.category_figure(w)
    return {k: png_bytes(f, dpi=110) for k, f in figs.items() if f is not None}


def render_page(result: MonitorResult, *, figures: bool = True) -> str:
    figs = make_figures(result) if figures else {}
    assert result.context is not None  # the page shows a monitored run
    return render_html(build_blocks(result), figs, f"fibrosis monitor — {result.context.model_id}")
