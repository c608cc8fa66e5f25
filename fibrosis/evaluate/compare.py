"""`fibrosis compare RUN_A RUN_B`: paired DeLong test of two evaluated runs on the same cases.

Both runs must have been evaluated (``RUN/eval/<split>/predictions.csv``) on the same
images: cases are matched by image content hash, and a differing case set or label is
an error, because a "paired" test on different cases is meaningless. The test uses the
model logits (the AUC before any calibration, which temperature/Platt do not change).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis import artefacts
from fibrosis.io import read_csv
from fibrosis.data.records import parse_label
from fibrosis.io import write_json
from fibrosis.evaluate.metrics import delong_paired_test
from fibrosis.numeric import MetricWarning

logger = logging.getLogger(__name__)


def _load(run: Path, split: str) -> dict[str, tuple[int, float]]:
    path = run / "eval" / split / artefacts.PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `fibrosis evaluate --run {run} --split {split}` first")
    out: dict[str, tuple[int, float]] = {}
    for i, row in enumerate(read_csv(path)):
        key = row.get("content_hash", "")
        if not key:
            raise ValueError(f"{path}: row {i + 1} has no content_hash; cases cannot be matched between runs")
        if key in out:
            raise ValueError(f"{path}: content_hash {key[:12]}... appears twice; expected one row per image")
        label = parse_label(row.get("label"))
        if label is None:
            raise ValueError(f"{path}: row {i + 1} has no label; expected 0 or 1")
        out[key] = (label, float(row["logit"]))
    return out


def compare_predictions(a: dict[str, tuple[int, float]], b: dict[str, tuple[int, float]],
                        level: float = 0.95, names: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Pure core: {content_hash: (label, logit)} of two runs -> paired DeLong result."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"runs {names[0]} and {names[1]} were evaluated on different cases: {len(only_a)} only in "
                         f"{names[0]}, {len(only_b)} only in {names[1]} (of {len(a)} / {len(b)}); evaluate both "
                         "on the same cache and split")
    keys = sorted(a)
    y = np.array([a[k][0] for k in keys])
    disagree = int(sum(a[k][0] != b[k][0] for k in keys))
    if disagree:
        raise ValueError(f"{disagree} case(s) have different labels in {names[0]} and {names[1]}; "
                         "were they evaluated against the same labels?")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", MetricWarning)
        res = delong_paired_test(y, [a[k][1] for k in keys], [b[k][1] for k in keys], level)
    # Kept next to the numbers (zero variance, tiny sets), not only in the log.
    res["warnings"] = [str(w.message) for w in rec if issubclass(w.category, MetricWarning)]
    for msg in res["warnings"]:
        logger.warning("compare %s vs %s: %s", names[0], names[1], msg)
    res.update(run_a=names[0], run_b=names[1], n=len(keys))
    return res


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test", *, level: float = 0.95,
                 out: str | Path | None = None) -> dict[str, Any]:
    """Paired DeLong test; writes ``RUN_A/eval/<split>/compare_<RUN_B name>.json`` (or ``out``)."""
    run_a, run_b = Path(run_a), Path(run_b)
    res = compare_predictions(_load(run_a, split), _load(run_b, split), level, (run_a.name, run_b.name))
    res["split"] = split
    path = Path(out) if out else run_a / "eval" / split / f"compare_{run_b.name}.json"
    write_json(path, res)
    lvl = int(round(100 * level))
    zstat = "undefined (variance 0)" if res["z"] is None else f"{res['z']:.2f}"
    logger.info("%s: AUC %s %.3f vs %s %.3f; difference %.3f (%d%% CI %.3f to %.3f), z = %s, p = %.4g "
                "(paired DeLong, %d cases, %d positive) -> %s", split, run_a.name, res["auc_a"], run_b.name,
                res["auc_b"], res["difference"], lvl, *res["ci"], zstat, res["p"], res["n"], res["n_pos"], path)
    return res
