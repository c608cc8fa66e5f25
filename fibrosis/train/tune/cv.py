"""`fibrosis tune`, training side: every (fold, arm) unit of the cross-validation.

For each arm of ``tune.arms`` and each patient-level fold (fibrosis.train.folds) a unit
trains (fibrosis.train.tune.unit); when all folds of an arm are done, its budget is chosen
and its pooled out-of-fold logits kept (fibrosis.train.tune.results). The finalists of the
selection (fibrosis.evaluate.selection) get ``tune.finalist_repeats`` more repeats of the
k-fold CV on new deals (:func:`extend_repeats`), at the budget chosen on the first
``tune.repeats``, so a gain can be checked for whether it replicates.

Resumable: units keep ``done.json`` under ``OUT/cv/<arm>/<fold>/``, arms ``arm.json``.
With ``tune.tta`` every finished arm also gets a test-time-augmentation twin ``<arm>+tta``
(fibrosis.train.tune.tta). Statistics that judge the arms live in fibrosis.evaluate.selection.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from fibrosis import artefacts
from fibrosis.config import Config
from fibrosis.data.cache import CacheReader
from fibrosis.data.manifest import ManifestRow, read_manifest
from fibrosis.io import read_csv, write_csv
from fibrosis.train.aux import aux_targets, choose_aux
from fibrosis.train.aux import describe as describe_aux
from fibrosis.train.folds import Fold, make_folds, near_duplicate_links, patient_groups
from fibrosis.train.tune.arms import Arm, resolve_arms
from fibrosis.train.tune.context import SCHEMA, Context, Cost, UnitRecord, write_json
from fibrosis.train.tune.models import prepare_base
from fibrosis.train.tune.results import ArmResult, by_repeat, failure, finish_arm
from fibrosis.train.probe import log_grid_ends
from fibrosis.train.tune.tta import TwinResult, tta_twin, twin_logits
from fibrosis.train.tune.unit import run_unit
from fibrosis.words import plural

logger = logging.getLogger(__name__)


@dataclass
class CVResult:
    rows: list[ManifestRow]
    dev: list[int]
    y: np.ndarray
    folds: list[Fold]  # every fold dealt: tune.repeats + tune.finalist_repeats repeats
    arms: list[ArmResult]
    complete: bool
    ctx: Context | None = None  # reused by `package` (backbones already built)
    feature_cost: Cost = Cost()  # frozen passes and augmented views, shared by the arms of a backbone

    def base_folds(self) -> list[Fold]:
        """The folds every arm ran (the first ``tune.repeats`` repeats)."""
        n = self.ctx.cfg.tune.repeats if self.ctx else 1
        return [f for f in self.folds if f.repeat < n]


def setup(cfg: Config, cache_dir: Path, out_dir: Path, device: str | torch.device = "cpu"
          ) -> tuple[Context, list[Fold], list[Arm], CacheReader]:
    """Rows, folds (written to / checked against OUT/folds.csv) and arms of a tune run."""
    where = cache_dir / artefacts.MANIFEST
    if not where.is_file():
        raise FileNotFoundError(f"{where}: no manifest (run `fibrosis ingest` and `fibrosis split`)")
    state = out_dir / artefacts.TUNE_STATE
    if out_dir.is_dir() and (out_dir / "cv").is_dir():
        found = json.loads(state.read_text()).get("schema") if state.is_file() else None
        if found != SCHEMA:
            raise ValueError(f"{out_dir}: a tune run of another version (schema {found}; this version writes "
                             f"{SCHEMA}); its units were trained another way: use a new --run folder")
    rows = read_manifest(where, required=("split",), why="run `fibrosis split` first (tune keeps its test split apart)")
    links = near_duplicate_links(cache_dir)
    t = cfg.tune
    folds = make_folds(rows, t.folds, t.repeats + t.finalist_repeats, t.seed, links, str(where))
    table = [{"content_hash": rows[i].content_hash, "patient_key": rows[i].patient_key,
              "repeat": f.repeat, "fold": f.fold} for f in folds for i in f.heldout]
    fpath = out_dir / artefacts.FOLDS
    if fpath.is_file():
        old = read_csv(fpath)
        if [(r["content_hash"], int(r["repeat"]), int(r["fold"])) for r in old] != \
                [(r["content_hash"], r["repeat"], r["fold"]) for r in table]:
            raise ValueError(f"{fpath}: the folds of the run being resumed differ from the folds of {where} "
                             f"now (manifest or tune.folds/repeats/finalist_repeats/seed changed); use a new --run folder")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(fpath, table, ("content_hash", "patient_key", "repeat", "fold"))
    write_json(state, {"schema": SCHEMA})
    dev = sorted({i for f in folds for i in f.heldout})
    y = np.array([rows[i].label for i in dev])
    groups = patient_groups([rows[i].patient_key for i in dev], links)
    ctx = Context(cfg, cache_dir, rows, dev, y, groups, torch.device(device))
    arms = resolve_arms(cfg)
    if any(a.aux for a in arms) and not _aux_setup(ctx):
        why = (f"no auxiliary finding has >= {cfg.train.aux_min_positives} positive development labels "
               f"(train.aux_min_positives; ingest with ingest.findings_column or ingest.aux_label_columns)")
        for a in arms:
            if a.aux:
                logger.warning("arm %s skipped: %s", a.name, why)
                ctx.skipped[a.name] = why
        arms = [a for a in arms if not a.aux]
    return ctx, folds, arms, CacheReader(cache_dir, rows)


def _aux_setup(ctx: Context) -> bool:
    """The auxiliary findings every fold's heads share; False when there are none to learn."""
    names, dropped = choose_aux(ctx.rows, ctx.dev, ctx.cfg.train.aux_min_positives)
    if not names:
        return False
    ctx.aux_names, ctx.aux_dropped = names, dropped
    ctx.aux_y = aux_targets(ctx.rows, ctx.dev, names)
    logger.info("auxiliary findings (%d): %s%s", len(names), describe_aux(names, ctx.aux_y),
                f"; no head (too few labels): {', '.join(dropped)}" if dropped else "")
    return True


def cross_validate(cfg: Config, cache_dir: str | Path, out_dir: str | Path, *, device: str = "cpu",
                   max_units: int | None = None, progress: bool = True) -> CVResult:
    """Run (or resume) every (fold, arm) unit of the first ``tune.repeats`` repeats;
    ``max_units`` stops after that many new units."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    torch.manual_seed(cfg.tune.seed)
    ctx, folds, arms, reader = setup(cfg, cache_dir, out_dir, device)
    base = [f for f in folds if f.repeat < cfg.tune.repeats]
    logger.info("tune: %d development rows (%d positive) in %d x %d folds; test/calib untouched; arms: %s",
                len(ctx.dev), int(ctx.y.sum()), cfg.tune.repeats, cfg.tune.folds, ", ".join(a.name for a in arms))
    total = len(arms) * len(base)
    done_units = sum((out_dir / "cv" / a.name / f.name / artefacts.UNIT_DONE).is_file() for a in arms for f in base)
    bar = tqdm(total=total, initial=done_units, desc="tune fold x arm", unit="unit", disable=not progress)
    results: list[ArmResult] = []
    ran, complete, feat = 0, True, Cost()
    try:
        for arm in arms:
            arm_dir = out_dir / "cv" / arm.name
            if (arm_dir / artefacts.ARM_RESULT).is_file():
                results.append(ArmResult.read(arm, arm_dir / artefacts.ARM_RESULT))
                _add_twin(ctx, results, base, reader, out_dir, arms)
                continue
            records = []
            for fold in base:
                unit = arm_dir / fold.name
                if not (unit / artefacts.UNIT_DONE).is_file():
                    if max_units is not None and ran >= max_units:
                        complete = False
                        break
                    feat += prepare_base(ctx, arm, arms, reader)
                    bar.set_postfix_str(f"{arm.name} {fold.name}")
                    records.append(run_unit(ctx, arm, fold, unit))
                    ran += 1
                    bar.update(1)
                else:
                    records.append(UnitRecord.read(unit / artefacts.UNIT_DONE))
            if not complete:
                break
            res = finish_arm(ctx, arm, records, arm_dir)
            results.append(res)
            # a recipe-train arm has no shared epoch budget: each fold stopped early on its own
            when = "early stopping per fold" if arm.recipe == "train" else f"at epoch {res.epoch}"
            logger.info("arm %-16s OOF AUC %.3f %s, OOF logit sd %.2f (%s); %.1f min", arm.name,
                        res.curve[res.epoch]["oof_auc"], when, res.oof_sd(), arm.describe(cfg), res.cost.wall / 60)
            _add_twin(ctx, results, base, reader, out_dir, arms)
    finally:
        bar.close()
    # The fibrosis probes of the folds run now (key: backbone, fold, is-the-reference); not the aux heads'
    log_grid_ends([p for k, p in ctx.probes.items() if len(k) == 3 and k[2] is False], cfg.tune.probe_c)
    if not complete:
        logger.info("stopping after %s as asked; run tune again to continue", plural(ran, "new unit"))
    return CVResult(ctx.rows, ctx.dev, ctx.y, folds, results, complete, ctx, feat)


def _add_twin(ctx: Context, results: list[ArmResult], folds: Sequence[Fold], reader: CacheReader,
              out_dir: Path, arms: Sequence[Arm]) -> None:
    """tune.tta: the last arm's test-time-augmentation twin goes right after it (not the random-init
    control's: it is judged as trained)."""
    if not ctx.cfg.tune.tta or results[-1].arm.cfg.init == "random":
        return
    twin = tta_twin(ctx, results[-1], folds, reader, out_dir, arms)
    results.append(twin)
    logger.info("arm %-16s with TTA: %.1f s more", twin.arm.name, twin.tta_cost.wall)


def extend_repeats(cv: CVResult, names: Sequence[str], out_dir: str | Path, *, progress: bool = True) -> None:
    """Run the repeats beyond ``tune.repeats`` for the arms ``names`` (finalists; a TTA twin brings
    its arm) at their chosen budget, and add each repeat's pooled OOF logits to their results."""
    ctx = cv.ctx
    if ctx is None:
        raise ValueError("extend_repeats needs a CVResult from cross_validate (with its context)")
    out_dir = Path(out_dir)
    cfg = ctx.cfg
    extra = [f for f in cv.folds if f.repeat >= cfg.tune.repeats]
    if not extra:
        return
    by_name = {r.name: r for r in cv.arms}
    reader = CacheReader(ctx.cache_dir, ctx.rows)
    wanted = {n for n in names if n in by_name}
    plain = {r.base if isinstance(r, TwinResult) else r.name for r in (by_name[n] for n in wanted)}
    for name in [r.name for r in cv.arms if r.name in plain]:  # in table order
        res = by_name[name]
        if all(f.repeat in res.by_repeat for f in extra):
            continue
        # The budget is the one chosen on the first repeats: a run of that many epochs.
        budget = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, max_epochs=res.epoch,
                                                                   min_epochs=min(cfg.tune.min_epochs, res.epoch)))
        sub = dataclasses.replace(ctx, cfg=budget)
        arms = [r.arm for r in cv.arms if not isinstance(r, TwinResult)]
        records = []
        for fold in tqdm(extra, desc=f"repeats of {name}", disable=not progress):
            unit = out_dir / "cv" / name / fold.name
            cv.feature_cost += prepare_base(ctx, res.arm, arms, reader)  # every epoch's views: others may need more
            records.append(run_unit(sub, res.arm, fold, unit))
            for f in unit.glob("epoch-*.pt"):  # repeats judge; only the first repeats' models deploy
                if f.name != f"epoch-{res.epoch}.pt":
                    f.unlink()
            (unit / artefacts.UNIT_STATE).unlink(missing_ok=True)
        res.repeat_cost = Cost.of(records)
        why = failure(records, res.epoch)
        if why and not res.failed:
            res.failed = f"in a finalist repeat: {why}"
        res.by_repeat.update(by_repeat(ctx, records, res.epoch))
        res.write(out_dir / "cv" / name / artefacts.ARM_RESULT, cfg)
        logger.info("arm %-16s OOF AUC per repeat: %s", name, ", ".join(
            f"{float(roc_auc_score(ctx.y, z)):.3f}" for _, z in sorted(res.by_repeat.items())))
    for name in wanted - plain:  # the twins: their arm's new fold models, scored with TTA
        twin = by_name[name]
        assert isinstance(twin, TwinResult)  # the wanted names that are not arms' own
        if all(f.repeat in twin.by_repeat for f in extra):
            continue
        twin_logits(ctx, twin, by_name[twin.base], extra, reader, out_dir, [r.arm for r in cv.arms])
