"""Title block and section "Summary": what was measured, on what, with which result."""
from __future__ import annotations

import datetime as dt

from fibrosis.evaluate.result import EvaluationResult
from fibrosis.report.format import num, pct, pct_span, span
from fibrosis.report.sections.context import Block, Context, fitted_where, prevalence_text

NOT_PRETRAINED = ("WARNING: the backbone of this model is NOT ImageNet-pretrained (random initialisation). "
                  "These results do not show what transfer learning achieves and must not be used "
                  "to judge the method or the model.")
TITLE = "Pulmonary fibrosis classifier: validation report"


def title_blocks(ctx: Context) -> list[Block]:
    m = ctx.m
    d = m.data
    blocks: list[Block] = [] if m.pretrained else [{"type": "banner", "text": NOT_PRETRAINED}]
    return blocks + [
        {"type": "h1", "text": TITLE},
        {"type": "kv", "items": [
            ("Run", m.run_name or "not recorded"), ("Report date", dt.date.today().isoformat()),
            ("Evaluated", m.created), ("Data source", d.provenance.source if d.provenance else "not recorded"),
            ("Reported split", f"{m.split}: {d.n} images of {d.n_patients} patients, {d.n_pos} with "
                               f"fibrosis (prevalence {pct(d.prevalence)})")]},
    ]


def headline(m: EvaluationResult, ci: str) -> str:
    d, disc = m.data, m.discrimination
    where = "all images of the evaluated cache" if m.split == "all" else f"the {m.split} split"
    how = (f"With the calibration and thresholds frozen from training, on {where}" if m.frozen
           else f"On the held-out {m.split} split")
    boot = disc.bootstrap
    text = (f"{how} ({prevalence_text(d.n, d.n_pos, d.prevalence)}; {d.n_patients} patients), "
            f"the model's AUC was {num(disc.auc, 'auc')} ({ci} {span(disc.delong.ci, 'auc')} by DeLong; "
            f"{span(boot.ci, 'auc')} by patient-clustered bootstrap).")
    op = next((o for o in m.operating_points if o.name == "youden"), None)
    if op and op.sensitivity.value is not None and op.specificity.value is not None:
        cm = op.confusion
        text += (f" At the Youden threshold ({op.threshold:.3f} on the calibrated probability; "
                 f"{fitted_where(m)}), it flagged {cm.tp} of {cm.tp + cm.fn} fibrosis images "
                 f"(sensitivity {pct(op.sensitivity.value)}, {ci} {pct_span(op.sensitivity.ci)}) "
                 f"and cleared {cm.tn} of {cm.tn + cm.fp} others (specificity "
                 f"{pct(op.specificity.value)}, {ci} {pct_span(op.specificity.ci)}).")
        dep = op.deployment
        if dep and dep.ppv is not None:
            text += (f" Where fibrosis is {pct(dep.prevalence)} of the imaged population, a positive "
                     f"flag would be correct {pct(dep.ppv)} of the time (PPV) and a negative one "
                     f"{pct(dep.npv, 2)} (NPV).")
    return text


def _standard(m: EvaluationResult) -> str:
    stated = m.evaluate_config.get("reference_standard")
    return f"as stated: {stated}" if stated else ("who labelled and how is not stated; set "
                                                  "evaluate.reference_standard")


def summary(ctx: Context) -> list[Block]:
    m = ctx.m
    blocks: list[Block] = [
        {"type": "p", "style": "summary", "text": headline(m, ctx.ci)},
        {"type": "p", "style": "note", "text": "Research software, not a medical device. The reference standard "
                                              f"is the label column of the data ({_standard(m)}). Read "
                                              f"the intended use and limitations ({ctx.ref('limitations')}) before "
                                              "drawing any conclusion."},
    ]
    cal = m.calibration.after.intercept_slope
    blocks.append({"type": "kv", "items": [
        ("AUC", f"{num(m.auc, 'auc')} ({ctx.ci} {span(m.discrimination.delong.ci, 'auc')}, DeLong)"),
        ("Calibration slope", f"{num(cal.slope, 'slope')} ({ctx.ci} {span(cal.slope_ci, 'slope')}; ideal 1)"),
        ("Calibration intercept", f"{num(cal.intercept, 'intercept')} ({ctx.ci} "
                                  f"{span(cal.intercept_ci, 'intercept')}; ideal 0)"),
        ("Where thresholds were chosen", fitted_where(m))]})
    if m.warnings:
        blocks += [{"type": "h3", "text": "Read with care"}, {"type": "list", "items": m.warnings}]
    return blocks
