"""Inputs of `fibrosis monitor`: an evaluated run's reference and scores files as `score` writes them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fibrosis.evaluate.reference import Reference
from fibrosis.io import file_sha256, write_json
from fibrosis.score.output import META_COLUMNS, RowWriter, meta_path


def reference_summary(n: int = 60) -> dict:
    """The distributions an evaluation records for `monitor` to compare with: n PA images of vendor
    ACME, probabilities uniform, performance with intervals."""
    rng = np.random.default_rng(1)
    return {"categories": {"manufacturer": {"ACME": n}, "model_name": {"unknown": n}, "view_position": {"PA": n},
                           "modality": {"DX": n}, "transfer_syntax": {"1.2.840.10008.1.2.1": n},
                           "sex": {"F": n // 2, "M": n - n // 2}, "age_band": {"40-59": n}},
            "continuous": {k: rng.normal(0.5, 0.05, n).tolist() for k in
                           ("pixel_spacing", "rows", "cols", "img_mean", "img_std", "img_p05", "img_p50", "img_p95")},
            "outcomes": {"n": n, "ok": n, "excluded": 0, "error": 0, "reasons": {}},
            "probabilities": rng.uniform(0, 1, n).tolist(), "positive": {"k": n // 2, "n": n},
            "threshold": {"name": "youden", "value": 0.5},
            "performance": {"auc": 0.8, "auc_ci": [0.7, 0.9], "intercept": 0.0, "intercept_ci": [-0.5, 0.5],
                            "slope": 1.0, "slope_ci": [0.6, 1.4], "ece": 0.05, "ece_ci": [0.02, 0.12],
                            "ece_bins": 10, "ece_strategy": "uniform",
                            "sensitivity": {"value": 0.8, "ci": [0.6, 0.9]},
                            "specificity": {"value": 0.8, "ci": [0.6, 0.9]},
                            "operating_point": "youden", "level": 0.95, "n": n, "n_pos": n // 2},
            "minimums": {"min_n": 30, "min_positives": 5, "level": 0.95}}


def reference_file(n: int = 60, model_id: str = "0" * 16) -> dict:
    """reference.json of an evaluation of n test images: :func:`reference_summary` and what names it."""
    return {**reference_summary(n), "format": 1, "model_id": model_id, "split": "test", "frozen": False, "n": n,
            "created": "2026-12-01T00:00:00+00:00"}


def reference(n: int = 60) -> Reference:
    """:func:`reference_file` as `fibrosis monitor` reads it."""
    return Reference.from_json(reference_file(n), "reference.json")


def evaluated_run(ckpt: Path, n: int = 60) -> Path:
    """``ckpt``'s run folder with the reference an evaluation of n test images would have written."""
    ref = reference_file(n, file_sha256(ckpt)[:16])
    (ckpt.parent / "eval" / "test").mkdir(parents=True)
    write_json(ckpt.parent / "eval" / "test" / "reference.json", ref)
    return ckpt.parent


def scores_file(run: Path, out: Path, n: int = 60, vendor: str = "ACME", **override: str) -> Path:
    """A scores file as `fibrosis score` writes it (and its side file); ``override`` sets cells of row 0."""
    model_id = json.loads((run / "eval" / "test" / "reference.json").read_text())["model_id"]
    rng = np.random.default_rng(3)
    rows, metas = RowWriter(out), RowWriter(meta_path(out), META_COLUMNS)
    for i in range(n):
        p = float(rng.uniform(0.02, 0.98))
        row = {"path": f"/in/{i}.dcm", "status": "ok", "logit_uncalibrated": f"{np.log(p / (1 - p)):.6f}",
               "probability_calibrated": f"{p:.6f}", "decision_fibrosis": int(p >= 0.5), "model_id": model_id,
               "content_hash": f"h{i}",
               "threshold_name": "youden", "threshold": "0.5", "view_position": "PA"}
        row.update(override if i == 0 else {})
        rows.write(row)
        metas.write({"path": row["path"], "scored_at": "2027-01-01T00:00Z", "manufacturer": vendor,
                     "view_position": "PA", "modality": "DX", "transfer_syntax": "1.2.840.10008.1.2.1",
                     "sex": "FM"[i % 2], "age": "50", **{k: f"{rng.normal(0.5, 0.05):.5f}" for k in
                                                          ("img_mean", "img_std", "img_p05", "img_p50", "img_p95")}})
    rows.close(), metas.close()
    return out
