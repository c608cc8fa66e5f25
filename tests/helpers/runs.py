"""Evaluated runs for the report: synthetic predictions through the real evaluation code, as
`fibrosis train` + `evaluate` leave them (:func:`make_run`) and as `fibrosis tune` + `evaluate`
do (:func:`make_tune_run`: calibration and thresholds fitted out of fold, tune.json beside); and
folders of runs for `fibrosis runs` (:func:`hand_evaluation`, :func:`save_run_checkpoint`,
:func:`write_evaluation`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fibrosis.config import Config, EvaluateConfig, config_to_dict
from fibrosis.data.manifest import ManifestRow, read_manifest
from fibrosis.data.records import Preprocessing
from fibrosis.data.synthetic import make_synthetic_cache
from fibrosis.evaluate.baseline import baseline_table
from fibrosis.evaluate.run import Predictions, WarningLog, evaluate_predictions, measure, stored_operating_points
from fibrosis.evaluate.selection import fit_oof_operating_points, select_arm
from fibrosis.evaluate.summary import CacheProvenance, SplitCounts, data_summary, run_summary
from fibrosis.model.checkpoint import Checkpoint, Training, load_checkpoint, save_checkpoint
from helpers.manifest import row
from fibrosis.io import write_csv


def predictions(n: int, seed: int, split: str) -> Predictions:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.15).astype(int)
    z = 2.0 * (rng.normal(size=n) + 1.8 * y - 2.2)
    rows = [row(**{"patient_key": f"SECRET-PATIENT-{seed}-{i // 2}", "label": str(y[i]), "content_hash": f"hash{seed}-{i}",
             "sex": "FM"[i % 2] if i % 17 else "", "age": str(25 + i % 60) if i % 13 else "",
             "view_position": "AP" if i % 11 == 0 else "PA", "manufacturer": "ACME", "split": split})
            for i in range(n)]
    return Predictions.from_rows(rows, z, split)


def make_run(tmp_path: Path, pretrained: bool) -> Path:
    """An evaluated run as `report` reads it: metrics of synthetic predictions (300 val, 300 test),
    a synthetic cache with two rejects whose paths hold a patient name."""
    cache = make_synthetic_cache(tmp_path / "cache", n=40, size=32)
    write_csv(cache / "rejects.csv", [
        {"path": "/data/incoming/Doe^John/IM0001.dcm", "kind": "excluded",
         "reason": "/data/incoming/Doe^John/IM0001.dcm: (0018,5101) ViewPosition='LL'; lateral views excluded"},
        {"path": "/data/incoming/x.dcm", "kind": "error", "reason": "unsupported transfer syntax"}],
        ("path", "kind", "reason", "transfer_syntax"))
    cfg = Config(evaluate=EvaluateConfig(bootstrap_resamples=300, deployment_prevalence=0.015,
                                         data_source="synthetic test images"))
    res, *_ = evaluate_predictions(predictions(300, 6, "val"), predictions(300, 7, "test"), cfg.evaluate)
    run = tmp_path / "runs" / "my-run"
    ckpt = Checkpoint(
        weights={}, config=config_to_dict(cfg), arch="resnet18", pretrained=pretrained,
        weights_info={"source": "mobilenet_v2-imagenet-features.pth" if pretrained else "none",
                      "sha256": "f" * 64 if pretrained else None},
        preprocessing=Preprocessing(224, 1, 0.449, 0.226, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                    "rgb-stem", "area"), best_epoch=3, best_val_auc=0.8,
        stages=[{"name": "head", "epochs": 2, "lr": 1e-3, "unfreeze": []}],
        training=Training(optimizer={}, scheduler={}, stage=0, stage_name="head", epoch=2, rng={}, rng_per_rank=[],
                          run={"history": [{"stage": 0, "stage_name": "head", "lr": 1e-3, "val_auc": 0.8}] * 2}))
    val, test = predictions(300, 6, "val"), predictions(300, 7, "test")
    res = dataclasses.replace(res, run=run_summary(run, ckpt), baseline=baseline_table(val.rows + test.rows, "test"),
                              data=dataclasses.replace(
                                  res.data, provenance=data_summary(cache, _rows(cache), cfg)))
    (run / "eval" / "test").mkdir(parents=True)
    res.write(run / "eval" / "test" / "metrics.json")
    return run


ARMS = {"reference": {"depth": 0, "lr_ratio": 1.0, "recipe": "reference", "describe": "scikit-learn probe"},
        "head-only": {"depth": 0, "lr_ratio": 1.0, "recipe": "lp-ft", "describe": "linear probe"},
        "last1": {"depth": 1, "lr_ratio": 0.1, "recipe": "lp-ft", "describe": "probe, then the last block"}}


def make_tune_run(tmp_path: Path) -> Path:
    """A run as `fibrosis tune` then `fibrosis evaluate` leave it: three arms' pooled out-of-fold
    logits judged by :func:`select_arm`, calibration and thresholds fitted on the chosen arm's OOF
    logits, applied unchanged to the test split; tune.json beside metrics.json."""
    from fibrosis.evaluate.tune_record import ArmTraits, SelectionAdjusted, TuneResult

    from helpers.records import tune_arm, tune_result

    ecfg = EvaluateConfig(bootstrap_resamples=300, deployment_prevalence=0.015, data_source="synthetic tune images")
    train, val, test = predictions(160, 11, "train"), predictions(60, 12, "val"), predictions(120, 13, "test")
    dev_rows, y = train.rows + val.rows, np.concatenate([train.labels, val.labels])
    rng = np.random.default_rng(5)
    oof = {name: 2.0 * (rng.normal(size=len(y)) + k * y - 2.2) for k, name in ((0.8, "reference"), (1.0, "head-only"),
                                                                              (1.3, "last1"))}
    table = select_arm(y, oof, [ArmTraits(k, v["depth"], v["lr_ratio"], recipe=v["recipe"]) for k, v in ARMS.items()],
                       rule="best")
    arms = [tune_arm(a, describe=ARMS[a.name]["describe"], epoch=3, minutes=0.5, cpu_minutes=1.0,
                     repeat_aucs={"0": a.auc}) for a in table.arms]
    cal, threshold = fit_oof_operating_points(dev_rows, oof[table.chosen], ecfg)
    stored = dataclasses.replace(stored_operating_points(cal, threshold, "best.pt"), frozen=False)
    res, *_ = measure(stored, test, ecfg, WarningLog())
    cfg = Config(evaluate=ecfg)
    ckpt = Checkpoint(
        weights={}, config=config_to_dict(cfg), arch="resnet18", pretrained=True,
        weights_info={"source": "resnet18-imagenet.pth", "file": "resnet18-imagenet.pth", "sha256": "e" * 64},
        preprocessing=Preprocessing(224, 1, 0.449, 0.226, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                    "rgb-stem", "area"), best_epoch=3, best_val_auc=None,
        preset=f"tune: arm {table.chosen!r}, 3 fine-tuning epoch(s), 5 fold models, mean logit",
        stages=[{"name": "linear probe", "epochs": 0}, {"name": "finetune", "epochs": 3, "lr": 1e-4,
                                                        "unfreeze": ["layer4"]}])
    run = tmp_path / "runs" / "tuned"
    all_rows = dev_rows + test.rows
    res = dataclasses.replace(res, run=run_summary(run, ckpt), baseline=baseline_table(all_rows, "test"),
                              data=dataclasses.replace(res.data, provenance=data_summary(tmp_path / "no-cache", all_rows,
                                                                                         cfg)))
    (run / "eval" / "test").mkdir(parents=True)
    res.write(run / "eval" / "test" / "metrics.json")
    pooled = table.arms[-1].auc
    t: TuneResult = tune_result(
        level=table.level, rule=table.rule, n=table.n, n_pos=table.n_pos, arms=arms, best=table.best,
        random_control=table.random_control, reference=table.reference, chosen=table.chosen, reason=table.reason,
        warnings=table.warnings,
        n_dev=len(y), n_dev_pos=int(y.sum()), n_dev_patients=len({r.patient_key for r in dev_rows}),
        selection_adjusted=SelectionAdjusted(pooled - 0.02, pooled, 0.02, 5, len(arms), "Tibshirani & Tibshirani 2009"))
    t.write(run / "tune.json")
    return run


def _rows(cache: Path) -> list[ManifestRow]:
    return read_manifest(cache / "manifest.csv")


# ------------------------------------------------------------------ folders of runs (`fibrosis runs`)

# A test split whose AUC is counted by hand: 14 of the 16 (positive, negative) pairs ordered right.
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
LOGITS = [-2.0, -1.0, 0.0, 1.5, 0.5, 1.0, 3.0, 4.0]
AUC = 0.875


def tiny_predictions(labels: list[int], logits: list[float], split: str) -> Predictions:
    rows = [row(patient_key=f"{split}-p{i}", label=v, split=split) for i, v in enumerate(labels)]
    return Predictions.from_rows(rows, logits, split)


def hand_evaluation(manifest_sha256: str = "ab" * 32) -> tuple:
    """(EvaluationResult, per-case rows) of :data:`LOGITS` on the test split, Platt-calibrated on a
    val split of 8, through the real evaluation code (200 bootstrap resamples)."""
    fit = tiny_predictions(LABELS, [-2.0, -1.0, 0.5, 1.0, -0.5, 1.5, 2.0, 3.0], "val")
    res, _, _, cases = evaluate_predictions(fit, tiny_predictions(LABELS, LOGITS, "test"),
                                            EvaluateConfig(bootstrap_resamples=200))
    counts = SplitCounts(n=8, n_pos=sum(LABELS), prevalence=sum(LABELS) / 8, n_patients=8)
    provenance = CacheProvenance(source="hand-made", labels="labels.csv column label", total=counts,
                                 splits={"test": counts}, split_method="hand-made", exclusions=[], n_excluded=0,
                                 qa=None, manifest_sha256=manifest_sha256, cache={})
    return dataclasses.replace(res, data=dataclasses.replace(res.data, provenance=provenance)), cases


def save_run_checkpoint(run: Path, *, arch: str = "resnet18", pretrained: bool = True, input_size: int = 224,
                        manifest_hash: str = "") -> Path:
    """RUN/best.pt: a checkpoint record without weights, as `fibrosis runs` reads it."""
    ckpt = Checkpoint(
        weights={}, config=config_to_dict(Config()), arch=arch, pretrained=pretrained,
        weights_info={"source": "imagenet:resnet18-f37072fd.pth" if pretrained else "none",
                      "sha256": "f" * 64 if pretrained else None},
        preprocessing=Preprocessing(input_size, 1, 0.449, 0.226, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                    "rgb-stem", "area"), manifest_hash=manifest_hash)
    return save_checkpoint(run / "best.pt", ckpt)


def write_evaluation(run: Path, result, name: str | None = None, *, created: str, **fields) -> Path:
    """RUN/eval/<name>/metrics.json of ``result`` dated ``created`` (top-level ``fields`` replaced),
    its run section the model of RUN/best.pt."""
    result = dataclasses.replace(result, created=created, run=run_summary(run, load_checkpoint(run / "best.pt")),
                                 **fields)
    folder = run / "eval" / (name or result.split)
    folder.mkdir(parents=True, exist_ok=True)
    result.write(folder / "metrics.json")
    return folder / "metrics.json"
