"""`fibrosis evaluate`: calibration and operating points fitted on one split, measured on another.

Flow for a trained run:

1. logits of the fit split (``calib`` when the manifest has one, else ``val``) and of
   the reported split (``test``) with the run's best checkpoint;
2. calibrator and thresholds are fitted on the fit split only, then frozen;
3. on the reported split: discrimination (DeLong and patient-clustered bootstrap CIs,
   PR/AP), calibration before/after, operating points, subgroups, Grad-CAM panels;
4. ``RUN/eval/<split>/metrics.json`` + ``predictions.csv`` are written and the
   calibrator and thresholds are stored in the checkpoint for `fibrosis score`.

``evaluate_predictions`` is the pure core (arrays in, an :class:`EvaluationResult` out); the rest is I/O.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fibrosis import artefacts
from fibrosis.evaluate import metrics as M
from fibrosis.evaluate import operating as O
from fibrosis.data.records import require_label
from fibrosis.io import write_csv
from fibrosis.model.calibration import CalibrationRecord, Calibrator, calibrator_from_record, make_calibrator
from fibrosis.model.threshold import FitData, OperatingPointSpec, ThresholdRecord
from fibrosis.numeric import MetricWarning, check_binary, sigmoid
from fibrosis.config import Config, EvaluateConfig, config_to_dict
from fibrosis.data.cache import CacheReader, manifest_hash
from fibrosis.data.manifest import ManifestRow
from fibrosis.evaluate.baseline import baseline_table
from fibrosis.evaluate.checks import (ALL, check_evaluated_split, check_split_isolation, manifest_warning,
                                      resolve_config)
from fibrosis.evaluate.decision import decision_curve
from fibrosis.evaluate.reference import write_reference
from fibrosis.evaluate.result import EvaluationResult, GradcamSummary
from fibrosis.evaluate.subgroups import AGE_BANDS, attribute_values
from fibrosis.evaluate.summary import DataSummary

if TYPE_CHECKING:  # the record's module imports torch, which `import fibrosis` does not need
    from fibrosis.model.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

OOF_FIT = "out-of-fold"  # = fibrosis.evaluate.selection.OOF_SPLIT: fitted by `fibrosis tune`


@dataclasses.dataclass
class Predictions:
    """Model outputs of one split with what evaluation needs from the manifest."""

    split: str
    logits: np.ndarray
    labels: np.ndarray
    patient_keys: list[str]
    rows: list[ManifestRow]

    @classmethod
    def from_rows(cls, rows: Sequence[ManifestRow], logits: Any, split: str) -> "Predictions":
        z = np.asarray(logits, dtype=float).ravel()
        if len(z) != len(rows):
            raise ValueError(f"split {split!r}: {len(rows)} manifest rows but {len(z)} logits")
        labels = []
        for i, r in enumerate(rows):
            labels.append(require_label(r.label, f"split {split!r}, row {i} (patient_key={r.patient_key!r})",
                                        "evaluation needs labelled data"))
        keys = [r.patient_key for r in rows]
        if any(not k for k in keys):
            raise ValueError(f"split {split!r}: {sum(not k for k in keys)} row(s) without patient_key; "
                             "the bootstrap resamples patients and needs one key per image")
        return cls(split, z, np.asarray(labels, dtype=int), keys, list(rows))


class WarningLog:
    """Collects MetricWarnings per step so they end up next to the numbers (and in the log)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always", MetricWarning)
            yield
        for w in rec:
            msg = f"{name}: {w.message}"
            if issubclass(w.category, MetricWarning) and msg not in self.items:
                self.items.append(msg)
                logger.warning("%s", msg)


def _calibration_block(y: np.ndarray, prob: np.ndarray, ecfg: EvaluateConfig,
                       log: WarningLog, label: str) -> M.CalibrationBlock:
    with log.step(f"calibration ({label})"):
        return M.CalibrationBlock(M.reliability_curve(y, prob, ecfg.ece_bins, ecfg.ece_strategy, ecfg.ci_level),
                                  M.brier_score(y, prob), M.calibration_intercept_slope(y, prob, ecfg.ci_level),
                                  M.score_histogram(y, prob))


def _bootstrap(y: np.ndarray, z: np.ndarray, keys: list[str], ecfg: EvaluateConfig, log: WarningLog,
               split: str) -> M.BootstrapAuc:
    """Clustered bootstrap, or an explicit "not reported" record when too few positives make
    it degenerate (tiny test sets): the DeLong interval and every other number still stand."""
    try:
        return M.bootstrap_roc(y, z, keys, n_resamples=ecfg.bootstrap_resamples, level=ecfg.ci_level,
                               seed=ecfg.seed)
    except ValueError as exc:
        log.items.append(f"discrimination ({split}): bootstrap CI not reported: {exc}")
        return M.BootstrapAuc.not_reported(str(exc), level=ecfg.ci_level, n_resamples=ecfg.bootstrap_resamples,
                                           n_patients=len(set(keys)), seed=ecfg.seed)


def _spec(name: str, cut: O.Cutoff) -> OperatingPointSpec:
    # On the probability scale "everyone positive" is 0.0 and "no one" is just above 1.0;
    # finite values keep the threshold JSON-able for the checkpoint and scoring.
    t = cut.threshold
    t = 0.0 if t == -np.inf else float(np.nextafter(1.0, 2.0)) if t == np.inf else t
    return OperatingPointSpec(name, cut.rule, t, cut.sensitivity, cut.specificity)


def choose_thresholds(y: np.ndarray, prob: np.ndarray, ecfg: EvaluateConfig) -> list[OperatingPointSpec]:
    """Youden and target-sensitivity cut-offs on the fit split's calibrated probabilities."""
    return [_spec("youden", O.threshold_youden(y, prob)),
            *(_spec(f"sensitivity_{target:.2f}", O.threshold_for_sensitivity(y, prob, target))
              for target in ecfg.target_sensitivities)]


@dataclasses.dataclass(frozen=True)
class OperatingPoints:
    """Calibrator and thresholds: fitted on a split now, or frozen from the checkpoint."""

    calibrator: Calibrator
    points: list[OperatingPointSpec]  # the first is the default (Youden)
    fit_data: FitData
    frozen: bool = False

    @property
    def split(self) -> str:
        return str(self.fit_data.split)

    def threshold_record(self) -> ThresholdRecord:
        """What the checkpoint stores for `fibrosis score` and for later frozen evaluations."""
        return ThresholdRecord.of(self.points, self.calibrator.method, self.fit_data)


def fit_operating_points(fit: Predictions, ecfg: EvaluateConfig, log: WarningLog) -> OperatingPoints:
    check_binary(fit.labels, fit.logits, score_name=f"{fit.split} logits")
    with log.step(f"calibration fit ({fit.split})"):
        cal = make_calibrator(ecfg.calibration).fit(fit.logits, fit.labels, split=fit.split)
    with log.step(f"thresholds ({fit.split})"):
        points = choose_thresholds(fit.labels, cal.predict(fit.logits), ecfg)
    return OperatingPoints(cal, points, FitData(fit.split, int(len(fit.labels)), int(fit.labels.sum()),
                                                len(set(fit.patient_keys))))


def stored_operating_points(calibration: CalibrationRecord | None, threshold: ThresholdRecord | None,
                            source: str) -> OperatingPoints:
    """The calibrator and thresholds a previous (fitting) evaluation stored, unchanged."""
    if calibration is None or threshold is None:
        raise ValueError(f"{source}: no calibration/threshold stored; run `fibrosis evaluate` without "
                         "--frozen on the training cache first (it fits them on val/calib and stores them)")
    if threshold.points is None:
        raise ValueError(f"{source}: threshold record without 'points'; expected the operating points "
                         "`fibrosis evaluate` stores")
    return OperatingPoints(calibrator_from_record(calibration), threshold.operating_points(), threshold.fit(),
                           frozen=True)


def evaluate_predictions(fit: Predictions, test: Predictions, ecfg: EvaluateConfig,
                         ) -> tuple[EvaluationResult, Calibrator, ThresholdRecord, list[dict[str, Any]]]:
    """Pure core: returns (metrics, fitted calibrator, threshold record, per-case rows)."""
    log = WarningLog()
    return measure(fit_operating_points(fit, ecfg, log), test, ecfg, log)


def measure(op: OperatingPoints, test: Predictions, ecfg: EvaluateConfig, log: WarningLog,
            ) -> tuple[EvaluationResult, Calibrator, ThresholdRecord, list[dict[str, Any]]]:
    """Everything reported on ``test`` with calibrator and thresholds already fixed."""
    y, z = test.labels, test.logits
    check_binary(y, z, score_name=f"{test.split} logits")
    cal, points, method = op.calibrator, op.points, op.calibrator.method
    raw, prob = sigmoid(z), cal.predict(z)
    ops = []
    for p in points:
        with log.step(f"operating point {p.name} ({test.split})"):
            cm = O.confusion(y, prob, p.threshold)
            perf = O.binary_metrics(cm, ecfg.ci_level)
            deploy = (O.predictive_values_at_prevalence(perf.sensitivity, perf.specificity,
                                                        ecfg.deployment_prevalence)
                      if ecfg.deployment_prevalence is not None else None)
        ops.append(O.MeasuredOperatingPoint(p.name, p.rule, p.threshold,
                                            O.ChosenOn(op.split, p.sensitivity, p.specificity), cm,
                                            perf.sensitivity, perf.specificity, perf.ppv, perf.npv, deploy))

    with log.step(f"discrimination ({test.split})"):
        delong = M.DelongAuc.from_json(M.auc_delong(y, z, ecfg.ci_level), "discrimination.delong")
        boot = _bootstrap(y, z, test.patient_keys, ecfg, log, test.split)
        auc_cal = M.auc_delong(y, prob, ecfg.ci_level)["auc"] if method == "isotonic" else None
        roc, pr = M.RocCurve.from_json(M.roc_points(y, z), "discrimination.roc"), M.pr_curve(y, z)
    with log.step(f"decision curve ({test.split})"):
        decision = decision_curve(y, prob, ecfg.deployment_prevalence)
    if ecfg.bootstrap_resamples < 2000:
        log.items.append(f"bootstrap: {ecfg.bootstrap_resamples} resamples (< 2000): CI is coarse")
    with log.step(f"subgroups ({test.split})"):
        attrs = {name: attribute_values(test.rows, name) for name in ecfg.subgroups}
        subgroups = O.subgroup_table(y, z, attrs, min_n=ecfg.min_subgroup_n,
                                     min_positives=ecfg.min_subgroup_positives, level=ecfg.ci_level,
                                     value_order={"age_band": [name for _, _, name in AGE_BANDS]})

    n_pos = int(y.sum())
    result = EvaluationResult(
        split=test.split, fit_split=op.split, frozen=op.frozen,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        evaluate_config=config_to_dict(ecfg),
        data=DataSummary(int(len(y)), n_pos, int(len(y) - n_pos), n_pos / len(y), len(set(test.patient_keys)),
                         op.fit_data),
        discrimination=M.Discrimination("model logit (AUC is unchanged by temperature/Platt calibration)",
                                        delong.auc, delong, boot, auc_cal, roc, pr),
        calibration=M.CalibrationSummary(method, cal.to_dict(), _calibration_block(y, raw, ecfg, log, "before"),
                                         _calibration_block(y, prob, ecfg, log, f"after {method}")),
        operating_points=ops,
        deployment_prevalence=ecfg.deployment_prevalence,
        subgroups=subgroups,
        warnings=log.items,
        decision_curve=decision,
    )
    cases = [{"case": i + 1, "content_hash": r.content_hash,
              "patient_key": test.patient_keys[i], "split": test.split, "label": int(y[i]),
              "logit": float(z[i]), "prob_uncalibrated": float(raw[i]), "prob": float(prob[i]),
              **{f"pred_{p.name}": int(prob[i] >= p.threshold) for p in points},
              **{name: attrs[name][i] for name in attrs}}
             for i, r in enumerate(test.rows)]
    return result, cal, op.threshold_record(), cases


# ------------------------------------------------------------------ I/O adapter


def resolve_fit_split(rows: Sequence[ManifestRow], requested: str) -> str:
    present = {r.split for r in rows}
    if requested == "auto":
        return "calib" if "calib" in present else "val"
    return requested  # "val" or "calib": the config's Literal was checked when it was loaded


@dataclasses.dataclass
class _Job:
    """What one evaluation works on, after every check has passed."""
    run: Path
    cache: Path
    split: str
    frozen: bool
    oof: bool  # a tune checkpoint: calibration and thresholds were fitted out of fold, kept as they are
    ckpt_path: Path
    ckpt: Checkpoint
    model: Any
    device: Any
    cfg: Config
    all_rows: list[ManifestRow]
    idx: list[int]
    fit_split: str | None
    stored: Any  # frozen mode: the calibration and thresholds stored in the checkpoint
    loud: list[str]  # warnings that qualify every number (first in the report)

    @property
    def out(self) -> Path:
        name = f"{artefacts.FROZEN_PREFIX}{self.cache.resolve().name}-{self.split}" if self.frozen else self.split
        return self.run / artefacts.EVAL_DIR / name


def evaluate_run(run: str | Path, cache: str | Path, split: str = "test",
                 cfg: Config | None = None, *, overrides: Sequence[str] = (), frozen: bool = False,
                 gradcam: bool = True, device: str | None = None) -> Path:
    """Evaluate ``run/best.pt`` on ``split`` of ``cache``; returns the metrics.json path.

    Settings: ``cfg`` if given (a full config, used as is), else the run's own resolved
    config from the checkpoint; ``overrides`` (``evaluate.KEY=VALUE``) go on top of either.

    Default mode fits calibration and thresholds on the fit split (val/calib), reports on
    ``split`` (never train, val or the fit split) in ``RUN/eval/<split>/`` and stores them
    in the checkpoint for `fibrosis score`.

    ``frozen=True`` (external validation) applies the calibrator and thresholds already
    stored in the checkpoint, refits nothing and leaves the checkpoint untouched; results
    go to ``RUN/eval/frozen-<cache name>-<split>/``. ``split="all"`` (every manifest row,
    with or without a split column, as in another site's cache) is allowed only then.

    Either way, the evaluated split (and the fit split) is checked against the train/val
    patient keys and image hashes the checkpoint recorded: any overlap is an error.
    """
    job = _prepare(Path(run), Path(cache), split, cfg, overrides, frozen, device)
    result, cal, threshold, cases, test = _measure(job)
    result = _describe(job, result)
    job.out.mkdir(parents=True, exist_ok=True)
    panels = _gradcam(job, test, cal, threshold, result.warnings) \
        if gradcam and job.cfg.evaluate.gradcam_per_kind > 0 else None
    result = dataclasses.replace(result, gradcam=panels)
    result.write(job.out / artefacts.METRICS)
    write_csv(job.out / artefacts.PREDICTIONS, cases, tuple(cases[0]))
    _reference(job, test, cal, result, threshold)
    d = result.discrimination
    logger.info("%s AUC %.3f (DeLong %.3f-%.3f; bootstrap %.3f-%.3f); %s", split, d.auc,
                *(d.delong.ci or [float("nan")] * 2), *(d.bootstrap.ci or [float("nan")] * 2),
                f"checkpoint left unchanged ({'frozen' if frozen else 'tune fitted them out of fold'}) -> {job.out}"
                if frozen or job.oof else f"calibration + thresholds stored in {job.ckpt_path}")
    return job.out / artefacts.METRICS


def _prepare(run: Path, cache: Path, split: str, cfg: Config | None, overrides: Sequence[str],
             frozen: bool, device: str | None) -> _Job:
    """Load the checkpoint once (it serves checks, predictions and Grad-CAM), resolve the
    config and the fit split, and refuse any split that overlaps training."""
    import torch

    from fibrosis.model.checkpoint import load_model
    from fibrosis.model.inference import split_rows

    ckpt_path = run / artefacts.BEST
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ckpt = load_model(ckpt_path, dev)
    cfg = resolve_config(ckpt.config, cfg, overrides)
    all_rows, idx = split_rows(cache, split)
    # `fibrosis tune` fitted calibration + thresholds on the pooled out-of-fold logits of all
    # development patients: they are kept (not refitted on val, which the folds trained on).
    oof = not frozen and ckpt.threshold is not None and ckpt.threshold.chosen_on == OOF_FIT
    stored = (stored_operating_points(ckpt.calibration, ckpt.threshold, str(ckpt_path))
              if frozen or oof else None)
    if oof:
        assert stored is not None  # read just above whenever oof
        stored = dataclasses.replace(stored, frozen=False)
    fit_split = None if frozen or oof else resolve_fit_split(all_rows, cfg.evaluate.fit_split)
    check_evaluated_split(split, fit_split, frozen, stored.split if stored else None)
    if not idx:
        raise ValueError(f"{cache}/manifest.csv: no rows with split={split!r}")
    fit_rows = [r for r in all_rows if r.split == fit_split] if fit_split else None
    loud: list[str] = []
    if ckpt.split_keys:
        check_split_isolation(ckpt.split_keys, split, [all_rows[i] for i in idx], fit_split, fit_rows,
                              ckpt.config.get("split", {}).get("seed"))
    else:  # checkpoint from before train recorded its patients: the manifest hash is all there is
        text = manifest_warning(ckpt.manifest_hash, manifest_hash(cache), split, fit_split)
        if text:
            logger.warning("%s: %s", ckpt_path, text)
            loud.append(text)
    return _Job(run, cache, split, frozen, oof, ckpt_path, ckpt, model, dev, cfg, all_rows, idx, fit_split,
                stored, loud)


def _measure(job: _Job) -> tuple[EvaluationResult, Calibrator, ThresholdRecord, list[dict[str, Any]], Predictions]:
    """Predict, then measure: with the stored calibration (frozen), or fitting it and the
    thresholds on the fit split and storing them in the checkpoint."""
    from fibrosis.model.checkpoint import update_checkpoint
    from fibrosis.model.inference import predict_rows

    reader = CacheReader(job.cache, job.all_rows)

    def predictions(ix: list[int], name: str) -> Predictions:
        rows = [job.all_rows[i] for i in ix]
        return Predictions.from_rows(rows, predict_rows(job.model, reader, ix, 64, job.device), name)

    test = predictions(job.idx, job.split)
    if job.frozen or job.oof:
        logger.info("evaluating %s on %r of %s with the stored calibration and thresholds (%s)",
                    job.run, job.split, job.cache, "frozen" if job.frozen else "fitted out of fold by tune")
        return (*measure(job.stored, test, job.cfg.evaluate, WarningLog()), test)
    logger.info("evaluating %s: fit calibration + thresholds on %r, report on %r", job.run, job.fit_split, job.split)
    assert job.fit_split is not None  # resolved whenever calibration and thresholds are fitted
    fit_idx = [i for i, r in enumerate(job.all_rows) if r.split == job.fit_split]
    if not fit_idx:
        raise ValueError(f"{job.cache}/manifest.csv: no rows with split={job.fit_split!r}")
    result, cal, threshold, cases = evaluate_predictions(predictions(fit_idx, job.fit_split), test, job.cfg.evaluate)
    # Store calibration + thresholds now, so the checkpoint hash in the report is the
    # hash of the file `fibrosis score` will read (it was taken before the rewrite).
    update_checkpoint(job.ckpt_path, calibration=cal.record(), threshold=threshold)
    return result, cal, threshold, cases, test


def _describe(job: _Job, result: EvaluationResult) -> EvaluationResult:
    """The run and data sections of metrics.json; the loud warnings go first."""
    from fibrosis.evaluate.summary import data_summary, run_summary

    data = dataclasses.replace(result.data, provenance=data_summary(job.cache, job.all_rows, job.cfg))
    if job.split == ALL:
        data = data.with_split_method("none: every row of the cache evaluated (external validation)")
    # the loud warnings first: they qualify every number below
    return dataclasses.replace(result, warnings=[*job.loud, *result.warnings], run=run_summary(job.run, job.ckpt),
                               data=data, baseline=baseline_table(job.all_rows, job.split))


def _reference(job: _Job, test: Predictions, cal: Calibrator, result: EvaluationResult,
               threshold: ThresholdRecord) -> None:
    """reference.json beside metrics.json: what `fibrosis monitor` compares new batches with."""
    write_reference(job.out, job.ckpt_path, test.rows, test.labels, cal.predict(test.logits), result, threshold,
                    CacheReader(job.cache, job.all_rows), job.idx)


def _gradcam(job: _Job, test: Predictions, cal: Calibrator, threshold: ThresholdRecord,
             warnings_out: list[str]) -> GradcamSummary | None:
    from fibrosis.model.cam import gradcam_panels

    try:
        return GradcamSummary.from_json(
            gradcam_panels(job.model, job.cache, test, cal.predict(test.logits), threshold.value,
                           job.out, per_kind=job.cfg.evaluate.gradcam_per_kind), "Grad-CAM panels")
    except Exception as exc:  # a figure must not sink the numbers; say so in the report
        logger.exception("Grad-CAM failed")
        warnings_out.append(f"Grad-CAM panels not produced: {type(exc).__name__}: {exc}")
        return None
