"""`fibrosis tune`: how much of the backbone to fine-tune, answered by patient-level CV.

Composition of two sibling stages, which may not import each other:
fibrosis.train.tune runs every (fold, arm) model and its out-of-fold curves;
fibrosis.evaluate.selection judges the arms (DeLong, the first choice, replication over repeats,
selection-adjusted AUC) and fits calibration and thresholds on the chosen arm's pooled OOF
logits; fibrosis.train.tune.package leaves the deployable checkpoint in ``OUT/best.pt``, which
`evaluate`, `report` and `score` take like any run. ``OUT/tune.json`` holds the arms table the
report shows (:class:`fibrosis.train.tune.record.TuneResult`).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fibrosis import artefacts
from fibrosis.config import Config, config_to_dict
from fibrosis.train.tune.record import TuneResult

logger = logging.getLogger(__name__)


def run_tune(cfg: Config, cache: str | Path, out: str | Path, *, device: str | None = None,
             max_units: int | None = None, progress: bool = True) -> TuneResult | None:
    """Cross-validate, select (replicated over the finalists' repeats), package; returns what
    tune.json records (None when stopped early by ``max_units``; run again to continue)."""
    from fibrosis.evaluate.selection import fit_oof_operating_points, select_arm, selection_adjusted
    from fibrosis.model.checkpoint import update_checkpoint
    from fibrosis.train.tune.cv import cross_validate
    from fibrosis.train.tune.package import package

    t0 = time.perf_counter()
    cache, out = Path(cache), Path(out)
    dev = device or "cpu"
    cv = cross_validate(cfg, cache, out, device=dev, max_units=max_units, progress=progress)
    if not cv.complete:
        return None
    oof = {r.name: r.oof for r in cv.arms}
    meta = {r.name: r.to_dict(cfg) for r in cv.arms}
    for m in meta.values():
        m["base"] = base_arm(m, meta)
    sel = select_arm(cv.y, oof, meta, cfg.evaluate.ci_level, cfg.tune.selection)
    logger.debug("first choice, before replication: %s", sel["reason"])  # log_table says the final choice
    chosen, reason, checks = _replicate(cfg, cv, sel, out, progress)
    rows = {a["name"]: a for a in sel["arms"]}
    by_name = {r.name: r for r in cv.arms}
    for name, r in by_name.items():  # every repeat each arm ran, after the finalists' repeats
        rows[name]["repeat_aucs"] = _repeat_aucs(cv.y, r.by_repeat)
        rows[name].update(r.total_cost().to_dict())
        rows[name]["failed"] = r.failed
    live = {n: r.fold_auc_at_epoch() for n, r in by_name.items() if not r.failed}
    adjusted = selection_adjusted(live, chosen, rows[chosen]["auc"])
    path = package(cfg, cache, out, cv, chosen, device=dev)
    dev_rows = [cv.rows[i] for i in cv.dev]
    calibration, threshold = fit_oof_operating_points(dev_rows, oof[chosen], cfg.evaluate)
    result = TuneResult(
        **{**sel, "chosen": chosen, "reason": reason},
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tune_config=config_to_dict(cfg.tune), arch=cfg.model.arch,
        folds=cfg.tune.folds, repeats=cfg.tune.repeats, finalist_repeats=cfg.tune.finalist_repeats,
        n_dev=len(cv.dev), n_dev_pos=int(cv.y.sum()), n_dev_patients=len({cv.rows[i].patient_key for i in cv.dev}),
        features=cv.feature_cost.to_dict(), final=cfg.tune.final,
        checkpoint=path.name, first_choice=sel["chosen"], replication=checks, selection_adjusted=adjusted,
        skipped_arms=cv.ctx.skipped if cv.ctx else {}, aux=cv.ctx.aux_summary() if cv.ctx else {},
        minutes_total=round((time.perf_counter() - t0) / 60, 2))
    update_checkpoint(path, calibration=calibration, threshold=threshold,
                      tune_selection={"chosen": chosen, "reason": reason,
                                      "selection_adjusted_auc": adjusted["auc"]})
    result.write(out / artefacts.TUNE)
    log_table(result)
    return result


def _repeat_aucs(y: np.ndarray, by_repeat: dict[int, np.ndarray]) -> dict[str, float]:
    from fibrosis.evaluate.selection import repeat_aucs

    return {str(r): round(a, 4) for r, a in repeat_aucs(y, by_repeat).items()}


def _replicate(cfg: Config, cv: Any, sel: dict[str, Any], out: Path, progress: bool
               ) -> tuple[str, str, list[dict[str, Any]]]:
    """The first choice, kept only where it beats, in every repeat, each simpler arm on its path of
    rivals (its best simpler arm and its recipe without its add-on, then theirs, ... down to the
    simplest; these finalists get ``tune.finalist_repeats`` more deals); an arm it fails to beat
    takes its place for the rest of the path. The choice must also match the reference on the mean
    over repeats. Returns (chosen, reason, the checks made)."""
    from fibrosis.evaluate.selection import repeat_aucs, replicated_choice, rivals
    from fibrosis.train.tune.cv import extend_repeats

    first, reason = sel["chosen"], sel["reason"]
    if cfg.tune.selection == "best":
        return first, reason, []
    reference = sel.get("reference")
    chain = rivals(sel["arms"], first)
    extend_repeats(cv, list(dict.fromkeys(n for n in (first, *chain, reference) if n)), out, progress=progress)
    by_repeat = {r.name: r.by_repeat for r in cv.arms}  # every finalist's deals, now all run
    # A fold model of a further deal gave constant output: not a model to deploy, nor its TTA twin.
    failed = {r.name for r in cv.arms if r.failed}
    failed |= {a["name"] for a in sel["arms"] if a.get("tta") and a.get("base_arm") in failed}
    for name in sorted(failed & {first, *chain}):
        logger.warning("replication: %r failed in a further deal of the folds", name)
    chosen, checks = replicated_choice(cv.y, sel["arms"], first, by_repeat, sorted(failed))
    for check in checks:
        aucs = ", ".join(f"{a:.3f} vs {b:.3f}" for a, b in zip(check["chosen_auc"], check["rival_auc"]))
        if check["holds"]:
            logger.info("replication: %r beats the simpler %r in every repeat (%s)", check["chosen"], check["rival"], aucs)
        elif check["failed"]:
            logger.info("replication: %r failed in a further deal: the simpler %r is kept instead",
                        check["chosen"], check["rival"])
            reason = (f"Chose {check['rival']!r}: {check['chosen']!r} failed in a further deal of the folds "
                      f"(a fold model with constant output).")
        else:
            logger.info("replication: %r does not beat the simpler %r in every repeat (%s): %r is kept instead",
                        check["chosen"], check["rival"], aucs, check["rival"])
            reason = (f"Chose {check['rival']!r}: {check['chosen']!r} did not beat this simpler arm in every "
                      f"repeat of the cross-validation (AUC per repeat {aucs}), so its gain did not replicate.")
    if chain and chosen == first:
        reason += (f" It beat each simpler arm on its path ({', '.join(repr(c) for c in chain)}) in every "
                   f"repeat of the cross-validation.")
    elif chain and chosen != chain[-1] and any(c["chosen"] == chosen for c in checks):
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


RECIPE = ("recipe", "init", "unfreeze", "lr_ratio", "arch", "input_size")


def base_arm(arm: dict[str, Any], arms: dict[str, dict[str, Any]]) -> str | None:
    """What an arm is compared with, paired, to say whether its add-on helped: a TTA twin's own
    arm; for an arm with auxiliary heads, the arm with the same recipe and none."""
    if arm.get("tta"):
        return arm.get("base_arm")
    if not arm.get("extras"):
        return None
    return next((n for n, o in arms.items() if not o.get("extras") and not o.get("tta")
                 and all(o[k] == arm[k] for k in RECIPE)), None)


def log_table(result: TuneResult) -> None:
    """The arms table in the log: OOF AUC with CI, differences to the reference and to the same
    recipe without add-ons (paired p), AUC per repeat, OOF logit sd, epochs, minutes."""
    lvl = f"{100 * result.level:.4g}%"
    paired: Callable[[dict[str, Any] | None], str] = (  # noqa: E731
        lambda t: f"{t['difference']:+.3f} (p={t['p']:.3f})" if t else "-")
    logger.info("%-20s %-7s %-12s %-20s %-20s %-22s %6s %5s %6s %7s", "arm", "OOF AUC", f"{lvl} CI",
                "vs reference (p)", "vs base (p)", "AUC per repeat", "sd", "epoch", "min", "CPU min")
    for a in result.arms:
        mark = "  <- chosen" if a["name"] == result.chosen else ""
        if a.get("failed"):
            logger.info("%-20s FAILED: %s%s", a["name"], a["failed"], mark)
            continue
        ci = f"{a['ci'][0]:.3f}-{a['ci'][1]:.3f}" if a["ci"] else "n/a"
        reps = ", ".join(f"{v:.3f}" for v in (a.get("repeat_aucs") or {}).values())
        logger.info("%-20s %-7.3f %-12s %-20s %-20s %-22s %6.2f %5d %6.1f %7.1f%s", a["name"], a["auc"], ci,
                    paired(a.get("vs_reference")), paired(a.get("vs_base")), reps, a.get("oof_sd", float("nan")),
                    a["epoch"], a["minutes"], a["cpu_minutes"], mark)
        if a.get("aux_auc"):
            logger.info("%20s auxiliary heads' own OOF AUC: %s", "",
                        ", ".join(f"{k} {v:.2f}" for k, v in a["aux_auc"].items()))
    feats = result.features
    if feats:
        logger.info("frozen features and augmented views, shared by the arms of each backbone: %.1f min (%.1f CPU min)",
                    feats["minutes"], feats["cpu_minutes"])
    adj = result.selection_adjusted
    if adj:
        logger.info("chosen %r: pooled OOF AUC %.3f is optimistic (chosen on these predictions); selection-adjusted "
                    "%.3f (Tibshirani & Tibshirani 2009). Paired p-values hold the trained models fixed and are "
                    "not corrected for the number of arms.", result.chosen, adj["pooled_auc"], adj["auc"])
    logger.info("%s", result.reason)
