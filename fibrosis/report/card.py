"""The model card section of the validation report (intended use, out of scope, limitations).

The wording is fixed where it states what the software is and is not; the numbers
(prevalence, test size, subgroup flags, pretraining) are filled in from metrics.json
so the limitations a reader sees are the ones of *this* run.
"""
from __future__ import annotations

from fibrosis.report.sections.context import Block, Context, fitted_where

NIH_PREVALENCE = 1686 / 112120  # "Fibrosis" in the whole NIH ChestX-ray14 data set (1.5%)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def model_card(ctx: Context) -> list[Block]:
    m = ctx.m
    d, r = m.data, m.run
    prev = (d.provenance.total.prevalence if d.provenance else None) or d.prevalence
    intended = [
        "Research use: retrospective validation, by a hospital research team, of a transfer-learning classifier "
        "that flags frontal (PA/AP) adult chest radiographs whose report mentions pulmonary fibrosis.",
        f"Output: a calibrated probability and a yes/no flag at a threshold {fitted_where(m)}. Every flag is "
        "meant to be reviewed by a radiologist (second reader / worklist triage in a study setting).",
    ]
    tta = r.tta if r else None
    intended.append(
        f"Test-time augmentation: the score is the mean logit over {len(tta['variants'])} slightly rotated or "
        f"scaled views ({', '.join(v['name'] for v in tta['variants'])}; never mirrored). Grad-CAM maps show "
        "the un-augmented view." if tta else
        "Test-time augmentation: none; the score is one forward pass of the image as given.")
    out_of_scope = [
        "Diagnosing or ruling out interstitial lung disease or idiopathic pulmonary fibrosis in a patient; "
        "any use without review by a radiologist; treatment or staging decisions.",
        "Lateral or decubitus views, children, CT, non-chest images, and images from sites, scanners or "
        "populations not represented in the training data, unless validated there first.",
        "Reading the probability as a patient's risk at another prevalence without re-calibrating on local data.",
    ]
    limits = [
        (f"Reference standard: {m.evaluate_config['reference_standard']}. Whatever its noise (a label taken "
         "from report text includes minor scarring and misses unreported disease), it caps and biases every "
         "metric in this report."
         if m.evaluate_config.get("reference_standard") else
         "Reference standard not stated (evaluate.reference_standard): who labelled and how is unknown to "
         "this report, so the label noise that caps and biases every metric here cannot be judged."),
        f"Single source: {(d.provenance.source if d.provenance else None) or 'see ' + ctx.ref('data')}. "
        "Performance at other hospitals, on other "
        "detectors and post-processing, and in other populations is unknown until validated there.",
        f"Prevalence shift: fibrosis is {_pct(prev)} of this data set versus {_pct(NIH_PREVALENCE)} in the full "
        "NIH ChestX-ray14 set and less in most clinical populations. Calibration, PPV and NPV measured here "
        f"do not transfer; PPV at a lower prevalence is much lower (see {ctx.ref('decisions')}).",
        f"Small test set: {d.n} images with {d.n_pos} positives; the confidence intervals are the result, "
        "the point estimates alone are not.",
        "Grad-CAM maps show where the score came from, not where disease is; they cannot validate the model.",
        "The model sees a downsampled gray image; fine reticular patterns visible at full resolution may be lost.",
    ]
    small = [g for g in m.subgroups if g.small]
    if small:
        limits.append(f"{len(small)} of {len(m.subgroups)} subgroups are too small to compare (flagged in "
                      f"{ctx.ref('subgroups')}); fairness across sex, age, view and device is not established.")
    if not m.pretrained:
        limits.insert(0, "The backbone was NOT ImageNet-pretrained (random initialisation): this run does "
                         "not represent the intended transfer-learning method.")
    return [{"type": "h3", "text": "Intended use"}, {"type": "list", "items": intended},
            {"type": "h3", "text": "Out of scope"}, {"type": "list", "items": out_of_scope},
            {"type": "h3", "text": "Limitations"}, {"type": "list", "items": limits},
            {"type": "p", "style": "note", "text": "Not a medical device; not cleared or approved by any "
                                                   "regulator. Patient data never leave the site in this "
                                                   "report: it holds aggregates, hashes and settings only."}]
