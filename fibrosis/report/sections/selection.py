"""Section "Model and selection": architecture, weights and training, and for a `fibrosis tune`
run the arms compared, after the results they led to, with the caveat of choosing among many."""
from __future__ import annotations

from typing import Any

from fibrosis.evaluate.tune_record import Paired
from fibrosis.report.format import NA, estimate, num, p_value
from fibrosis.report.sections.context import Block, Context
from fibrosis.evaluate.tune_record import TuneResult


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


def _aux_text(aux: dict[str, Any] | None) -> str:
    if not aux or not aux.get("names"):
        return "none (fibrosis label only)"
    return (f"{len(aux['names'])} other findings trained jointly as extra outputs (loss weight "
            f"{aux.get('weight', 0):g}): {', '.join(aux['names'])}. They shape the shared features only; "
            "every number in this report is of the fibrosis output.")


def _training_text(ctx: Context) -> tuple[str, str]:
    r = ctx.m.run
    if ctx.tune is not None or ctx.out_of_fold:
        return ("Training", "chosen by `fibrosis tune` (below, 'How much to unfreeze?'): "
                            f"{(r.preset if r else None) or 'recipe not recorded'}. No validation set picked an "
                            "epoch: the epoch budget was chosen on the pooled out-of-fold loss.")
    done = r.epochs_done if r else None
    if r is None or not done:
        return ("Epochs trained", "not recorded in the checkpoint")
    best = f"best checkpoint: epoch {r.best_epoch}" if r.best_epoch is not None else "best epoch not recorded"
    if r.best_val_auc is not None:
        best += f", validation AUC {num(r.best_val_auc, 'auc')}"
    return ("Epochs trained", f"{done} ({best})")


def model_blocks(ctx: Context) -> list[Block]:
    r = ctx.m.run
    if r is None:
        return [{"type": "p", "style": "warn", "text": "Model: not recorded in metrics.json."}] + (
            tune_blocks(ctx.tune) if ctx.tune else [])
    w = r.weights
    conf = {s.name: s for s in r.stages_configured}
    rows = []
    for s in r.stages_run:
        c = conf.get(s.name)
        rows.append([s.name, f"{s.epochs} / {(c.epochs if c else None) or 'not recorded'}",
                     NA if c is None or c.lr is None else f"{c.lr:g}",
                     ", ".join(c.unfreeze if c else []) or "head only", num(s.best_val_auc, "auc")])
    blocks: list[Block] = [{"type": "kv", "items": [
        ("Architecture", f"{r.arch} (one-logit head, gray input {r.input_size} px)"),
        ("Backbone weights", f"{w.file or w.source or 'none'}" + ("" if r.pretrained else " (NOT PRETRAINED)")),
        ("Weights sha256", w.sha256 or "none (no weights file)"),
        ("Test-time augmentation", tta_text(r.tta)),
        *([] if ctx.tune is not None or ctx.out_of_fold else [("Preset", r.preset or "none (explicit stages)")]),
        _training_text(ctx),
        ("Auxiliary heads", _aux_text(r.aux)),
        ("Checkpoint sha256", r.checkpoint_sha256 or "not recorded")]}]
    if rows:
        blocks.append({"type": "table", "caption": "Training stages (freeze, then unfreeze)",
                       "header": ["stage", "epochs run / planned", "learning rate", "trainable blocks",
                                  "best val AUC"], "rows": rows})
    oof = (r.aux or {}).get("oof_auc") or {}
    if oof and ctx.tune is None:  # a tune run lists them per arm below
        blocks.append({"type": "table", "caption": "Auxiliary findings: each head's own pooled out-of-fold AUC "
                                                   "(context: whether the backbone learned them; not validated here)",
                       "header": ["finding", "OOF AUC"], "rows": [[k, num(v, "auc")] for k, v in sorted(oof.items())]})
    return blocks + (tune_blocks(ctx.tune) if ctx.tune else [])


def _vs(d: Paired | None, absent: str) -> str:
    return absent if not d else f"{num(d.difference, 'difference', sign=True)} (p = {p_value(d.p)})"


def tune_blocks(t: TuneResult) -> list[Block]:
    """"How much to unfreeze?": the `fibrosis tune` arms table, OOF ROC curves and the choice."""
    twins = any(a.tta for a in t.arms)  # tune.tta: "<arm>+tta" rows, the same models with TTA
    rows = []
    for a in t.arms:
        reps = ", ".join(num(v, "auc") for v in a.repeat_aucs.values())
        minutes = (f"{a.minutes:.1f} ({a.cpu_minutes:.1f} CPU)"
                   + (f"; TTA {a.twin.tta_seconds:.0f} s" if a.twin else ""))
        if a.failed:
            rows.append([a.name, a.describe, f"failed: {a.failed}", NA, NA, NA, NA, NA, minutes])
            continue
        s = a.score
        rows.append([a.name, a.describe, estimate(s.auc, s.ci, "auc"),
                     _vs(s.vs_reference, "the reference"), _vs(s.vs_best, "the best"),
                     _vs(s.vs_base, "no base arm"), reps or NA,
                     # a recipe-train arm stops early on each fold's own validation part
                     "per fold (early stopping)" if a.recipe == "train" else str(a.epoch), minutes])
    reps = f" \u00d7 {t.repeats} repeats" if t.repeats > 1 else ""
    adj = t.selection_adjusted
    replicated = " ".join(
        f"{c.chosen!r} against the simpler {c.rival!r}: AUC per repeat "
        + ", ".join(f"{num(a, 'auc')} vs {num(b, 'auc')}" for a, b in zip(c.chosen_auc, c.rival_auc))
        + (" (kept)." if c.holds else " (not kept: it failed in a further deal of the folds)." if c.failed
           else " (not kept: the gain did not replicate).") for c in t.replication)
    lvl = f"{100 * float(t.level):.4g}% CI"
    blocks: list[Block] = [
        {"type": "h3", "text": "How much to unfreeze?"},
        {"type": "p", "text": f"Patient-level, label-stratified {t.folds}-fold cross-validation{reps} over the "
                              f"{t.n_dev} development images ({t.n_dev_patients} patients, {t.n_dev_pos} with "
                              "fibrosis; the test split was not used). The first row is the reference: scikit-learn's "
                              "logistic regression on the backbone's pooled features, what a team would write without "
                              "this tool. Fine-tuning arms start from the tool's linear probe and train with the same "
                              "augmentation as `fibrosis train`, for the epoch budget with the lowest pooled "
                              "out-of-fold loss; the 'partial' row is `fibrosis train` itself, run on each fold. "
                              "AUCs are of the pooled out-of-fold logits (DeLong CI); differences are paired DeLong "
                              "tests on the same patients. An arm whose fold model gave constant output is marked "
                              "failed and has no AUC."
                              + (" Rows named '<arm>+tta' are the same fold models scored with test-time "
                                 "augmentation (mean logit over small rotations and scalings, never mirrored); "
                                 "they rank just after their arm in the one-standard-error rule, and the 'vs base' "
                                 "column tests them against it. Their minutes include the arm's training."
                                 if twins else "")},
        {"type": "p", "style": "warn", "text": f"Multiplicity: {len(t.arms)} arms were compared on the same "
                                               "development patients. The p-values are not corrected for the number "
                                               "of arms and hold the trained models fixed (they do not include the "
                                               "variation of retraining); the chosen arm's out-of-fold AUC is "
                                               "optimistic because it was chosen on these predictions. The results "
                                               "on the held-out split above are the estimate to quote."},
        {"type": "table", "caption": "Arms (pooled out-of-fold)",
         "header": ["arm", "what trains", f"OOF AUC ({lvl})", "vs reference (p)", "vs best (p)",
                    "vs same arm without add-ons or TTA (p)", "AUC per repeat", "epochs",
                    "minutes (CPU minutes)"],
         "rows": rows},
        {"type": "figure", "key": "tune_roc", "half": True,
         "caption": "Out-of-fold ROC curves of every arm; dotted grey: random initialisation."},
    ]
    return blocks + tune_aux_blocks(t) + [
        {"type": "p", "style": "summary", "text": t.reason + (
            f" Replication over the repeats of the cross-validation: {replicated}" if replicated else "") + (
            f" Its pooled out-of-fold AUC ({num(adj.pooled_auc, 'auc')}) is optimistic, since it was chosen on "
            "these predictions; the selection-adjusted estimate (Tibshirani & Tibshirani 2009) is "
            f"{num(adj.auc, 'auc')}. The held-out results in this report are the unbiased estimate." if adj else "")
            + (f" The model evaluated here is its {t.folds * t.repeats} fold models as one ensemble "
               "(mean logit); calibration and thresholds were fitted on the pooled out-of-fold logits."
               if t.final == "ensemble" else
               " The model evaluated here was refitted on all development data with that budget; calibration and "
               "thresholds were fitted on the pooled out-of-fold logits.")},
    ]


def tune_aux_blocks(t: TuneResult) -> list[Block]:
    """Arms that could not run, and the auxiliary findings: labels and each aux arm's own OOF AUCs."""
    out: list[Block] = []
    for name, why in t.skipped_arms.items():
        out.append({"type": "p", "text": f"Arm {name!r} was not run: {why}."})
    aux = t.aux
    arms = [a for a in t.arms if a.aux_auc]
    if aux and aux.names and arms:
        rows = [[n, f"{aux.counts[n][0]} / {aux.counts[n][1]}"]
                + [num(a.aux_auc.get(n), "auc") for a in arms] for n in aux.names]
        out.append({"type": "table", "caption": "Auxiliary findings used as extra training targets "
                    "(context: each head's own pooled out-of-fold AUC; not validated here)",
                    "header": ["finding", "labelled + / \u2212"] + [f"OOF AUC, {a.name}" for a in arms],
                    "rows": rows})
        if aux.dropped:
            out.append({"type": "p", "text": "No head (too few labels): " + "; ".join(
                f"{k}: {v}" for k, v in aux.dropped.items()) + "."})
    return out
