"""`fibrosis tune`: how much of the backbone to fine-tune, answered by patient-level CV.

Composition of two sibling stages, which may not import each other:
fibrosis.train.tune runs every (fold, arm) model and its out-of-fold curves;
fibrosis.evaluate.selection judges the arms (DeLong, the first choice, replication over repeats,
selection-adjusted AUC) and fits calibration and thresholds on the chosen arm's pooled OOF
logits; fibrosis.train.tune.package leaves the deployable checkpoint in ``OUT/best.pt``, which
`evaluate`, `report` and `score` take like any run. ``OUT/tune.json`` holds the arms table the
report shows (:class:`fibrosis.evaluate.tune_record.TuneResult`).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fibrosis import artefacts
from fibrosis.config import Config, config_to_dict
from fibrosis.evaluate.tune_record import ArmTraits, AuxSummary, Paired, ReplicationCheck, TuneArm, TuneResult

if TYPE_CHECKING:
    from fibrosis.evaluate.selection import ArmSelection
    from fibrosis.train.tune.cv import CVResult
    from fibrosis.train.tune.results import ArmResult

logger = logging.getLogger(__name__)


def run_tune(cfg: Config, cache: str | Path, out: str | Path, *, device: str | None = None,
             max_units: int | None = None, progress: bool = True) -> TuneResult | None:
    """Cross-validate, select (replicated over the finalists' repeats), package; returns what
    tune.json records (None when stopped early by ``max_units``; run again to continue)."""
    from fibrosis.evaluate.selection import fit_oof_operating_points, select_arm, selection_adjusted
    from fibrosis.model.checkpoint import TuneSelection, update_checkpoint
    from fibrosis.train.tune.cv import cross_validate
    from fibrosis.train.tune.package import package

    t0 = time.perf_counter()
    cache, out = Path(cache), Path(out)
    dev = device or "cpu"
    cv = cross_validate(cfg, cache, out, device=dev, max_units=max_units, progress=progress)
    if not cv.complete:
        return None
    oof = {r.name: r.oof for r in cv.arms}
    # Each arm's row as training reports it, before the finalists' repeats add to its cost.
    trained = {r.name: r.to_dict(cfg) for r in cv.arms}
    traits = [arm_traits(r, cv.arms) for r in cv.arms]
    sel = select_arm(cv.y, oof, traits, cfg.evaluate.ci_level, cfg.tune.selection)
    logger.debug("first choice, before replication: %s", sel.reason)  # log_table says the final choice
    chosen, reason, checks = _replicate(cfg, cv, sel, out, progress)
    arms = [TuneArm.from_json({**trained[r.name], "base": t.base, **sel.arm(r.name).score.to_json(),
                               # every repeat each arm ran, after the finalists' repeats
                               "repeat_aucs": _repeat_aucs(cv.y, r.by_repeat), **r.total_cost().to_dict(),
                               "failed": r.failed}, f"tune: arm {r.name!r}")
            for r, t in zip(cv.arms, traits)]
    live = {r.name: r.fold_auc_at_epoch() for r in cv.arms if not r.failed}
    adjusted = selection_adjusted(live, chosen, sel.arm(chosen).auc)
    path = package(cfg, cache, out, cv, chosen, device=dev)
    dev_rows = [cv.rows[i] for i in cv.dev]
    calibration, threshold = fit_oof_operating_points(dev_rows, oof[chosen], cfg.evaluate)
    result = TuneResult(
        level=sel.level, rule=sel.rule, n=sel.n, n_pos=sel.n_pos, arms=arms, best=sel.best,
        random_control=sel.random_control, reference=sel.reference, chosen=chosen, reason=reason,
        warnings=sel.warnings,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tune_config=config_to_dict(cfg.tune), arch=cfg.model.arch,
        folds=cfg.tune.folds, repeats=cfg.tune.repeats, finalist_repeats=cfg.tune.finalist_repeats,
        n_dev=len(cv.dev), n_dev_pos=int(cv.y.sum()), n_dev_patients=len({cv.rows[i].patient_key for i in cv.dev}),
        features=cv.feature_cost.to_dict(), final=cfg.tune.final,
        checkpoint=path.name, first_choice=sel.chosen, replication=checks, selection_adjusted=adjusted,
        skipped_arms=cv.ctx.skipped if cv.ctx else {},
        aux=AuxSummary.from_json(cv.ctx.aux_summary(), "tune: aux") if cv.ctx else None,
        minutes_total=round((time.perf_counter() - t0) / 60, 2))
    update_checkpoint(path, calibration=calibration, threshold=threshold,
                      tune_selection=TuneSelection(chosen, reason, adjusted.auc))
    result.write(out / artefacts.TUNE)
    log_table(result)
    return result


def _repeat_aucs(y: np.ndarray, by_repeat: dict[int, np.ndarray]) -> dict[str, float]:
    from fibrosis.evaluate.selection import repeat_aucs

    return {str(r): round(a, 4) for r, a in repeat_aucs(y, by_repeat).items()}


def _replicate(cfg: Config, cv: CVResult, sel: ArmSelection, out: Path, progress: bool
               ) -> tuple[str, str, list[ReplicationCheck]]:
    """The first choice, kept only where it beats, in every repeat, each simpler arm on its path of
    rivals (its best simpler arm and its recipe without its add-on, then theirs, ... down to the
    simplest; these finalists get ``tune.finalist_repeats`` more deals); an arm it fails to beat
    takes its place for the rest of the path. The choice must also match the reference on the mean
    over repeats. Returns (chosen, reason, the checks made)."""
    from fibrosis.evaluate.selection import repeat_aucs, replicated_choice, rivals
    from fibrosis.train.tune.cv import extend_repeats

    first, reason = sel.chosen, sel.reason
    if cfg.tune.selection == "best":
        return first, reason, []
    reference = sel.reference
    chain = rivals(sel.arms, first)
    extend_repeats(cv, list(dict.fromkeys(n for n in (first, *chain, reference) if n)), out, progress=progress)
    by_repeat = {r.name: r.by_repeat for r in cv.arms}  # every finalist's deals, now all run
    # A fold model of a further deal gave constant output: not a model to deploy, nor its TTA twin.
    failed = {r.name for r in cv.arms if r.failed}
    failed |= {a.name for a in sel.arms if a.traits.tta and a.traits.base in failed}
    for name in sorted(failed & {first, *chain}):
        logger.warning("replication: %r failed in a further deal of the folds", name)
    chosen, checks = replicated_choice(cv.y, sel.arms, first, by_repeat, sorted(failed))
    for check in checks:
        aucs = ", ".join(f"{a:.3f} vs {b:.3f}" for a, b in zip(check.chosen_auc, check.rival_auc))
        if check.holds:
            logger.info("replication: %r beats the simpler %r in every repeat (%s)", check.chosen, check.rival, aucs)
        elif check.failed:
            logger.info("replication: %r failed in a further deal: the simpler %r is kept instead",
                        check.chosen, check.rival)
            reason = (f"Chose {check.rival!r}: {check.chosen!r} failed in a further deal of the folds "
                      f"(a fold model with constant output).")
        else:
            logger.info("replication: %r does not beat the simpler %r in every repeat (%s): %r is kept instead",
                        check.chosen, check.rival, aucs, check.rival)
            reason = (f"Chose {check.rival!r}: {check.chosen!r} did not beat this simpler arm in every "
                      f"repeat of the cross-validation (AUC per repeat {aucs}), so its gain did not replicate.")
    if chain and chosen == first:
        reason += (f" It beat each simpler arm on its path ({', '.join(repr(c) for c in chain)}) in every "
                   f"repeat of the cross-validation.")
    elif chain and chosen != chain[-1] and any(c.chosen == chosen for c in checks):
        reason += " It beat each simpler arm after it on that path in every repeat."
    if reference and chosen != reference:
        mine = np.mean(list(repeat_aucs(cv.y, by_repeat[chosen]).values()))
        ref = np.mean([a for r, a in repeat_aucs(cv.y, by_repeat[reference]).items() if r in by_repeat[chosen]])
        if mine < ref:
            logger.warning("the chosen arm %r has a lower OOF AUC than the reference %r over the same repeats "
                           "(%.3f vs %.3f): the reference is kept", chosen, reference, mine, ref)
            reason = (f"Chose the reference {reference!r}: the tool's choice {chosen!r} did not match it on the "
                      f"mean out-of-fold AUC over the same repeats ({mine:.3f} vs {ref:.3f}).")
            chosen = reference
    return chosen, reason, checks


def arm_traits(r: ArmResult, results: Sequence[ArmResult]) -> ArmTraits:
    """What selection needs of an arm, with ``base``: what it is compared with, paired, to say
    whether its add-on helped (a TTA twin's own arm; for an arm with auxiliary heads, the arm with
    the same recipe and none)."""
    from fibrosis.train.tune.tta import TwinResult

    a = r.arm
    base = r.base if isinstance(r, TwinResult) else None
    if a.aux and not isinstance(r, TwinResult):
        base = next((o.name for o in results if not o.arm.aux and not isinstance(o, TwinResult)
                     and _recipe(o) == _recipe(r)), None)
    return ArmTraits(r.name, a.depth, a.lr_ratio, int(a.aux), isinstance(r, TwinResult), a.recipe, a.cfg.init,
                     r.failed, base)


def _recipe(r: ArmResult) -> tuple[object, ...]:
    a = r.arm
    return a.recipe, a.cfg.init, a.cfg.unfreeze, a.lr_ratio, a.arch, a.input_size


def log_table(result: TuneResult) -> None:
    """The arms table in the log: OOF AUC with CI, differences to the reference and to the same
    recipe without add-ons (paired p), AUC per repeat, OOF logit sd, epochs, minutes."""
    lvl = f"{100 * result.level:.4g}%"

    def paired(t: Paired | None) -> str:
        return f"{t.difference:+.3f} (p={t.p:.3f})" if t else "-"

    logger.info("%-20s %-7s %-12s %-20s %-20s %-22s %6s %5s %6s %7s", "arm", "OOF AUC", f"{lvl} CI",
                "vs reference (p)", "vs base (p)", "AUC per repeat", "sd", "epoch", "min", "CPU min")
    for a in result.arms:
        mark = "  <- chosen" if a.name == result.chosen else ""
        if a.failed:
            logger.info("%-20s FAILED: %s%s", a.name, a.failed, mark)
            continue
        s = a.score
        ci = f"{s.ci[0]:.3f}-{s.ci[1]:.3f}" if s.ci else "n/a"
        reps = ", ".join(f"{v:.3f}" for v in a.repeat_aucs.values())
        logger.info("%-20s %-7.3f %-12s %-20s %-20s %-22s %6.2f %5d %6.1f %7.1f%s", a.name, s.auc, ci,
                    paired(s.vs_reference), paired(s.vs_base), reps, a.oof_sd,
                    a.epoch, a.minutes, a.cpu_minutes, mark)
        if a.aux_auc:
            logger.info("%20s auxiliary heads' own OOF AUC: %s", "",
                        ", ".join(f"{k} {v:.2f}" for k, v in a.aux_auc.items()))
    feats = result.features
    if feats:
        logger.info("frozen features and augmented views, shared by the arms of each backbone: %.1f min (%.1f CPU min)",
                    feats["minutes"], feats["cpu_minutes"])
    adj = result.selection_adjusted
    if adj:
        logger.info("chosen %r: pooled OOF AUC %.3f is optimistic (chosen on these predictions); selection-adjusted "
                    "%.3f (Tibshirani & Tibshirani 2009). Paired p-values hold the trained models fixed and are "
                    "not corrected for the number of arms.", result.chosen, adj.pooled_auc, adj.auc)
    logger.info("%s", result.reason)
