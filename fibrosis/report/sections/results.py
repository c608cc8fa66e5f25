"""Sections "Results on the reported split" (discrimination) and "Calibration"."""
from __future__ import annotations

from fibrosis.report.format import estimate, num, pct, span
from fibrosis.report.sections.context import Block, Context, fitted_where


def discrimination_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    disc = m.discrimination
    boot = disc.bootstrap
    how = (f"percentile bootstrap, {boot.n_used} resamples of {boot.n_patients} patients" if boot.ci
           else f"bootstrap not reported: {boot.error or 'not computed'}")
    return [
        {"type": "table", "caption": f"AUC on the {m.split} split", "header": ["measure", "value", ctx.ci, "method"],
         "rows": [["AUC", num(disc.auc, "auc"), span(disc.delong.ci, "auc"), "DeLong"],
                  ["AUC", num(disc.auc, "auc"), span(boot.ci, "auc"), how],
                  ["average precision", num(disc.pr.average_precision, "ap"), "not computed",
                   f"no-skill level = prevalence {pct(disc.pr.prevalence)}"]]},
        {"type": "figure", "key": "roc", "half": True,
         "caption": f"ROC curve with the patient-clustered bootstrap {ctx.ci[:-3]} band; dots: the frozen "
                    "operating points on this split (points that coincide share one dot)."},
        {"type": "figure", "key": "pr", "half": True,
         "caption": "Precision-recall curve (precision at this split's prevalence)."},
    ]


def calibration_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    c = m.calibration
    cal = c.calibrator
    rows = []
    for label, b in (("before", c.before), (f"after ({c.method})", c.after)):
        cs = b.intercept_slope
        rows.append([label, num(b.reliability.ece, "ece"), num(b.brier, "brier"),
                     estimate(cs.slope, cs.slope_ci, "slope"), estimate(cs.intercept, cs.intercept_ci, "intercept")])
    params = ", ".join(f"{k} = {num(v, 'param')}" for k, v in cal["params"].items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool))
    return [
        {"type": "p", "text": f"Post-hoc {c.method} calibration{(' (' + params + ')') if params else ''}: "
                              f"{fitted_where(m)}. ECE binning: {c.before.reliability.binning}. Ideal "
                              "calibration: ECE 0, slope 1, intercept 0. Calibration holds at the prevalence of the "
                              "data it was fitted on; it must be re-checked at another site or prevalence."},
        {"type": "table", "caption": f"Calibration on the {m.split} split",
         "header": ["", "ECE", "Brier", f"slope ({ctx.ci})", f"intercept ({ctx.ci})"], "rows": rows},
        {"type": "figure", "key": "reliability", "caption": "Reliability diagrams before and after calibration; "
                                                            "bars: number of images per bin (log scale)."},
        {"type": "figure", "key": "histogram", "caption": "Predicted probability per true class; dotted lines: "
                                                          "the frozen thresholds."},
    ]
