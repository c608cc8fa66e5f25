"""`fibrosis tune`, judging side: which arm, by how much, and why (pure functions on OOF logits).

Why here and not in fibrosis.train: train produces out-of-fold logits; judging them is
inference statistics (DeLong AUC and paired tests, Platt calibration and operating points
on the pooled OOF logits), which is what this stage already owns. Moving DeLong into the
core ``fibrosis.numeric`` would pull the whole variance/warning machinery below every stage
for one caller, and would give training code a way to start choosing on AUCs by itself.
So train stays free of selection statistics and the `tune` command composes the two.

Selection: pooled OOF AUC per arm with a DeLong CI; a paired DeLong test of each arm
against the best, the reference and the random-init control. The first choice is the arm
with the highest pooled OOF AUC (``tune.selection: replicated``, the default, and ``best``),
or the **one-standard-error rule** (``one-se``): among the arms within one DeLong SE of the
best, the simplest (:func:`complexity`: least unfrozen, then the slower learning rate, then
fewer add-ons such as auxiliary heads, then without test-time augmentation, then the plainer
recipe). An arm whose fold model failed (constant output) is never chosen.

**Replication** (``replicated`` and ``one-se``; :func:`rivals`, :func:`replicated_choice`): one
cross-validation deal is one draw, and the highest of many arms is partly luck. The first
choice is kept only if it beats, in *every* repeat of the k-fold, each arm on its path of
simpler rivals: its best simpler arm and its own recipe without its add-on (its ``base``), then
theirs, down to the simplest (``tune.finalist_repeats`` more deals for these finalists). The
first arm it does not beat takes its place and is checked against the simpler arms after it;
an arm that failed in a further deal neither takes a place nor keeps one. The chosen arm must
also match the reference on the mean over repeats. The paired p-values hold the trained models fixed: they
say how surely these fold models differ on these patients, not how a retrained model would.

The chosen arm's pooled OOF AUC is optimistic (it won on these predictions);
:func:`selection_adjusted` gives Tibshirani & Tibshirani's (2009) bias-corrected estimate.
"""
from __future__ import annotations

import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fibrosis.data.manifest import ManifestRow
from fibrosis.config import ArmRecipe, EvaluateConfig, Selection
from fibrosis.evaluate import metrics as M
from fibrosis.evaluate.run import OOF_FIT, Predictions, WarningLog, fit_operating_points
from fibrosis.numeric import MetricWarning

OOF_SPLIT = OOF_FIT  # what the calibration/threshold record names as its fit data
RECIPES = typing.get_args(ArmRecipe)  # simplest first


def complexity(a: Mapping[str, Any]) -> tuple[float, ...]:
    """How much an arm changes, as a sort key (smaller = simpler): depth (0 = head only), then a
    larger ``lr_ratio`` (slower fine-tuning) as less, then fewer add-ons (``extras``), then no
    TTA, then the plainer recipe."""
    return (a["depth"], -a["lr_ratio"], a.get("extras", 0), bool(a.get("tta")),
            RECIPES.index(a.get("recipe", "lp-ft")))


def first_choice(arms: Sequence[dict[str, Any]], rule: str) -> tuple[str, str]:
    """(chosen arm name, one-sentence reason) from records with name, auc, se, depth, lr_ratio
    (and optionally ``extras``, ``tta``, ``recipe``, ``failed``); failed arms are never chosen."""
    arms = [a for a in arms if not a.get("failed")]
    if not arms:
        raise ValueError("no arms to choose from (every arm failed or none ran)")
    best = max(arms, key=lambda a: (a["auc"], [-v for v in complexity(a)]))
    if rule in ("best", "replicated"):
        return best["name"], (f"Chose {best['name']!r}: the highest pooled out-of-fold AUC "
                              f"({best['auc']:.3f}).")
    if rule != "one-se":
        raise ValueError(f"tune.selection={rule!r}; allowed: {list(typing.get_args(Selection))}")
    se = best.get("se") or 0.0
    within = [a for a in arms if a["auc"] >= best["auc"] - se]
    chosen = min(within, key=lambda a: (complexity(a), -a["auc"]))
    if chosen["name"] == best["name"]:
        reason = (f"Chose {chosen['name']!r}: it has the highest pooled out-of-fold AUC ({best['auc']:.3f}) and "
                  f"no simpler arm comes within one standard error ({se:.3f}) of it.")
    else:
        reason = (f"Chose {chosen['name']!r} (out-of-fold AUC {chosen['auc']:.3f}): the simplest arm within "
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


def select_arm(y: Sequence[int] | np.ndarray, oof: dict[str, np.ndarray], meta: dict[str, dict[str, Any]],
               level: float = 0.95, rule: str = "replicated") -> dict[str, Any]:
    """The arms table and the first choice (see the module docstring). ``oof``: arm -> pooled OOF logits (same case order
    as ``y``); ``meta``: arm -> {depth, lr_ratio, init, recipe, failed, ...} (copied into the
    table); a TTA twin's meta has ``tta: true`` and ``base_arm`` (its arm without TTA). A failed
    arm's row keeps its reason and gets no AUC."""
    y = np.asarray(y, int)
    log = WarningLog()
    table = []
    for name, z in oof.items():
        row = {**meta[name], "name": name}
        if row.get("failed"):
            table.append({**row, "auc": None, "se": None, "ci": None, "roc": None})
            continue
        with log.step(f"OOF AUC ({name})"):
            d = M.auc_delong(y, z, level)
        table.append({**row, "auc": d["auc"], "se": d["se"], "ci": d["ci"], "roc": M.roc_points(y, z)})
    live = [a for a in table if not a.get("failed")]
    chosen, reason = first_choice(live, rule)
    best = max(live, key=lambda a: (a["auc"], [-v for v in complexity(a)]))
    control = _first(live, lambda a: a.get("init") == "random" and not a.get("tta"))  # the control as trained
    reference = _first(live, lambda a: a.get("recipe") == "reference" and not a.get("tta"))
    def pair(a: dict[str, Any], other: dict[str, Any] | None) -> dict[str, Any] | None:
        if a.get("failed") or other is None or a["name"] == other["name"]:
            return None
        return _paired(y, oof[a["name"]], oof[other["name"]], level)

    for a in table:
        ok = not a.get("failed")
        a["vs_best"], a["vs_random"], a["vs_reference"] = pair(a, best), pair(a, control), pair(a, reference)
        # against the same recipe without its add-ons, or a TTA twin against its own arm: same patients
        base = a.get("base") or a.get("base_arm")
        a["vs_base"] = _paired(y, oof[a["name"]], oof[base], level) if ok and base in oof and \
            not meta[base].get("failed") else None
    return {"level": level, "rule": rule, "n": int(len(y)), "n_pos": int(y.sum()), "arms": table,
            "best": best["name"], "random_control": control["name"] if control else None,
            "reference": reference["name"] if reference else None,
            "chosen": chosen, "reason": reason, "warnings": log.items}


def _first(rows: Sequence[dict[str, Any]], test: Any) -> dict[str, Any] | None:
    return next((a for a in rows if test(a)), None)


def rival(table: Sequence[dict[str, Any]], chosen: str) -> str | None:
    """The arm ``chosen`` must beat to be kept: the best (pooled OOF AUC) of the arms simpler
    than it; None when none is simpler."""
    me = next(a for a in table if a["name"] == chosen)
    simpler = [a for a in table if not a.get("failed") and complexity(a) < complexity(me)]
    return max(simpler, key=lambda a: (a["auc"], [-v for v in complexity(a)]))["name"] if simpler else None


def rivals(table: Sequence[dict[str, Any]], chosen: str) -> list[str]:
    """The simpler arms ``chosen`` must beat, from the most complex to the simplest: its best
    simpler arm and its own recipe without its add-on (``base``: the arm without TTA or without
    auxiliary heads), then theirs, down to the simplest. Beating only the nearest rival is not
    enough: an add-on could ride on another's gain (say TTA's) that did not itself replicate."""
    by_name = {a["name"]: a for a in table}
    found: list[str] = []
    todo = [chosen]
    while todo:
        current = by_name[todo.pop()]
        for other in (rival(table, current["name"]), current.get("base") or current.get("base_arm")):
            if (other and other != chosen and other not in found and other in by_name
                    and not by_name[other].get("failed")):
                found.append(other)
                todo.append(other)
    return sorted(found, key=lambda n: (complexity(by_name[n]), by_name[n]["auc"]), reverse=True)


def replicated_choice(y: Sequence[int], table: Sequence[dict[str, Any]], first: str,
                      by_repeat: Mapping[str, Mapping[int, np.ndarray]], failed: Sequence[str] = ()
                      ) -> tuple[str, list[dict[str, Any]]]:
    """Walk ``first``'s rivals (:func:`rivals`) from the most complex to the simplest: the current
    choice is kept past an arm only if it beats that arm in every repeat, else that arm becomes the
    choice, checked against the simpler arms after it. An arm named in ``failed`` (a constant fold
    model in a further repeat) beats nothing and never takes a place (its check says ``failed``).
    Returns (choice, the checks made, in order); ValueError when only failed arms are left."""
    by_name = {a["name"]: a for a in table}
    chosen, checks = first, []
    for other in rivals(table, first):
        if other in failed or not complexity(by_name[other]) < complexity(by_name[chosen]):
            continue  # failed in a further deal, or not simpler than the arm now chosen
        check = replication(y, chosen, other, by_repeat)
        check["failed"] = chosen in failed
        if check["failed"]:
            check["holds"] = False
        checks.append(check)
        if not check["holds"]:
            chosen = other
    if chosen in failed:
        raise ValueError(f"tune: {chosen!r} failed in a further deal of the folds (a fold model with constant "
                         f"output) and no simpler arm on its path is left to choose")
    return chosen, checks


def repeat_aucs(y: Sequence[int] | np.ndarray, by_repeat: Mapping[int, np.ndarray]) -> dict[int, float]:
    """Pooled OOF AUC of each repeat of the k-fold."""
    y = np.asarray(y, int)
    return {r: float(M.delong_placements(y, z)[0]) for r, z in sorted(by_repeat.items())}


def replication(y: Sequence[int] | np.ndarray, chosen: str, other: str,
                by_repeat: Mapping[str, Mapping[int, np.ndarray]]) -> dict[str, Any]:
    """Does ``chosen`` beat ``other`` in every repeat both ran? (AUC per repeat, and the verdict)."""
    a, b = repeat_aucs(y, by_repeat[chosen]), repeat_aucs(y, by_repeat[other])
    common = sorted(set(a) & set(b))
    diffs = {r: a[r] - b[r] for r in common}
    return {"chosen": chosen, "rival": other, "repeats": common, "chosen_auc": [a[r] for r in common],
            "rival_auc": [b[r] for r in common], "difference": [diffs[r] for r in common],
            "holds": bool(common) and all(d > 0 for d in diffs.values())}


def selection_adjusted(fold_auc: Mapping[str, Mapping[str, float | None]], chosen: str, pooled_auc: float
                       ) -> dict[str, Any]:
    """Tibshirani & Tibshirani (2009): the chosen arm's pooled OOF AUC minus the estimated bias of
    having chosen it, bias = mean over folds k of [best arm's AUC in fold k - chosen's AUC in fold k].
    ``fold_auc``: arm -> fold -> held-out AUC (None: a fold without both classes). The bias is 0
    when the chosen arm wins every fold, and grows with how often other arms win by chance."""
    mine = fold_auc[chosen]
    gaps = []
    for fold, own in mine.items():
        others = [auc for v in fold_auc.values() if (auc := v.get(fold)) is not None]
        if own is not None and others:
            gaps.append(max(others) - own)
    bias = float(np.mean(gaps)) if gaps else float("nan")
    return {"auc": pooled_auc - bias, "pooled_auc": pooled_auc, "bias": bias, "folds": len(gaps),
            "arms": len(fold_auc), "method": "Tibshirani & Tibshirani 2009 (max over arms of each fold's AUC)"}


def fit_oof_operating_points(rows: Sequence[ManifestRow], oof: np.ndarray, ecfg: EvaluateConfig
                             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrator and thresholds fitted on the pooled OOF logits of all development patients:
    (calibration dict, threshold record) for the checkpoint."""
    pred = Predictions.from_rows(rows, oof, OOF_SPLIT)
    op = fit_operating_points(pred, ecfg, WarningLog())
    return op.calibrator.to_dict(), op.threshold_record()
