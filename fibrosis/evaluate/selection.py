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

import dataclasses
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fibrosis.data.manifest import ManifestRow
from fibrosis.config import ArmRecipe, EvaluateConfig, Selection
from fibrosis.evaluate import metrics as M
from fibrosis.evaluate.run import OOF_FIT, Predictions, WarningLog, fit_operating_points
from fibrosis.evaluate.tune_record import ArmScore, ArmTraits, JudgedArm, Paired, ReplicationCheck, SelectionAdjusted
from fibrosis.model.calibration import CalibrationRecord
from fibrosis.model.threshold import ThresholdRecord
from fibrosis.numeric import MetricWarning

OOF_SPLIT = OOF_FIT  # what the calibration/threshold record names as its fit data
RECIPES = typing.get_args(ArmRecipe)  # simplest first


@dataclass(frozen=True)
class ArmSelection:
    """:func:`select_arm`'s answer: the arms table and the first choice (before replication)."""
    level: float
    rule: str
    n: int
    n_pos: int
    arms: tuple[JudgedArm, ...]
    best: str  # the highest pooled OOF AUC
    random_control: str | None
    reference: str | None
    chosen: str
    reason: str
    warnings: list[str]

    def arm(self, name: str) -> JudgedArm:
        return next(a for a in self.arms if a.name == name)


def complexity(a: ArmTraits) -> tuple[float, ...]:
    """How much an arm changes, as a sort key (smaller = simpler): depth (0 = head only), then a
    larger ``lr_ratio`` (slower fine-tuning) as less, then fewer add-ons (``extras``), then no
    TTA, then the plainer recipe."""
    return (a.depth, -a.lr_ratio, a.extras, a.tta, RECIPES.index(a.recipe))


def _rank(a: JudgedArm) -> tuple[float, list[float]]:
    """Higher is better: the AUC, then the simpler arm."""
    return a.auc, [-v for v in complexity(a.traits)]


def first_choice(arms: Sequence[JudgedArm], rule: str) -> tuple[str, str]:
    """(chosen arm name, one-sentence reason); failed arms are never chosen."""
    arms = [a for a in arms if not a.traits.failed]
    if not arms:
        raise ValueError("no arms to choose from (every arm failed or none ran)")
    best = max(arms, key=_rank)
    if rule in ("best", "replicated"):
        return best.name, (f"Chose {best.name!r}: the highest pooled out-of-fold AUC "
                           f"({best.auc:.3f}).")
    if rule != "one-se":
        raise ValueError(f"tune.selection={rule!r}; allowed: {list(typing.get_args(Selection))}")
    se = best.score.se or 0.0
    within = [a for a in arms if a.auc >= best.auc - se]
    chosen = min(within, key=lambda a: (complexity(a.traits), -a.auc))
    if chosen.name == best.name:
        reason = (f"Chose {chosen.name!r}: it has the highest pooled out-of-fold AUC ({best.auc:.3f}) and "
                  f"no simpler arm comes within one standard error ({se:.3f}) of it.")
    else:
        reason = (f"Chose {chosen.name!r} (out-of-fold AUC {chosen.auc:.3f}): the simplest arm within "
                  f"one standard error ({se:.3f}) of the best arm {best.name!r} ({best.auc:.3f}), "
                  f"since the data cannot tell them apart and fewer trained weights overfit less.")
    return chosen.name, reason


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, level: float) -> Paired | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)  # small-n caveats go in the table note
            t = M.delong_paired_test(y, a, b, level)
    except ValueError:
        return None
    return Paired(t["difference"], t["p"], t.get("ci"))


def select_arm(y: Sequence[int] | np.ndarray, oof: Mapping[str, np.ndarray], arms: Sequence[ArmTraits],
               level: float = 0.95, rule: str = "replicated") -> ArmSelection:
    """The arms table and the first choice (see the module docstring). ``oof``: arm -> pooled OOF
    logits (same case order as ``y``); ``arms``: what selection knows of each arm, in table order
    (a TTA twin has ``tta`` and, as ``base``, its arm without TTA). A failed arm gets no AUC."""
    y = np.asarray(y, int)
    log = WarningLog()
    scores: dict[str, ArmScore] = {}
    for t in arms:
        if t.failed:
            scores[t.name] = ArmScore(None, None, None, None)
            continue
        with log.step(f"OOF AUC ({t.name})"):
            d = M.auc_delong(y, oof[t.name], level)
        scores[t.name] = ArmScore(d["auc"], d["se"], d["ci"], M.roc_points(y, oof[t.name]))
    table = [JudgedArm(t, scores[t.name]) for t in arms]
    live = [a for a in table if not a.traits.failed]
    chosen, reason = first_choice(live, rule)
    best = max(live, key=_rank)
    control = _first(live, lambda a: a.init == "random" and not a.tta)  # the control as trained
    reference = _first(live, lambda a: a.recipe == "reference" and not a.tta)
    by_name = {t.name: t for t in arms}

    def pair(a: ArmTraits, other: ArmTraits | None) -> Paired | None:
        if a.failed or other is None or a.name == other.name:
            return None
        return _paired(y, oof[a.name], oof[other.name], level)

    judged = []
    for a in table:
        t = a.traits
        # against the same recipe without its add-ons, or a TTA twin against its own arm: same patients
        base = by_name.get(t.base) if t.base else None
        vs_base = _paired(y, oof[t.name], oof[base.name], level) if not t.failed and base and not base.failed \
            else None
        judged.append(JudgedArm(t, dataclasses.replace(
            a.score, vs_best=pair(t, best.traits), vs_random=pair(t, control), vs_reference=pair(t, reference),
            vs_base=vs_base)))
    return ArmSelection(level, rule, int(len(y)), int(y.sum()), tuple(judged), best.name,
                        control.name if control else None, reference.name if reference else None,
                        chosen, reason, log.items)


def _first(rows: Sequence[JudgedArm], test: Callable[[ArmTraits], bool]) -> ArmTraits | None:
    return next((a.traits for a in rows if test(a.traits)), None)


def rival(table: Sequence[JudgedArm], chosen: str) -> str | None:
    """The arm ``chosen`` must beat to be kept: the best (pooled OOF AUC) of the arms simpler
    than it; None when none is simpler."""
    me = next(a for a in table if a.name == chosen)
    simpler = [a for a in table if not a.traits.failed and complexity(a.traits) < complexity(me.traits)]
    return max(simpler, key=_rank).name if simpler else None


def rivals(table: Sequence[JudgedArm], chosen: str) -> list[str]:
    """The simpler arms ``chosen`` must beat, from the most complex to the simplest: its best
    simpler arm and its own recipe without its add-on (``base``: the arm without TTA or without
    auxiliary heads), then theirs, down to the simplest. Beating only the nearest rival is not
    enough: an add-on could ride on another's gain (say TTA's) that did not itself replicate."""
    by_name = {a.name: a for a in table}
    found: list[str] = []
    todo = [chosen]
    while todo:
        current = by_name[todo.pop()]
        for other in (rival(table, current.name), current.traits.base):
            if (other and other != chosen and other not in found and other in by_name
                    and not by_name[other].traits.failed):
                found.append(other)
                todo.append(other)
    return sorted(found, key=lambda n: (complexity(by_name[n].traits), by_name[n].auc), reverse=True)


def replicated_choice(y: Sequence[int] | np.ndarray, table: Sequence[JudgedArm], first: str,
                      by_repeat: Mapping[str, Mapping[int, np.ndarray]], failed: Sequence[str] = ()
                      ) -> tuple[str, list[ReplicationCheck]]:
    """Walk ``first``'s rivals (:func:`rivals`) from the most complex to the simplest: the current
    choice is kept past an arm only if it beats that arm in every repeat, else that arm becomes the
    choice, checked against the simpler arms after it. An arm named in ``failed`` (a constant fold
    model in a further repeat) beats nothing and never takes a place (its check says ``failed``).
    Returns (choice, the checks made, in order); ValueError when only failed arms are left."""
    by_name = {a.name: a for a in table}
    chosen, checks = first, []
    for other in rivals(table, first):
        if other in failed or not complexity(by_name[other].traits) < complexity(by_name[chosen].traits):
            continue  # failed in a further deal, or not simpler than the arm now chosen
        check = replication(y, chosen, other, by_repeat)
        if chosen in failed:
            check = dataclasses.replace(check, holds=False, failed=True)
        checks.append(check)
        if not check.holds:
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
                by_repeat: Mapping[str, Mapping[int, np.ndarray]]) -> ReplicationCheck:
    """Does ``chosen`` beat ``other`` in every repeat both ran? (AUC per repeat, and the verdict)."""
    a, b = repeat_aucs(y, by_repeat[chosen]), repeat_aucs(y, by_repeat[other])
    common = sorted(set(a) & set(b))
    diffs = {r: a[r] - b[r] for r in common}
    return ReplicationCheck(chosen, other, common, [a[r] for r in common], [b[r] for r in common],
                            [diffs[r] for r in common], bool(common) and all(d > 0 for d in diffs.values()),
                            failed=False)


def selection_adjusted(fold_auc: Mapping[str, Mapping[str, float | None]], chosen: str, pooled_auc: float
                       ) -> SelectionAdjusted:
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
    return SelectionAdjusted(pooled_auc - bias, pooled_auc, bias, len(gaps), len(fold_auc),
                             "Tibshirani & Tibshirani 2009 (max over arms of each fold's AUC)")


def fit_oof_operating_points(rows: Sequence[ManifestRow], oof: np.ndarray, ecfg: EvaluateConfig
                             ) -> tuple[CalibrationRecord, ThresholdRecord]:
    """Calibrator and thresholds fitted on the pooled OOF logits of all development patients:
    (calibration dict, threshold record) for the checkpoint."""
    pred = Predictions.from_rows(rows, oof, OOF_SPLIT)
    op = fit_operating_points(pred, ecfg, WarningLog())
    return op.calibrator.record(), op.threshold_record()
