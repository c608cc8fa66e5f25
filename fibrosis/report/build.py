"""`fibrosis report`: the validation report (HTML + PDF of the same content + metrics.json).

The content is built once as a list of neutral blocks (headings, paragraphs, tables,
figures) from ``RUN/eval/<split>/metrics.json``; ``report_render`` turns the same
blocks into a self-contained HTML page and a PDF, so the two cannot disagree.
Only aggregates, hashes and settings go in: no patient keys, file paths or other
identifiers from the manifest.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import yaml

from fibrosis import artefacts
from fibrosis import __version__
from fibrosis.io import atomic_write_bytes, read_text
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.model.cam import PANELS_FILE, load_panels
from fibrosis.report import plots
from fibrosis.report.card import model_card
from fibrosis.report.reader import reader_blocks
from fibrosis.report.render import Block, render_html, render_pdf
from fibrosis.train.tune.record import TuneResult

logger = logging.getLogger(__name__)

NOT_PRETRAINED = ("WARNING: the backbone of this model is NOT ImageNet-pretrained (random initialisation). "
                  "These results do not show what transfer learning achieves and must not be used "
                  "to judge the method or the model.")


def pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def ci_pct(ci: list[float] | None) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


def ci3(ci: list[float] | None) -> str:
    return "n/a" if not ci or ci[0] is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


def ci_label(m: EvaluationResult) -> str:
    """'95% CI' (or the configured evaluate.ci_level, e.g. '90% CI') for every interval label."""
    return f"{100 * float(m.evaluate_config['ci_level']):.4g}% CI"


def num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def op_label(name: str) -> str:
    """'youden' -> 'Youden', 'sensitivity_0.90' -> 'sensitivity >= 0.90'."""
    if name.startswith("sensitivity_"):
        return f"sensitivity >= {name.split('_', 1)[1]}"
    return name.replace("_", " ").capitalize()


def _frac(p: dict[str, Any]) -> str:
    return "n/a" if p["value"] is None else f"{pct(p['value'])} ({p['k']}/{p['n']}; {ci_pct(p['ci'])})"


def headline(m: EvaluationResult) -> str:
    d, disc = m.data, m.discrimination
    where = ("all images of the evaluated cache" if m.split == "all" else f"the {m.split} split")
    how = (f"With the calibration and thresholds frozen from training (fitted on its {m.fit_split} split; "
           f"nothing refitted on these data), on {where}" if m.frozen else f"On the held-out {m.split} split")
    text = (f"{how} ({d['n']} images of {d['n_patients']} patients; {d['n_pos']} "
            f"with fibrosis, prevalence {pct(d['prevalence'])}), the model's AUC was {disc['auc']:.3f} "
            f"({ci_label(m)} {ci3(disc['delong']['ci'])} by DeLong; {ci3(disc['bootstrap']['ci'])} by "
            f"patient-clustered bootstrap).")
    op = next((o for o in m.operating_points if o["name"] == "youden"), None)
    if op and op["sensitivity"]["value"] is not None and op["specificity"]["value"] is not None:
        cm = op["confusion"]
        text += (f" At the Youden threshold chosen on the {op['chosen_on']['split']} split "
                 f"({op['threshold']:.3f}), it flagged {cm['tp']} of {cm['tp'] + cm['fn']} fibrosis images "
                 f"(sensitivity {pct(op['sensitivity']['value'])}, {ci_pct(op['sensitivity']['ci'])}) and "
                 f"cleared {cm['tn']} of {cm['tn'] + cm['fp']} others (specificity "
                 f"{pct(op['specificity']['value'])}, {ci_pct(op['specificity']['ci'])}).")
        dep = op.get("deployment")
        if dep and dep.get("ppv") is not None:
            text += (f" Where fibrosis is {pct(dep['prevalence'])} of the imaged population, a positive "
                     f"flag would be correct {pct(dep['ppv'])} of the time (PPV) and a negative one "
                     f"{pct(dep['npv'], 2)} (NPV).")
    return text


def _qa_line(qa: dict[str, Any] | None) -> str:
    """The polarity QA of the cache in one line: policy, exclusions, images kept with a note."""
    if not qa:
        return "not recorded"
    noted = ", ".join(f"{n} {flag}" for flag, n in qa.get("n_flagged", {}).items()) or "none"
    return (f"ingest.polarity_qa={qa['polarity_qa']}: {qa['n_excluded']} input(s) excluded by the polarity "
            f"check (inverted or unsure display); images in the cache with a QA note: {noted}")


def _data_blocks(m: EvaluationResult) -> list[Block]:
    d = m.data
    rows = [[name, s["n"], s["n_patients"], s["n_pos"], pct(s["prevalence"])]
            for name, s in d.get("splits", {}).items()]
    blocks: list[Block] = [
        {"type": "h2", "text": "1. Data"},
        {"type": "kv", "items": [("Source", d.get("source", "not recorded")), ("Labels", d.get("labels", "")),
                                 ("Split method", d.get("split_method", "not recorded")),
                                 ("Reported split", f"{m.split} (calibration and thresholds fitted on "
                                                    f"{m.fit_split} only)"),
                                 ("Polarity QA", _qa_line(d.get("qa"))),
                                 ("Manifest sha256", d.get("manifest_sha256") or "n/a")]},
        {"type": "table", "caption": "Images per split", "header": ["split", "images", "patients", "fibrosis",
                                                                   "prevalence"], "rows": rows},
    ]
    exc = d.get("exclusions") or []
    if exc:
        blocks.append({"type": "table", "caption": f"Inputs excluded at ingest ({d.get('n_excluded', 0)})",
                       "header": ["kind", "reason", "count"],
                       "rows": [[e["kind"], e["reason"], e["count"]] for e in exc]})
    else:
        blocks.append({"type": "p", "text": "No inputs were excluded at ingest."})
    return blocks


def tta_text(record: dict[str, Any] | None) -> str:
    """The checkpoint's ``tta`` record (fibrosis.model.tta) in words."""
    if not record:
        return "none (one forward pass of the image as given)"
    views = []
    for v in record.get("variants") or []:
        what = [f"rotate {v['rotate_deg']:+g} deg" if v.get("rotate_deg") else "",
                f"scale {v['scale']:g}" if v.get("scale", 1.0) != 1.0 else ""]
        views.append(f"{v['name']} ({', '.join(w for w in what if w) or 'as given'})")
    return (f"{record.get('combine', 'mean logit')} over {len(views)} views: " + "; ".join(views)
            + f"; outside the image: {record.get('padding', 'black')}; no flips")


def _model_blocks(m: EvaluationResult) -> list[Block]:
    r = m.run
    w = r.get("weights", {})
    stages = r.get("stages_run") or []
    conf = {s["name"]: s for s in r.get("stages_configured") or []}
    rows = []
    for s in stages:
        c = conf.get(s["name"], {})
        rows.append([s["name"], f"{s['epochs']} / {c.get('epochs', '?')}",
                     "n/a" if c.get("lr") is None else f"{c['lr']:g}",
                     ", ".join(c.get("unfreeze") or []) or "head only", num(s.get("best_val_auc"))])
    blocks: list[Block] = [
        {"type": "h2", "text": "2. Model and training schedule"},
        {"type": "kv", "items": [
            ("Architecture", f"{r.get('arch')} (one-logit head, gray input {r.get('input_size')} px)"),
            ("Backbone weights", f"{w.get('source')}" + ("" if r.get("pretrained") else "  -- NOT PRETRAINED")),
            ("Weights sha256", w.get("sha256") or "n/a (no weights file)"),
            ("Test-time augmentation", tta_text(r.get("tta"))),
            ("Preset", r.get("preset") or "n/a"),
            ("Epochs trained", f"{r.get('epochs_done')} (best checkpoint: epoch {r.get('best_epoch')}, "
                               f"validation AUC {num(r.get('best_val_auc'))})"),
            ("Auxiliary heads", _aux_text(r.get("aux"))),
            ("Checkpoint sha256", r.get("checkpoint_sha256") or "n/a")]},
        {"type": "table", "caption": "Training stages (freeze, then unfreeze)",
         "header": ["stage", "epochs run / planned", "learning rate", "trainable blocks", "best val AUC"],
         "rows": rows},
    ]
    return blocks + _aux_blocks(r.get("aux"))


def _aux_text(aux: dict[str, Any] | None) -> str:
    if not aux or not aux.get("names"):
        return "none (fibrosis label only)"
    return (f"{len(aux['names'])} other findings trained jointly as extra outputs (loss weight "
            f"{aux.get('weight', 0):g}): {', '.join(aux['names'])}. They shape the shared features only; "
            "every number in this report is of the fibrosis output.")


def _aux_blocks(aux: dict[str, Any] | None) -> list[Block]:
    """The auxiliary heads' own out-of-fold AUCs (tune): context, not claims about those findings."""
    oof = (aux or {}).get("oof_auc") or {}
    if not oof:
        return []
    return [{"type": "table", "caption": "Auxiliary findings: each head's own pooled out-of-fold AUC "
                                         "(context: whether the backbone learned them; not validated here)",
             "header": ["finding", "OOF AUC"], "rows": [[k, f"{v:.3f}"] for k, v in sorted(oof.items())]}]


def _calibration_blocks(m: EvaluationResult) -> list[Block]:
    c = m.calibration
    cal = c["calibrator"]
    rows = []
    for label, b in (("before", c["before"]), (f"after ({c['method']})", c["after"])):
        cs = b["intercept_slope"]
        rows.append([label, num(b["reliability"]["ece"]), num(b["brier"]),
                     f"{num(cs.get('slope'), 2)} ({ci3(cs.get('slope_ci'))})",
                     f"{num(cs.get('intercept'), 2)} ({ci3(cs.get('intercept_ci'))})"])
    params = ", ".join(f"{k} = {v:.4g}" for k, v in cal["params"].items() if isinstance(v, (int, float)))
    fo = cal.get("fitted_on", {})
    return [
        {"type": "h2", "text": "4. Calibration"},
        {"type": "p", "text": f"Post-hoc {c['method']} calibration{(' (' + params + ')') if params else ''} was "
                              f"fitted on the {fo.get('split')} split only ({fo.get('n')} images, {fo.get('n_pos')} "
                              f"with fibrosis), saved in the checkpoint, and is applied unchanged here. "
                              f"ECE binning: {c['before']['reliability']['binning']}. Ideal calibration: "
                              "ECE 0, slope 1, intercept 0. Calibration holds at the prevalence of the "
                              "data it was fitted on; it must be re-checked at another site or prevalence."},
        {"type": "table", "caption": f"Calibration on the {m.split} split",
         "header": ["", "ECE", "Brier", f"slope ({ci_label(m)})", f"intercept ({ci_label(m)})"], "rows": rows},
        {"type": "figure", "key": "reliability", "caption": "Reliability diagrams before and after calibration; "
                                                            "bars: number of images per bin (log scale)."},
        {"type": "figure", "key": "histogram", "caption": "Predicted probability per true class; dotted lines: "
                                                          "the frozen thresholds."},
    ]


def threshold_digits(values: list[float]) -> int:
    """Fewest decimals (3..8) that keep distinct thresholds distinct when printed."""
    for d in range(3, 9):
        if len({f"{v:.{d}f}" for v in values}) == len(set(values)):
            return d
    return 8


def _operating_blocks(m: EvaluationResult) -> list[Block]:
    rows = []
    digits = threshold_digits([o["threshold"] for o in m.operating_points])
    dep_prev = m.deployment_prevalence
    for o in m.operating_points:
        cm = o["confusion"]
        row = [op_label(o["name"]), f"{o['threshold']:.{digits}f}",
               f"{pct(o['chosen_on']['sensitivity'])} / {pct(o['chosen_on']['specificity'])}",
               f"{cm['tp']} / {cm['fp']} / {cm['tn']} / {cm['fn']}", _frac(o["sensitivity"]),
               _frac(o["specificity"]), _frac(o["ppv"]), _frac(o["npv"])]
        if dep_prev is not None:
            dep = o.get("deployment") or {}
            row.append(f"{pct(dep.get('ppv'))} / {pct(dep.get('npv'), 2)}")
        rows.append(row)
    header = ["operating point", "threshold", f"{m.fit_split} sens / spec", "TP / FP / TN / FN",
              "sensitivity", "specificity", f"PPV at {pct(m.data['prevalence'])}",
              f"NPV at {pct(m.data['prevalence'])}"]
    if dep_prev is not None:
        header.append(f"PPV / NPV at {pct(dep_prev)}")
    note = ("Thresholds are on the calibrated probability, chosen on the "
            f"{m.fit_split} split and frozen, then applied to the {m.split} split. Intervals: Wilson "
            f"{ci_label(m)}. PPV and NPV depend on prevalence: the {m.split} prevalence is "
            f"{pct(m.data['prevalence'])}.")
    if dep_prev is not None:
        note += (f" The last column re-computes them by Bayes' rule at the deployment prevalence "
                 f"{pct(dep_prev)} (interval from the sensitivity/specificity bounds in the JSON).")
    else:
        note += " No deployment prevalence was given (evaluate.deployment_prevalence)."
    return [{"type": "h2", "text": "5. Operating points"}, {"type": "p", "text": note},
            {"type": "table", "caption": f"Operating points on the {m.split} split", "header": header,
             "rows": rows}]


def _subgroup_blocks(m: EvaluationResult) -> list[Block]:
    cfg = m.evaluate_config
    rows, muted = [], []
    for g in m.subgroups:
        rows.append([g["attribute"], g["value"], g["n"], g["n_pos"], pct(g["prevalence"]),
                     "n/a" if g["auc"] is None else f"{g['auc']:.3f} ({ci3(g['ci'])})",
                     "; ".join(g["flags"]) or ""])
        muted.append(bool(g["small"]))
    return [{"type": "h2", "text": "6. Subgroups"},
            {"type": "p", "text": f"AUC with DeLong {ci_label(m)} per subgroup of the {m.split} split. Groups with "
                                  f"fewer than {cfg['min_subgroup_n']} images or fewer than "
                                  f"{cfg['min_subgroup_positives']} positives (or negatives) are greyed out and "
                                  "flagged: their AUC is shown for completeness and must not be read as a "
                                  "difference between groups."},
            {"type": "table", "caption": "Subgroups", "header": ["attribute", "value", "n", "fibrosis",
                                                                "prevalence", f"AUC ({ci_label(m)})", "flag"],
             "rows": rows, "muted": muted}]


def _gradcam_blocks(m: EvaluationResult, have_figure: bool) -> list[Block]:
    blocks: list[Block] = [{"type": "h2", "text": "7. Grad-CAM examples"}]
    if not have_figure:
        return blocks + [{"type": "p", "style": "warn", "text": "Grad-CAM panels were not produced for this run."}]
    g = m.gradcam or {}
    text = ("Most confident true positives, false positives and most confidently missed fibrosis cases at the "
            "Youden threshold. Red marks image regions that raised the fibrosis score. This is a plausibility "
            "check (is the model looking at the lungs rather than markers, tubes or borders?), not a "
            "localisation of disease. Images are shown without identifiers; check for burned-in text before "
            "sharing the report outside your institution.")
    if g.get("missing_kinds"):
        text += f" No case of kind {', '.join(g['missing_kinds'])} exists at this threshold."
    return blocks + [{"type": "p", "text": text}, {"type": "figure", "key": "gradcam", "caption": g["method"]}]


def _repro_blocks(m: EvaluationResult) -> list[Block]:
    r = m.run
    vt, ve = r.get("versions_training") or {}, r.get("versions_evaluation") or {}
    rows = [[k, vt.get(k, "not recorded") if vt else "not recorded", ve.get(k, "")] for k in ve]
    return [
        {"type": "h2", "text": "9. Reproducibility"},
        {"type": "kv", "items": [
            ("Training seed / split seed", f"{r.get('seed')} / {r.get('split_seed')}"),
            ("Bootstrap", f"{m.discrimination['bootstrap']['n_resamples']} resamples of patients, seed "
                          f"{m.discrimination['bootstrap']['seed']}"),
            ("Manifest sha256 (training)", r.get("manifest_sha256") or "n/a"),
            ("Manifest sha256 (evaluated)", m.data.get("manifest_sha256") or "n/a"),
            ("Weights sha256", (r.get("weights") or {}).get("sha256") or "n/a"),
            ("Checkpoint sha256", r.get("checkpoint_sha256") or "n/a"),
            ("Evaluated", m.created), ("fibrosis version", __version__)]},
        {"type": "table", "caption": "Package versions", "header": ["package", "training", "evaluation"],
         "rows": rows},
        {"type": "pre", "caption": "Resolved configuration (config.yaml of the run + evaluation settings)",
         "text": yaml.safe_dump({**(r.get("config") or {}), "evaluate": m.evaluate_config}, sort_keys=False,
                                default_flow_style=None, width=100)},
    ]


def _tune_blocks(t: TuneResult) -> list[Block]:
    """"How much to unfreeze?": the `fibrosis tune` arms table, OOF ROC curves and the choice."""
    lvl = f"{100 * float(t.level):.4g}% CI"

    def vs(d: dict[str, Any] | None) -> str:
        return "-" if not d else f"{d['difference']:+.3f} (p={d['p']:.3g})"

    twins = any(a.get("tta") for a in t.arms)  # tune.tta: "<arm>+tta" rows, the same models with TTA
    rows = []
    for a in t.arms:
        reps = ", ".join(f"{v:.3f}" for v in (a.get("repeat_aucs") or {}).values())
        minutes = (f"{a.get('minutes', 0):.1f} ({a.get('cpu_minutes', 0):.1f} CPU)"
                   + (f"; TTA {a['tta_seconds']:.0f} s" if a.get("tta") else ""))
        if a.get("failed"):
            rows.append([a["name"], a.get("describe", ""), "failed", a["failed"], "-", "-", "-", "-", "-", "-",
                         minutes])
            continue
        rows.append([a["name"], a.get("describe", ""), f"{a['auc']:.3f}", ci3(a["ci"]), vs(a.get("vs_reference")),
                     vs(a.get("vs_best")), vs(a.get("vs_base")), reps or "-", num(a.get("oof_sd"), 2),
                     str(a.get("epoch", "")), minutes])
    reps = f" x {t.repeats} repeats" if t.repeats > 1 else ""
    adj = t.selection_adjusted or None
    checks = t.replication
    replicated = " ".join(
        f"{c['chosen']!r} against the simpler {c['rival']!r}: AUC per repeat "
        + ", ".join(f"{a:.3f} vs {b:.3f}" for a, b in zip(c["chosen_auc"], c["rival_auc"]))
        + (" (kept)." if c["holds"] else " (not kept: it failed in a further deal of the folds)." if c.get("failed")
           else " (not kept: the gain did not replicate).") for c in checks)
    blocks: list[Block] = [
        {"type": "h2", "text": "How much to unfreeze?"},
        {"type": "p", "text": f"Patient-level, label-stratified {t.folds}-fold cross-validation{reps} over the "
                              f"{t.n_dev} development images ({t.n_dev_patients} patients, {t.n_dev_pos} with "
                              "fibrosis; the test split was not used). The first row is the reference: scikit-learn's "
                              "logistic regression on the backbone's pooled features, what a team would write without "
                              "this tool. Fine-tuning arms start from the tool's linear probe and train with the same "
                              "augmentation as `fibrosis train`, for the epoch budget with the lowest pooled "
                              "out-of-fold loss; the 'partial' row is `fibrosis train` itself, run on each fold. "
                              "AUCs are of the pooled out-of-fold logits (DeLong CI); differences are paired DeLong "
                              "tests on the same patients. Those p-values hold the trained models fixed (they do not "
                              "include the variation of retraining) and are not corrected for the number of arms. "
                              "An arm whose fold model gave constant output is marked failed and has no AUC."
                              + (" Rows named '<arm>+tta' are the same fold models scored with test-time "
                                 "augmentation (mean logit over small rotations and scalings, never mirrored); "
                                 "they rank just after their arm in the one-standard-error rule, and the 'vs base' "
                                 "column tests them against it. Their minutes include the arm's training."
                                 if twins else "")},
        {"type": "table", "caption": "Arms (pooled out-of-fold)",
         "header": ["arm", "what trains", "OOF AUC", lvl, "vs reference (p)", "vs best (p)",
                    "vs same arm without add-ons or TTA (p)", "AUC per repeat", "OOF logit SD", "epochs",
                    "minutes (CPU minutes)"],
         "rows": rows},
        {"type": "figure", "key": "tune_roc", "half": True,
         "caption": "Out-of-fold ROC curves of every arm; dotted grey: random initialisation."},
    ]
    return blocks + _tune_aux_blocks(t) + [
        {"type": "p", "style": "summary", "text": t.reason + (
            f" Replication over the repeats of the cross-validation: {replicated}" if replicated else "") + (
            f" Its pooled out-of-fold AUC ({adj['pooled_auc']:.3f}) is optimistic, since it was chosen on these "
            f"predictions; the selection-adjusted estimate (Tibshirani & Tibshirani 2009) is {adj['auc']:.3f}. The "
            "test-split results in this report are the unbiased estimate." if adj else "") + (
            f" The model evaluated here is its {t.folds * t.repeats} fold models as one ensemble "
            "(mean logit); calibration and thresholds were fitted on the pooled out-of-fold logits."
            if t.final == "ensemble" else
            " The model evaluated here was refitted on all development data with that budget; calibration and "
            "thresholds were fitted on the pooled out-of-fold logits.")},
    ]


def _tune_aux_blocks(t: TuneResult) -> list[Block]:
    """Arms that could not run, and the auxiliary findings: labels and each aux arm's own OOF AUCs."""
    out: list[Block] = []
    for name, why in t.skipped_arms.items():
        out.append({"type": "p", "text": f"Arm {name!r} was not run: {why}."})
    aux = t.aux
    arms = [a for a in t.arms if a.get("aux_auc")]
    if aux.get("names") and arms:
        rows = [[n, f"{aux['counts'][n][0]} / {aux['counts'][n][1]}"]
                + [num(a["aux_auc"].get(n)) for a in arms] for n in aux["names"]]
        out.append({"type": "table", "caption": "Auxiliary findings used as extra training targets "
                    "(context: each head's own pooled out-of-fold AUC; not validated here)",
                    "header": ["finding", "labelled + / -"] + [f"OOF AUC, {a['name']}" for a in arms],
                    "rows": rows})
        if aux.get("dropped"):
            out.append({"type": "p", "text": "No head (too few labels): " + "; ".join(
                f"{k}: {v}" for k, v in aux["dropped"].items()) + "."})
    return out


def build_blocks(m: EvaluationResult, have: set[str], tune: TuneResult | None = None) -> list[Block]:
    """The report as neutral blocks (same content for HTML and PDF); ``tune``: RUN/tune.json."""
    r = m.run
    blocks: list[Block] = []
    if not r.get("pretrained", False):
        blocks.append({"type": "banner", "text": NOT_PRETRAINED})
    d = m.data
    blocks += [
        {"type": "h1", "text": "Pulmonary fibrosis classifier: validation report"},
        {"type": "kv", "items": [
            ("Run", r.get("name", "?")), ("Report date", dt.date.today().isoformat()),
            ("Evaluated", m.created), ("Data source", d.get("source", "not recorded")),
            ("Reported split", f"{m.split}: {d['n']} images, {d['n_patients']} patients, {d['n_pos']} with "
                               f"fibrosis (prevalence {pct(d['prevalence'])})")]},
        {"type": "p", "style": "summary", "text": headline(m)},
        {"type": "p", "style": "note", "text": "Research software, not a medical device. Labels are mined from "
                                               "radiology report text, not confirmed diagnoses. See the model card "
                                               "(section 8) before drawing any conclusion."},
    ]
    if m.warnings:
        blocks += [{"type": "h3", "text": "Read with care"}, {"type": "list", "items": m.warnings}]
    blocks += _data_blocks(m) + _model_blocks(m) + (_tune_blocks(tune) if tune else [])
    disc = m.discrimination
    boot = disc["bootstrap"]
    blocks += [
        {"type": "h2", "text": "3. Discrimination"},
        {"type": "table", "caption": f"AUC on the {m.split} split",
         "header": ["measure", "value", ci_label(m), "method"],
         "rows": [["AUC", f"{disc['auc']:.3f}", ci3(disc["delong"]["ci"]), "DeLong"],
                  ["AUC", f"{disc['auc']:.3f}", ci3(boot["ci"]),
                   f"percentile bootstrap, {boot['n_used']} resamples of {boot['n_patients']} patients"
                   if boot["ci"] else f"bootstrap not reported: {boot.get('error', '')}"],
                  ["average precision", f"{disc['pr']['average_precision']:.3f}", "",
                   f"no-skill level = prevalence {pct(disc['pr']['prevalence'])}"]]},
        {"type": "figure", "key": "roc", "half": True,
         "caption": f"ROC curve with the patient-clustered bootstrap {ci_label(m)[:-3]} band; dots: the frozen "
                    "operating points on this split."},
        {"type": "figure", "key": "pr", "half": True,
         "caption": "Precision-recall curve (precision at this split's prevalence)."},
    ]
    blocks += _calibration_blocks(m) + _operating_blocks(m) + _subgroup_blocks(m)
    blocks += _gradcam_blocks(m, "gradcam" in have)
    blocks += [{"type": "h2", "text": "8. Model card"}] + model_card(m)
    blocks += _repro_blocks(m)
    return blocks


def make_figures(m: EvaluationResult, eval_dir: Path) -> dict[str, bytes]:
    disc, cal, ops = m.discrimination, m.calibration, m.operating_points
    figs = {"roc": plots.png_bytes(plots.roc_figure(disc, ops)),
            "pr": plots.png_bytes(plots.pr_figure(disc["pr"])),
            "reliability": plots.png_bytes(plots.reliability_figure(cal["before"], cal["after"], cal["method"])),
            "histogram": plots.png_bytes(plots.histogram_figure(cal["before"]["histogram"],
                                                                cal["after"]["histogram"], ops))}
    g = m.gradcam
    if g and (eval_dir / PANELS_FILE).is_file():
        panels, per_kind = load_panels(eval_dir / PANELS_FILE)
        figs["gradcam"] = plots.png_bytes(plots.gradcam_figure(panels, g["threshold"], per_kind))
    return figs


def write_report(run: str | Path, out: str | Path | None = None, split: str = "test") -> Path:
    """Write ``out`` (default ``reports/<run name>/``): report.html, report.pdf, metrics.json."""
    run = Path(run)
    eval_dir = run / "eval" / split
    mpath = eval_dir / artefacts.METRICS
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: no evaluation of split {split!r}; run `fibrosis evaluate "
                                f"--run {run} --cache CACHE --split {split}` first")
    m = EvaluationResult.read(mpath)
    out = Path(out) if out is not None else Path("reports") / run.name
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(m, eval_dir)
    tune = TuneResult.read(run / artefacts.TUNE) if (run / artefacts.TUNE).is_file() else None  # `fibrosis tune`
    if tune:
        figs["tune_roc"] = plots.png_bytes(plots.tune_roc_figure(tune.arms, tune.chosen))
    blocks = build_blocks(m, set(figs), tune)
    blocks += reader_blocks(run, figs)  # `fibrosis review`'s reader vs model, when RUN/reader/reader.json exists
    title = f"Fibrosis classifier validation: {m.run_name or run.name}"
    page = render_html(blocks, figs, title)
    atomic_write_bytes(out / artefacts.REPORT_HTML, page.encode("utf-8"))  # never left truncated
    atomic_write_bytes(out / artefacts.METRICS, read_text(mpath).encode("utf-8"))
    render_pdf(page, out / artefacts.REPORT_PDF,  # last: HTML and metrics stand even if the PDF engine fails
               page_banner=None if m.pretrained else "NOT ImageNet-pretrained")
    logger.info("report: %s, %s, %s", out / artefacts.REPORT_HTML, out / artefacts.REPORT_PDF, out / artefacts.METRICS)
    return out
