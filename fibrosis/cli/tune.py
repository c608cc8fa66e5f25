"""`fibrosis tune`: how much of the backbone to fine-tune, answered by patient-level CV.

Composition of the stages (this is the layer allowed to see all of them):
fibrosis.train.tune runs every (fold, arm) model and its out-of-fold curves;
fibrosis.evaluate.selection judges the arms (DeLong, one-SE rule) and fits calibration
and thresholds on the chosen arm's pooled OOF logits; fibrosis.train.tune.package leaves
the deployable checkpoint in ``OUT/best.pt``, which `evaluate`, `report` and `score` take
like any run. ``OUT/tune.json`` holds the arms table the report shows.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from fibrosis.config import Config, config_to_dict
from fibrosis.io import write_json

logger = logging.getLogger(__name__)

TUNE_FILE = "tune.json"


def run_tune(cfg: Config, cache: str | Path, out: str | Path, *, device: str | None = None,
             max_units: int | None = None, progress: bool = True) -> dict[str, Any] | None:
    """Cross-validate, select, package; returns the tune.json content (None when stopped early
    by ``max_units``; run again to continue)."""
    from fibrosis.evaluate.selection import fit_oof_operating_points, select_arm
    from fibrosis.model.checkpoint import update_checkpoint
    from fibrosis.train.tune import cross_validate, package

    t0 = time.perf_counter()
    cache, out = Path(cache), Path(out)
    dev = device or "cpu"
    cv = cross_validate(cfg, cache, out, device=dev, max_units=max_units, progress=progress)
    if not cv.complete:
        return None
    oof = {r.arm.name: r.oof for r in cv.arms}
    meta = {r.arm.name: r.to_dict() for r in cv.arms}
    for m in meta.values():
        m["base"] = base_arm(m, meta)
    sel = select_arm(cv.y, oof, meta, cfg.evaluate.ci_level, cfg.tune.selection)
    logger.info("%s", sel["reason"])
    path = package(cfg, cache, out, cv, sel["chosen"], device=dev)
    dev_rows = [cv.rows[i] for i in cv.dev]
    calibration, threshold = fit_oof_operating_points(dev_rows, oof[sel["chosen"]], cfg.evaluate)
    result = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "tune_config": config_to_dict(cfg.tune), "arch": cfg.model.arch,
              "folds": cfg.tune.folds, "repeats": cfg.tune.repeats,
              "n_dev": len(cv.dev), "n_dev_pos": int(cv.y.sum()),
              "n_dev_patients": len({cv.rows[i]["patient_key"] for i in cv.dev}),
              "feature_seconds": round(cv.feature_seconds, 1), "final": cfg.tune.final,
              "checkpoint": path.name, **sel,
              "skipped_arms": cv.ctx.skipped if cv.ctx else {}, "aux": cv.ctx.aux_summary() if cv.ctx else {},
              "minutes_total": round((time.perf_counter() - t0) / 60, 2)}
    update_checkpoint(path, calibration=calibration, threshold=threshold,
                      tune_selection={"chosen": sel["chosen"], "reason": sel["reason"]})
    write_json(out / TUNE_FILE, result)
    log_table(result)
    return result


RECIPE = ("init", "unfreeze", "lr_ratio", "arch", "input_size")


def base_arm(arm: dict[str, Any], arms: dict[str, dict[str, Any]]) -> str | None:
    """What an arm is compared with, paired, to say whether its add-on helped: a TTA twin's own
    arm; for an arm with auxiliary heads, the arm with the same recipe and none."""
    if arm.get("tta"):
        return arm.get("base_arm")
    if not arm.get("extras"):
        return None
    return next((n for n, o in arms.items() if not o.get("extras") and not o.get("tta")
                 and all(o[k] == arm[k] for k in RECIPE)), None)


def log_table(result: dict[str, Any]) -> None:
    """The arms table in the log: OOF AUC with CI, differences to random init and to the same
    recipe without add-ons (paired p), epochs, minutes."""
    lvl = f"{100 * result['level']:.4g}%"
    paired = lambda t: f"{t['difference']:+.3f} (p={t['p']:.3f})" if t else "-"  # noqa: E731
    logger.info("%-18s %-7s %-12s %-20s %-20s %5s %6s", "arm", "OOF AUC", f"{lvl} CI", "vs random (p)",
                "vs base (p)", "epoch", "min")
    for a in result["arms"]:
        ci = f"{a['ci'][0]:.3f}-{a['ci'][1]:.3f}" if a["ci"] else "n/a"
        logger.info("%-18s %-7.3f %-12s %-20s %-20s %5d %6.1f%s", a["name"], a["auc"], ci, paired(a.get("vs_random")),
                    paired(a.get("vs_base")), a["epoch"], a["minutes"],
                    "  <- chosen" if a["name"] == result["chosen"] else "")
        if a.get("aux_auc"):
            logger.info("%18s auxiliary heads' own OOF AUC: %s", "",
                        ", ".join(f"{k} {v:.2f}" for k, v in a["aux_auc"].items()))
    logger.info("%s", result["reason"])
