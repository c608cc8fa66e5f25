"""Figures of the validation report. Drawing only: every number comes from fibrosis.evaluate.metrics.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so they
render headless and thread-safe; colours are Okabe-Ito (colour-blind safe).
"""
from __future__ import annotations

import functools
import io
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from fibrosis.evaluate.decision import DecisionCurve
from fibrosis.evaluate.metrics import CalibrationBlock, Discrimination, PrCurve, ScoreHistogram
from fibrosis.evaluate.operating import MeasuredOperatingPoint
from fibrosis.report.format import num, pct, span
from fibrosis.report.sections.data import ParticipantFlow

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

BLUE, ORANGE, VERMILLION, GREEN, GREY, PURPLE = "#0072B2", "#E69F00", "#D55E00", "#009E73", "#7f7f7f", "#CC79A7"
OP_COLOURS = (VERMILLION, GREEN, PURPLE, BLUE)
# Every string a figure draws is plain text (text.parse_math off): matplotlib reads "$...$" as
# mathtext, so a manufacturer, category or arm name holding "$" would be typeset as math or fail
# to parse ("Unknown symbol") and take the whole page down with it.
PLAIN_TEXT: dict[RcKeyType, Any] = {"text.parse_math": False}
_RC: dict[RcKeyType, Any] = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
                              **PLAIN_TEXT}


def styled(func: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the report's font sizes while the figure's artists are created (the monitor's
    page uses it too, so both read alike)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib as mpl

        with mpl.rc_context(_RC):
            return func(*args, **kwargs)

    return wrapper


def figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _pct(v: float | None) -> str:
    return pct(v)


def point_name(name: str) -> str:
    """'sensitivity_0.90' -> 'sens ≥ 0.90', 'youden' -> 'Youden'."""
    return f"sens \u2265 {name.split('_', 1)[1]}" if name.startswith("sensitivity_") else name.capitalize()


def coincident_points(operating_points: Sequence[MeasuredOperatingPoint],
                      ) -> list[tuple[tuple[float, float], list[str], str]]:
    """Operating points as ((1 - specificity, sensitivity), names, colour): points that fall on the
    same spot are one marker named by all of them, so none hides another."""
    spots: dict[tuple[float, float], list[str]] = {}
    colours: dict[tuple[float, float], str] = {}
    for op, colour in zip(operating_points, OP_COLOURS):
        se, sp = op.sensitivity.value, op.specificity.value
        if se is None or sp is None:
            continue
        key = (round(1 - sp, 9), round(se, 9))
        spots.setdefault(key, []).append(point_name(op.name))
        colours.setdefault(key, colour)
    return [(k, names, colours[k]) for k, names in spots.items()]


def png_bytes(fig: Figure, dpi: int = 150) -> bytes:
    """The one way a figure of the report or the monitor becomes an image: every text in it is
    drawn as plain text (:data:`PLAIN_TEXT`), those made already and the tick labels that are
    only made while drawing."""
    import matplotlib as mpl
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    buf = io.BytesIO()
    with mpl.rc_context(PLAIN_TEXT):
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _unit_axes(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, lw=0.5)


@styled
def roc_figure(disc: Discrimination, operating_points: Sequence[MeasuredOperatingPoint] = ()) -> Figure:
    """ROC curve, 95% bootstrap band (patient-clustered), AUC with both CIs, operating points."""
    fig = figure(5.2, 5.0)
    ax = fig.add_subplot()
    boot, delong = disc.bootstrap, disc.delong
    band = boot.band
    level = int(round(100 * boot.level))
    if band:
        ax.fill_between(band.fpr, band.tpr_lower, band.tpr_upper, color=BLUE, alpha=0.18, lw=0,
                        label=f"{level}% band (bootstrap, {boot.n_patients} patients)")
    ax.plot(disc.roc.fpr, disc.roc.tpr, color=BLUE, lw=2, drawstyle="default", label=f"ROC  AUC {disc.auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="chance")
    for (fpr, se), names, colour in coincident_points(operating_points):
        ax.plot(fpr, se, "o", ms=7, mfc=colour, mec="black", mew=0.6,
                label=f"{' = '.join(names)}: sens {_pct(se)}, spec {_pct(1 - fpr)}")
    text = (f"AUC {num(disc.auc, 'auc')}\n{level}% CI DeLong {span(delong.ci, 'auc')}"
            f"\n{level}% CI bootstrap {span(boot.ci, 'auc')}")
    ax.text(0.98, 0.04, text, ha="right", va="bottom", transform=ax.transAxes, fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": GREY, "alpha": 0.9})
    _unit_axes(ax, "1 - specificity (false-positive rate)", "sensitivity (true-positive rate)")
    ax.set_title(f"ROC curve (n={delong.n_pos + delong.n_neg}, {delong.n_pos} positive)")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.22), frameon=True)
    return fig


@styled
def tune_roc_figure(arms: Sequence[dict[str, Any]], chosen: str) -> Figure:
    """Pooled out-of-fold ROC curves of the `fibrosis tune` arms, overlaid; the chosen arm bold."""
    fig = figure(5.6, 5.0)
    ax = fig.add_subplot()
    colours = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, "#56B4E9", "#F0E442", "#000000")
    arms = [a for a in arms if a.get("roc")]  # a failed arm has no curve
    for a, colour in zip(arms, colours * (1 + len(arms) // len(colours))):
        mine = a["name"] == chosen
        ax.plot(a["roc"]["fpr"], a["roc"]["tpr"], color=GREY if a.get("init") == "random" else colour,
                lw=2.6 if mine else 1.2, ls=":" if a.get("init") == "random" else "-",
                label=f"{a['name']}  {a['auc']:.3f}" + ("  (chosen)" if mine else ""))
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=0.8)
    _unit_axes(ax, "1 - specificity (false-positive rate)", "sensitivity (true-positive rate)")
    ax.set_title("Out-of-fold ROC per arm (development patients)")
    ax.legend(loc="lower right", frameon=True, title="arm, OOF AUC")
    return fig


@styled
def pr_figure(pr: PrCurve) -> Figure:
    fig = figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.step(pr.recall, pr.precision, where="post", color=BLUE, lw=2,
            label=f"average precision {pr.average_precision:.3f}")
    ax.axhline(pr.prevalence, ls="--", color=GREY, lw=1, label=f"no-skill = prevalence {_pct(pr.prevalence)}")
    _unit_axes(ax, "recall (sensitivity)", "precision (PPV at this set's prevalence)")
    ax.set_title(f"Precision-recall (n={pr.n}, {pr.n_pos} positive)")
    ax.legend(loc="upper right")
    return fig


def _reliability_panel(ax: Any, axh: Any, block: CalibrationBlock, title: str, colour: str) -> None:
    rel = block.reliability
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    mp = [b.mean_predicted for b in rel.bins]
    ob = [b.observed for b in rel.bins]
    err = np.clip(np.array([[b.observed - b.observed_ci[0], b.observed_ci[1] - b.observed]
                            for b in rel.bins]).T, 0.0, None)
    ax.errorbar(mp, ob, yerr=err, fmt="o-", color=colour, ms=5, lw=1.5, capsize=2,
                label=f"observed (Wilson {100 * rel.level:g}% CI)")
    cs = block.intercept_slope
    slope, icpt = num(cs.slope, "slope"), num(cs.intercept, "intercept")
    _unit_axes(ax, "", "observed frequency of fibrosis")
    ax.set_aspect("auto")
    # the statistics go in the title, not in a box over the axes, where they would hide a bin
    ax.set_title(f"{title}\nECE {num(rel.ece, 'ece')}, Brier {num(block.brier, 'brier')}, "
                 f"slope {slope}, intercept {icpt}", fontsize=10)
    ax.legend(loc="lower right")
    centres = [(b.lower + b.upper) / 2 for b in rel.bins]
    widths = [b.upper - b.lower for b in rel.bins]
    axh.bar(centres, [b.count for b in rel.bins], width=widths, color=colour, alpha=0.6,
            edgecolor="white")
    axh.set_xlim(-0.01, 1.01)
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("cases")
    axh.set_yscale("log")
    # plain numbers: the default log labels are mathtext, which the report draws as plain text
    axh.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axh.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


@styled
def reliability_figure(before: CalibrationBlock, after: CalibrationBlock, method: str) -> Figure:
    """Reliability diagrams before and after calibration, with per-bin case counts below."""
    fig = figure(9.0, 5.4)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1))
    for col, (block, title, colour) in enumerate(
            ((before, "before calibration (sigmoid of the logit)", ORANGE),
             (after, f"after {method} calibration", BLUE))):
        ax = fig.add_subplot(grid[0, col])
        axh = fig.add_subplot(grid[1, col], sharex=ax)
        _reliability_panel(ax, axh, block, title, colour)
    fig.suptitle(f"Reliability ({before.reliability.binning.split(';')[0]})")
    return fig


@styled
def histogram_figure(before: ScoreHistogram, after: ScoreHistogram,
                     operating_points: Sequence[MeasuredOperatingPoint] = ()) -> Figure:
    """Per-class distribution of the predicted probability (share of each class per bin)."""
    fig = figure(9.0, 3.6)
    for k, (hist, title) in enumerate(((before, "uncalibrated probability"),
                                       (after, "calibrated probability (used by the thresholds)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        edges = np.asarray(hist.edges)
        for counts, colour, name in ((hist.negatives, BLUE, "no fibrosis"), (hist.positives, ORANGE, "fibrosis")):
            share = np.asarray(counts, float) / max(1.0, float(sum(counts)))
            ax.stairs(share, edges, fill=True, alpha=0.45, color=colour,
                      label=f"{name} (n={int(sum(counts))})")
            ax.stairs(share, edges, color=colour, lw=1.2)
        if k == 1:
            for op, colour in zip(operating_points, OP_COLOURS):
                ax.axvline(op.threshold, color=colour, ls=":", lw=1.5,
                           label=f"{point_name(op.name)}: {op.threshold:.4g}")
        ax.set_xlim(0, 1)
        ax.set_xlabel(title)
        ax.set_ylabel("share of class")
        ax.grid(alpha=0.3, lw=0.5)
        ax.legend(loc="upper center")
    return fig


@styled
def gradcam_figure(panels: Sequence[dict[str, Any]], threshold: float, per_kind: int) -> Figure:
    """Rows TP / FP / FN, ``per_kind`` columns: radiograph with the Grad-CAM map overlaid."""
    kinds = ("TP", "FP", "FN")
    names = {"TP": "true positive", "FP": "false positive", "FN": "false negative"}
    cols = max(1, per_kind) * 2
    fig = figure(2.0 * cols, 2.35 * len(kinds))
    for r, kind in enumerate(kinds):
        items = [p for p in panels if p["kind"] == kind and not p.get("empty")]
        for c in range(max(1, per_kind)):
            ax_img = fig.add_subplot(len(kinds), cols, r * cols + 2 * c + 1)
            ax_cam = fig.add_subplot(len(kinds), cols, r * cols + 2 * c + 2)
            for ax in (ax_img, ax_cam):
                ax.set_xticks([])
                ax.set_yticks([])
            if c >= len(items):
                ax_img.text(0.5, 0.5, f"no {names[kind]}\nat this threshold" if c == 0 else "",
                            ha="center", va="center", fontsize=9, transform=ax_img.transAxes)
                for ax in (ax_img, ax_cam):
                    ax.axis("off")
                continue
            p = items[c]
            ax_img.imshow(p["image"], cmap="gray", vmin=0, vmax=1)
            ax_cam.imshow(p["image"], cmap="gray", vmin=0, vmax=1)
            # opacity follows the map: weak evidence leaves the radiograph readable
            ax_cam.imshow(p["cam"], cmap="jet", alpha=0.55 * np.clip(p["cam"], 0, 1), vmin=0, vmax=1)
            ax_img.set_title(f"{names[kind]} #{c + 1}", fontsize=9)
            ax_cam.set_title(f"p = {p['prob']:.3f}", fontsize=9)
    fig.suptitle(f"Grad-CAM at the Youden threshold {threshold:.3f} (most confident cases; "
                 "red = evidence for fibrosis)", fontsize=10)
    return fig


def _box(ax: Any, x: float, y: float, w: float, h: float, text: str, *, fc: str = "white", bold: bool = False,
         fontsize: float = 9) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.004,rounding_size=0.01", fc=fc, ec="#555555",
                                lw=1.0))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
            fontweight="bold" if bold else "normal", linespacing=1.3)


def _arrow(ax: Any, x0: float, y0: float, x1: float, y1: float) -> None:
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.0})


@styled
def flow_figure(flow: ParticipantFlow) -> Figure:
    """STARD participant flow: inputs -> excluded at ingest (by reason) -> cache -> splits -> analysed.
    ``flow`` is :func:`fibrosis.report.sections.data.participant_flow`."""

    fig = Figure(figsize=(8.0, 5.0), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    _box(ax, 0.05, 0.86, 0.40, 0.10, f"Inputs read by ingest\nn = {flow.inputs}", bold=True)
    reasons = [textwrap.shorten(r, 52, placeholder="\u2026") for r in flow.reasons] or ["none"]
    h_exc = 0.06 + 0.035 * len(reasons)
    y_exc = min(0.99 - h_exc, 0.80 - h_exc / 2)  # centred on the arrow's way down, below the top edge
    _box(ax, 0.55, y_exc, 0.42, h_exc, f"Excluded at ingest: {flow.excluded}\n" + "\n".join(reasons),
         fc="#f6f6f6", fontsize=8.5)
    _arrow(ax, 0.25, 0.86, 0.25, 0.74)
    _arrow(ax, 0.25, 0.80, 0.55, 0.80)
    _box(ax, 0.05, 0.64, 0.40, 0.10, "In the cache\n" + textwrap.fill(flow.cache, 40), bold=False)
    cols = flow.columns
    width = min(0.30, 0.94 / len(cols) - 0.02)
    gap = (0.96 - width * len(cols)) / (len(cols) + 1)
    for i, c in enumerate(cols):
        x = 0.02 + gap + i * (width + gap)
        _arrow(ax, 0.25, 0.64, x + width / 2, 0.50)
        chars = max(16, int(width * 90))
        text = (f"{textwrap.fill(c.title, chars)}\n{c.n} images, {c.n_pos} with fibrosis\n"
                + textwrap.fill(c.role, chars))
        _box(ax, x, 0.26, width, 0.24, text, fc="#eef5fb" if c.analysed else "white", fontsize=9)
        if c.analysed:
            _arrow(ax, x + width / 2, 0.26, x + width / 2, 0.16)
            _box(ax, max(0.01, x + width / 2 - 0.2), 0.04, 0.40, 0.12,
                 textwrap.fill(flow.analysed, 46), fc="#eef5fb", bold=True, fontsize=9)
    return fig


@styled
def decision_figure(dc: DecisionCurve) -> Figure:
    """Net benefit of the model vs treat all and treat none by threshold probability, at the
    evaluated prevalence and, when set, at the deployment prevalence (dashed)."""
    fig = figure(7.0, 4.2)
    ax = fig.add_subplot()
    pts = 100 * np.asarray(dc.thresholds)
    curves = [(dc.evaluated, "-")] + ([(dc.deployment, "--")] if dc.deployment else [])
    lows = [0.0]
    for curve, ls in curves:
        prev = _pct(curve.prevalence)
        ax.plot(pts, curve.model, color=BLUE, lw=2, ls=ls, label=f"model, prevalence {prev}")
        ax.plot(pts, curve.treat_all, color=ORANGE, lw=1.5, ls=ls, label=f"treat all, prevalence {prev}")
        lows.append(min(curve.model))
    ax.axhline(0.0, color=GREY, lw=1.2, label="treat none")
    top = max(max(c.treat_all[0], max(c.model)) for c, _ in curves)
    # treat-all falls steeply at high thresholds, and below zero no strategy is worth using: the
    # axis keeps a little of the negative range (the table beside gives every value)
    ax.set_ylim(max(min(lows), -0.25 * top) - 0.005, top * 1.1 + 0.005)
    ax.set_xlim(0, pts[-1])
    ax.set_xlabel("threshold probability (%)")
    ax.set_ylabel("net benefit (true positives per image)")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="upper right")
    return fig
