"""An evaluated run for the report: synthetic predictions through the real evaluation code."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fibrosis.config import Config, EvaluateConfig, config_to_dict
from fibrosis.data.records import Preprocessing
from fibrosis.data.synthetic import make_synthetic_cache
from fibrosis.evaluate.run import Predictions, evaluate_predictions
from fibrosis.evaluate.summary import data_summary, run_summary
from fibrosis.model.checkpoint import Checkpoint, Training
from fibrosis.io import read_csv, write_csv


def predictions(n: int, seed: int, split: str) -> Predictions:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.15).astype(int)
    z = 2.0 * (rng.normal(size=n) + 1.8 * y - 2.2)
    rows = [{"patient_key": f"SECRET-PATIENT-{i // 2}", "label": str(y[i]), "content_hash": f"hash{seed}-{i}",
             "sex": "FM"[i % 2], "age": str(25 + i % 60), "view_position": "PA", "manufacturer": "ACME"}
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
    res = dataclasses.replace(res, run=run_summary(run, ckpt),
                              data={**res.data, **data_summary(cache, [dict(r) for r in _rows(cache)], cfg)})
    (run / "eval" / "test").mkdir(parents=True)
    res.write(run / "eval" / "test" / "metrics.json")
    return run


def _rows(cache: Path) -> list[dict[str, str]]:
    return read_csv(cache / "manifest.csv")
