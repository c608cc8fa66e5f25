"""Section "Operating points and decision curve": the frozen thresholds on the reported split, and
the net benefit of acting on the flag against treating everyone or no one."""
from __future__ import annotations

from fibrosis.evaluate.decision import DecisionCurve, NetBenefit
from fibrosis.report.format import num, pct, proportion, threshold_digits
from fibrosis.report.sections.context import Block, Context, fitted_where


def op_label(name: str) -> str:
    """'youden' -> 'Youden', 'sensitivity_0.90' -> 'sensitivity ≥ 0.90'."""
    if name.startswith("sensitivity_"):
        return f"sensitivity \u2265 {name.split('_', 1)[1]}"
    return name.replace("_", " ").capitalize()


def operating_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    rows = []
    digits = threshold_digits([o.threshold for o in m.operating_points])
    dep_prev = m.deployment_prevalence
    for o in m.operating_points:
        cm = o.confusion
        row = [op_label(o.name), f"{o.threshold:.{digits}f}",
               f"{pct(o.chosen_on.sensitivity)} / {pct(o.chosen_on.specificity)}",
               f"{cm.tp} / {cm.fp} / {cm.tn} / {cm.fn}", proportion(o.sensitivity),
               proportion(o.specificity), proportion(o.ppv), proportion(o.npv)]
        if dep_prev is not None:
            dep = o.deployment
            row.append(f"{pct(dep.ppv if dep else None)} / {pct(dep.npv if dep else None, 2)}")
        rows.append(row)
    fit = "out of fold" if ctx.out_of_fold else f"on {m.fit_split}"
    header = ["operating point", "threshold", f"sens / spec {fit}", "TP / FP / TN / FN", "sensitivity",
              "specificity", f"PPV at {pct(m.data.prevalence)}", f"NPV at {pct(m.data.prevalence)}"]
    if dep_prev is not None:
        header.append(f"PPV / NPV at {pct(dep_prev)}")
    note = (f"Thresholds are on the calibrated probability, {fitted_where(m)}. Intervals: Wilson {ctx.ci}. "
            f"PPV and NPV depend on prevalence: the {m.split} prevalence is {pct(m.data.prevalence)}.")
    if dep_prev is not None:
        note += (f" The last column re-computes them by Bayes' rule at the deployment prevalence "
                 f"{pct(dep_prev)} (interval from the sensitivity/specificity bounds in metrics.json).")
    else:
        note += " No deployment prevalence was given (evaluate.deployment_prevalence)."
    blocks: list[Block] = [{"type": "p", "text": note},
                           {"type": "table", "caption": f"Operating points on the {m.split} split", "header": header,
                            "rows": rows}]
    return blocks + decision_blocks(ctx)


def _useful(dc: DecisionCurve, curve: NetBenefit) -> str:
    """Threshold probabilities where the model beats both treat-all and treat-none, as ranges."""
    pts = dc.thresholds
    better = [m > max(a, 0.0) for m, a in zip(curve.model, curve.treat_all)]
    runs: list[str] = []
    i = 0
    while i < len(pts):
        if not better[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(pts) and better[j + 1]:
            j += 1
        runs.append(pct(pts[i], 0) if i == j else f"{pct(pts[i], 0)} to {pct(pts[j], 0)}")
        i = j + 1
    return f"at pt {', '.join(runs)}" if runs else "at no threshold in this range"


def decision_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    dc = m.decision_curve
    head: Block = {"type": "h3", "text": "Decision curve"}
    if not dc:
        return [head, {"type": "p", "style": "warn", "text": "Decision curve: not computed for this evaluation "
                                                            "(metrics.json schema 1); re-run `fibrosis evaluate`."}]
    lo, hi = pct(dc.thresholds[0], 0), pct(dc.thresholds[-1], 0)
    text = (f"Net benefit of flagging the images whose calibrated probability is at or above a threshold "
            f"probability pt, over pt from {lo} to {hi}, against flagging every image (treat all) and none "
            "(treat none, net benefit 0). A threshold probability states how many false alarms one true case is "
            "worth: at pt = 10% a reader accepts 9 false flags per fibrosis case found. Net benefit = "
            "sensitivity \u00d7 \u03c0 \u2212 (1 \u2212 specificity) \u00d7 (1 \u2212 \u03c0) \u00d7 pt / (1 \u2212 pt), "
            f"in true positives per image. At the evaluated prevalence (\u03c0 = {pct(dc.evaluated.prevalence)}) "
            f"the model beats both {_useful(dc, dc.evaluated)}.")
    dep = dc.deployment
    if dep:
        text += (f" At the deployment prevalence (\u03c0 = {pct(dep.prevalence)}) the same sensitivity and "
                 f"specificity are weighted by that prevalence: the model beats both {_useful(dc, dep)}. The "
                 "probabilities were calibrated at the prevalence of the fitting data, so there the flag at a given "
                 "pt corresponds to a lower risk than pt; re-calibrate on local data before choosing a threshold.")
    rows = []
    for i, pt in enumerate(dc.thresholds):
        if round(100 * pt) in (1, 5, 10, 15, 20, 30, 50):
            row = [pct(pt, 0), num(dc.evaluated.model[i], "net_benefit"), num(dc.evaluated.treat_all[i], "net_benefit")]
            if dep:
                row += [num(dep.model[i], "net_benefit"), num(dep.treat_all[i], "net_benefit")]
            rows.append(row)
    header = ["threshold probability", f"model at {pct(dc.evaluated.prevalence)}",
              f"treat all at {pct(dc.evaluated.prevalence)}"]
    if dep:
        header += [f"model at {pct(dep.prevalence)}", f"treat all at {pct(dep.prevalence)}"]
    return [head, {"type": "p", "text": text},
            {"type": "figure", "key": "decision", "caption": "Decision curve: net benefit per image of the model, "
                                                             "treat all and treat none, by threshold probability."},
            {"type": "table", "caption": "Net benefit at selected threshold probabilities (treat none: 0)",
             "header": header, "rows": rows}]
