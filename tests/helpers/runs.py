"""An evaluated run for the report: synthetic predictions through the real evaluation code."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fibrosis.config import Config, EvaluateConfig, config_to_dict
from fibrosis.data.synthetic import make_synthetic_cache
from fibrosis.evaluate.run import Predictions, evaluate_predictions
from fibrosis.evaluate.summary import data_summary, run_summary
from fibrosis.io import read_csv, write_csv, write_json


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
    ckpt = {"config": config_to_dict(cfg), "pretrained": pretrained, "arch": "resnet18",
            "weights_info": {"source": "mobilenet_v2-imagenet-features.pth" if pretrained else "none",
                             "sha256": "f" * 64 if pretrained else None},
            "preprocessing": {"input_size": 224}, "best_epoch": 3, "best_val_auc": 0.8,
            "stages": [{"name": "head", "epochs": 2, "lr": 1e-3, "unfreeze": []}],
            "run": {"history": [{"stage": 0, "stage_name": "head", "lr": 1e-3, "val_auc": 0.8}] * 2}}
    res["run"] = run_summary(run, ckpt)
    res["data"].update(data_summary(cache, [dict(r) for r in _rows(cache)], cfg))
    (run / "eval" / "test").mkdir(parents=True)
    write_json(run / "eval" / "test" / "metrics.json", res)
    return run


def _rows(cache: Path) -> list[dict[str, str]]:
    return read_csv(cache / "manifest.csv")
