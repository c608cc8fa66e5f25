"""`fibrosis tune`, judging side: which arm, by how much, and why (pure functions on OOF logits).

Why here and not in fibrosis.train: train produces out-of-fold logits; judging them is
inference statistics (DeLong AUC and paired tests, Platt calibration and operating points
on the pooled OOF logits), which is what this stage already owns. Moving DeLong into the
core ``fibrosis.numeric`` would pull the whole variance/warning machinery below every stage
for one caller, and would give training code a way to start choosing on AUCs by itself.
So train stays free of selection statistics and the `tune` command composes the two.

Selection: pooled OOF AUC per arm with a DeLong CI; a paired DeLong test of each arm
against the best and against random initialisation; the **one-standard-error rule**: among
the arms whose AUC is within one DeLong SE of the best arm's, take the least-unfrozen (then
the slower backbone learning rate, then the fewest add-ons such as auxiliary heads, then
without test-time augmentation) -- the simplest model the data cannot tell apart from the
best. A TTA twin (``<arm>+tta``, fibrosis.train.tta_arms) is the same models averaged over
several views: more inference for no new weights, so it ranks just after its own arm. An arm
with add-ons (auxiliary heads) or a twin is also tested (paired DeLong) against its ``base``:
the same recipe without them.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fibrosis.config import EvaluateConfig
from fibrosis.evaluate import metrics as M
from fibrosis.evaluate.run import OOF_FIT, Predictions, WarningLog, fit_operating_points
from fibrosis.numeric import MetricWarning

OOF_SPLIT = OOF_FIT  # what the calibration/threshold record names as its fit data


def one_se_choice(arms: Sequence[dict[str, Any]], rule: str = "one-se") -> tuple[str, str]:
    """(chosen arm name, one-sentence reason) from records with name, auc, se, depth, lr_ratio
    (and optionally ``extras``, the number of add-ons, 0 when absent).

    ``depth`` orders arms from least to most unfrozen (0 = head only); among equal depth a
    larger ``lr_ratio`` (slower backbone) counts as less change, then fewer add-ons, then no TTA
    (``tta`` false or absent) as less than TTA.
    """
    if not arms:
        raise ValueError("no arms to choose from")
    best = max(arms, key=lambda a: (a["auc"], -a["depth"]))
    if rule == "best":
        return best["name"], (f"Chose {best['name']!r}: the highest pooled out-of-fold AUC "
                              f"({best['auc']:.3f}).")
    se = best.get("se") or 0.0
    within = [a for a in arms if a["auc"] >= best["auc"] - se]
    chosen = min(within, key=lambda a: (a["depth"], -a["lr_ratio"], a.get("extras", 0), bool(a.get("tta")),
                                        -a["auc"]))
    if chosen["name"] == best["name"]:
        reason = (f"Chose {chosen['name']!r}: it has the highest pooled out-of-fold AUC ({best['auc']:.3f}) and "
                  f"no less-unfrozen arm comes within one standard error ({se:.3f}) of it.")
    else:
        reason = (f"Chose {chosen['name']!r} (out-of-fold AUC {chosen['auc']:.3f}): the least-unfrozen arm within "
                  f"one standard error ({se:.3f}) of the best arm {best['name']!r} ({best['auc']:.3f}), "
                  f"since the data cannot tell them apart and fewer trained weights overfit less.")
    return chosen["name"], reason


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, level: float) -> dict[str, Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)  # small-n caveats go in the table note
            t = M.delong_paired_test(y, a, b, level)
    except ValueError:
        return None
    return {"difference": t["difference"], "p": t["p"], "ci": t.get("ci")}


def select_arm(y: Sequence[int], oof: dict[str, np.ndarray], meta: dict[str, dict[str, Any]],
               level: float = 0.95, rule: str = "one-se") -> dict[str, Any]:
    """The arms table and the choice. ``oof``: arm -> pooled OOF logits (same case order as ``y``);
    ``meta``: arm -> {depth, lr_ratio, init, ...} (copied into the table); a TTA twin's meta has
    ``tta: true`` and ``base_arm`` (its arm without TTA)."""
    y = np.asarray(y, int)
    log = WarningLog()
    table = []
    for name, z in oof.items():
        with log.step(f"OOF AUC ({name})"):
            d = M.auc_delong(y, z, level)
        table.append({**meta[name], "name": name, "auc": d["auc"], "se": d["se"], "ci": d["ci"],
                      "roc": M.roc_points(y, z)})
    chosen, reason = one_se_choice(table, rule)
    best = max(table, key=lambda a: (a["auc"], -a["depth"]))
    randoms = [a for a in table if a.get("init") == "random" and not a.get("tta")]  # the control as trained
    control = max(randoms, key=lambda a: a["auc"]) if randoms else None
    for a in table:
        a["vs_best"] = None if a["name"] == best["name"] else _paired(y, oof[a["name"]], oof[best["name"]], level)
        a["vs_random"] = (None if control is None or a["name"] == control["name"]
                          else _paired(y, oof[a["name"]], oof[control["name"]], level))
        # against the same recipe without its add-ons, or a TTA twin against its own arm: same patients
        base = a.get("base") or a.get("base_arm")
        a["vs_base"] = _paired(y, oof[a["name"]], oof[base], level) if base in oof else None
    return {"level": level, "rule": rule, "n": int(len(y)), "n_pos": int(y.sum()), "arms": table,
            "best": best["name"], "random_control": control["name"] if control else None,
            "chosen": chosen, "reason": reason, "warnings": log.items}


def fit_oof_operating_points(rows: Sequence[dict[str, str]], oof: np.ndarray, ecfg: EvaluateConfig
                             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrator and thresholds fitted on the pooled OOF logits of all development patients:
    (calibration dict, threshold record) for the checkpoint."""
    pred = Predictions.from_rows(rows, oof, OOF_SPLIT)
    op = fit_operating_points(pred, ecfg, WarningLog())
    return op.calibrator.to_dict(), op.threshold_record()
