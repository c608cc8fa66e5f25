"""Figures of the monitoring page. Drawing only: every number comes from monitor.json.

Same conventions as the validation report's figures (:mod:`fibrosis.report.plots`):
``matplotlib.figure.Figure`` without pyplot state, Okabe-Ito colours.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fibrosis.evaluate.reference import FrozenThreshold
from fibrosis.monitor.compute import Window
from fibrosis.monitor.stattests import CategoricalTest, RateTest
from fibrosis.report.plots import BLUE, GREY, OP_COLOURS, ORANGE, VERMILLION, figure, styled

@styled
def probability_figure(windows: Sequence[Window], threshold: FrozenThreshold) -> Figure | None:
    """Calibrated probabilities of the reference and of each window, overlaid (share per bin)."""
    hists = [(w.name, c.histogram) for w in windows for c in w.checks
             if c.check == "calibrated probability" and c.histogram is not None]
    if not hists:
        return None
    fig = figure(9.0, 3.6)
    ax = fig.add_subplot()
    edges = np.asarray(hists[0][1].edges)
    ref = np.asarray(hists[0][1].reference, float)
    ax.stairs(ref / max(1.0, ref.sum()), edges, fill=True, color=GREY, alpha=0.35,
              label=f"reference (n={int(ref.sum())})")
    for (name, h), colour in zip(hists, (BLUE, *OP_COLOURS[1:], ORANGE, VERMILLION)):
        counts = np.asarray(h.batch, float)
        ax.stairs(counts / max(1.0, counts.sum()), edges, color=colour, lw=1.8,
                  label=f"{name} (n={int(counts.sum())})")
    ax.axvline(threshold.value, color=VERMILLION, ls=":", lw=1.5,
               label=f"frozen {threshold.name} threshold {threshold.value:.3g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("calibrated probability")
    ax.set_ylabel("share of images")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="upper center", fontsize=8)
    ax.set_title("Output: probability distribution against the reference")
    return fig


@styled
def category_figure(window: Window) -> Figure | None:
    """Reference vs batch share of each category, one panel per metadata field with >1 value."""
    cats = [(c, c.result) for c in window.checks
            if isinstance(c.result, CategoricalTest) and len(set(c.result.reference) | set(c.result.batch)) > 1]
    if not cats:
        return None
    cols = min(3, len(cats))
    rows = int(np.ceil(len(cats) / cols))
    fig = figure(3.2 * cols, 2.4 * rows + 0.4)
    for k, (c, t) in enumerate(cats):
        ax = fig.add_subplot(rows, cols, k + 1)
        names = sorted(set(t.reference) | set(t.batch), key=lambda v: -t.reference.get(v, 0))[:8]
        y = np.arange(len(names))
        ref = np.array([t.reference.get(v, 0) for v in names], float) / max(1, t.n_reference)
        new = np.array([t.batch.get(v, 0) for v in names], float) / max(1, t.n_batch)
        ax.barh(y - 0.2, ref, 0.4, color=GREY, label=f"reference (n={t.n_reference})")
        ax.barh(y + 0.2, new, 0.4, color=VERMILLION if c.alert else BLUE, label=f"batch (n={t.n_batch})")
        ax.set_yticks(y, [v[:18] for v in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"{c.check}{'  ALERT' if c.alert else ''}", fontsize=9.5,
                     color=VERMILLION if c.alert else "black")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Input: category mix, window {window.name} (share of images)", fontsize=10)
    return fig


def _series(ax: Any, names: list[str], values: list[Any], cis: list[Any], ref: float | None,
            ref_ci: Any, ylabel: str) -> None:
    x = np.arange(len(names))
    for i, (v, ci) in enumerate(zip(values, cis)):
        if v is None:
            continue
        err = [[v - ci[0]], [ci[1] - v]] if ci else None
        ax.errorbar(i, v, yerr=err, fmt="o", color=BLUE, capsize=3, ms=6)
    if ref is not None:
        ax.axhline(ref, color=GREY, ls="--", lw=1.2, label=f"validation {ref:.3f}")
        if ref_ci:
            ax.axhspan(ref_ci[0], ref_ci[1], color=GREY, alpha=0.15, lw=0, label="validation CI")
        ax.legend(fontsize=7.5, loc="best")
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, lw=0.5)


@styled
def over_time_figure(windows: Sequence[Window]) -> Figure:
    """Positive rate (and AUC where labels arrived) per window, with intervals, against validation."""
    series = [w for w in windows if w.name != "all"] or list(windows)
    names = [w.name[-28:] for w in series]
    labelled = [w for w in series if w.performance and "auc" in w.performance.metrics]
    fig = figure(9.0, 3.4)
    ax = fig.add_subplot(1, 2 if labelled else 1, 1)
    rates = [next((c.result for c in w.checks if c.check.startswith("positive rate")
                   and isinstance(c.result, RateTest)), None) for w in series]
    ref = next((r.reference for r in rates if r), None)
    _series(ax, names, [r.batch.value if r else None for r in rates],
            [r.batch.ci if r else None for r in rates], ref.value if ref else None,
            ref.ci if ref else None, "positive rate at the frozen threshold")
    ax.set_title("Output: positive rate per window")
    if labelled:
        ax2 = fig.add_subplot(1, 2, 2)
        aucs = [w.performance.metrics.get("auc") if w.performance else None for w in series]
        first = next(a for a in aucs if a)
        _series(ax2, names, [a.value if a else None for a in aucs], [a.ci if a else None for a in aucs],
                first.reference, first.reference_ci, "AUC (DeLong CI)")
        ax2.set_title("Performance: AUC per window")
    return fig
