"""Figures of the validation report. Drawing only: every number comes from fibrosis.evaluate.metrics.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so they
render headless and thread-safe; colours are Okabe-Ito (colour-blind safe).
"""
from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

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
    return "n/a" if v is None else f"{100 * v:.1f}%"


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
def roc_figure(disc: dict[str, Any], operating_points: Sequence[dict[str, Any]] = ()) -> Figure:
    """ROC curve, 95% bootstrap band (patient-clustered), AUC with both CIs, operating points."""
    fig = figure(5.2, 5.0)
    ax = fig.add_subplot()
    band, boot, delong = disc["bootstrap"]["band"], disc["bootstrap"], disc["delong"]
    level = int(round(100 * boot["level"]))
    if band:
        ax.fill_between(band["fpr"], band["tpr_lower"], band["tpr_upper"], color=BLUE, alpha=0.18, lw=0,
                        label=f"{level}% band (bootstrap, {boot['n_patients']} patients)")
    ax.plot(disc["roc"]["fpr"], disc["roc"]["tpr"], color=BLUE, lw=2, drawstyle="default",
            label=f"ROC  AUC {disc['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="chance")
    for op, colour in zip(operating_points, OP_COLOURS):
        se, sp = op["sensitivity"]["value"], op["specificity"]["value"]
        if se is None or sp is None:
            continue
        ax.plot(1 - sp, se, "o", ms=7, mfc=colour, mec="black", mew=0.6,
                label=f"{op['name'].replace('_', ' ')} (test): sens {_pct(se)}, spec {_pct(sp)}")
    ci_d = delong.get("ci")
    text = f"AUC {disc['auc']:.3f}\n{level}% CI DeLong " + (f"{ci_d[0]:.3f}-{ci_d[1]:.3f}" if ci_d else "n/a")
    text += f"\n{level}% CI bootstrap " + (f"{boot['ci'][0]:.3f}-{boot['ci'][1]:.3f}" if boot["ci"] else "n/a")
    ax.text(0.98, 0.04, text, ha="right", va="bottom", transform=ax.transAxes, fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": GREY, "alpha": 0.9})
    _unit_axes(ax, "1 - specificity (false-positive rate)", "sensitivity (true-positive rate)")
    ax.set_title(f"ROC curve (n={delong['n_pos'] + delong['n_neg']}, {delong['n_pos']} positive)")
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
def pr_figure(pr: dict[str, Any]) -> Figure:
    fig = figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.step(pr["recall"], pr["precision"], where="post", color=BLUE, lw=2,
            label=f"average precision {pr['average_precision']:.3f}")
    ax.axhline(pr["prevalence"], ls="--", color=GREY, lw=1,
               label=f"no-skill = prevalence {_pct(pr['prevalence'])}")
    _unit_axes(ax, "recall (sensitivity)", "precision (PPV at this set's prevalence)")
    ax.set_title(f"Precision-recall (n={pr['n']}, {pr['n_pos']} positive)")
    ax.legend(loc="upper right")
    return fig


def _reliability_panel(ax: Any, axh: Any, block: dict[str, Any], title: str, colour: str) -> None:
    rel = block["reliability"]
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    mp = [b["mean_predicted"] for b in rel["bins"]]
    ob = [b["observed"] for b in rel["bins"]]
    err = np.clip(np.array([[b["observed"] - b["observed_ci"][0], b["observed_ci"][1] - b["observed"]]
                            for b in rel["bins"]]).T, 0.0, None)
    ax.errorbar(mp, ob, yerr=err, fmt="o-", color=colour, ms=5, lw=1.5, capsize=2,
                label=f"observed (Wilson {100 * rel.get('level', 0.95):g}% CI)")
    cs = block["intercept_slope"]
    slope = "n/a" if cs.get("slope") is None else f"{cs['slope']:.2f}"
    icpt = "n/a" if cs.get("intercept") is None else f"{cs['intercept']:.2f}"
    ax.text(0.03, 0.97, f"ECE {rel['ece']:.3f}\nBrier {block['brier']:.3f}\nslope {slope}\n"
            f"intercept {icpt}", ha="left", va="top", transform=ax.transAxes, fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": GREY, "alpha": 0.9})
    _unit_axes(ax, "", "observed frequency of fibrosis")
    ax.set_aspect("auto")
    ax.set_title(title)
    ax.legend(loc="lower right")
    centres = [(b["lower"] + b["upper"]) / 2 for b in rel["bins"]]
    widths = [b["upper"] - b["lower"] for b in rel["bins"]]
    axh.bar(centres, [b["count"] for b in rel["bins"]], width=widths, color=colour, alpha=0.6,
            edgecolor="white")
    axh.set_xlim(-0.01, 1.01)
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("cases")
    axh.set_yscale("log")


@styled
def reliability_figure(before: dict[str, Any], after: dict[str, Any], method: str) -> Figure:
    """Reliability diagrams before and after calibration, with per-bin case counts below."""
    fig = figure(9.0, 5.4)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1))
    for col, (block, title, colour) in enumerate(
            ((before, "before calibration (sigmoid of the logit)", ORANGE),
             (after, f"after {method} calibration", BLUE))):
        ax = fig.add_subplot(grid[0, col])
        axh = fig.add_subplot(grid[1, col], sharex=ax)
        _reliability_panel(ax, axh, block, title, colour)
    fig.suptitle(f"Reliability ({before['reliability']['binning'].split(';')[0]})")
    return fig


@styled
def histogram_figure(before: dict[str, Any], after: dict[str, Any],
                     operating_points: Sequence[dict[str, Any]] = ()) -> Figure:
    """Per-class distribution of the predicted probability (share of each class per bin)."""
    fig = figure(9.0, 3.6)
    for k, (hist, title) in enumerate(((before, "uncalibrated probability"),
                                       (after, "calibrated probability (used by the thresholds)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        edges = np.asarray(hist["edges"])
        for counts, colour, name in ((hist["negatives"], BLUE, "no fibrosis"),
                                     (hist["positives"], ORANGE, "fibrosis")):
            counts = np.asarray(counts, float)
            share = counts / max(1.0, counts.sum())
            ax.stairs(share, edges, fill=True, alpha=0.45, color=colour,
                      label=f"{name} (n={int(counts.sum())})")
            ax.stairs(share, edges, color=colour, lw=1.2)
        if k == 1:
            for op, colour in zip(operating_points, OP_COLOURS):
                ax.axvline(op["threshold"], color=colour, ls=":", lw=1.5,
                           label=f"{op['name'].replace('_', ' ')} = {op['threshold']:.4g}")
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
