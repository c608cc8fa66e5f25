"""`fibrosis compare A B`: paired DeLong test of two evaluations on the same cases.

An evaluation is a folder holding ``predictions.csv``: ``RUN/eval/<split>/`` of `fibrosis evaluate`,
or ``RUN/eval/frozen-<cache>-<split>/`` of `evaluate --frozen` (external images). Each side is given
as that folder, or as a run folder and the evaluation's name. Cases are matched by image content
hash, and a differing case set or label is an error, because a "paired" test on different cases is
meaningless. The test uses the model logits (the AUC before any calibration, which
temperature/Platt do not change).
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
from fibrosis.words import plural

logger = logging.getLogger(__name__)


def evaluation_folder(path: str | Path, name: str = "test") -> Path:
    """The evaluation ``path`` names: ``path`` itself when it holds predictions.csv, else the run
    folder's ``eval/<name>/``; an error that lists the run's evaluations when neither is there."""
    path = Path(path)
    if (path / artefacts.PREDICTIONS).is_file():
        return path
    folder = path / "eval" / name
    if (folder / artefacts.PREDICTIONS).is_file():
        return folder
    found = sorted(p.parent.name for p in (path / "eval").glob(f"*/{artefacts.PREDICTIONS}"))
    hint = (f"its evaluations: {', '.join(found)} (name one with --split)" if found else
            f"no evaluation there: run `fibrosis evaluate --run {path}` first (--frozen for external images)")
    raise FileNotFoundError(f"{folder / artefacts.PREDICTIONS}: not found, nor {path / artefacts.PREDICTIONS}; "
                            f"expected a run folder or an evaluation folder; {hint}")


def evaluation_label(folder: Path) -> str:
    """``<run>/<evaluation>`` for RUN/eval/NAME, else the folder's name."""
    return f"{folder.parent.parent.name}/{folder.name}" if folder.parent.name == "eval" else folder.name


def _load(folder: Path) -> dict[str, tuple[int, float]]:
    path = folder / artefacts.PREDICTIONS
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
        raise ValueError(f"{names[0]} and {names[1]} were evaluated on different cases: {len(only_a)} only in "
                         f"{names[0]}, {len(only_b)} only in {names[1]} (of {len(a)} / {len(b)}, matched by image "
                         "content hash); a paired test needs both evaluated on the same cache and split")
    keys = sorted(a)
    y = np.array([a[k][0] for k in keys])
    disagree = int(sum(a[k][0] != b[k][0] for k in keys))
    if disagree:
        raise ValueError(f"{plural(disagree, 'case')} with different labels in {names[0]} and {names[1]}; "
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


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test", *, split_b: str | None = None,
                 level: float = 0.95, out: str | Path | None = None) -> dict[str, Any]:
    """Paired DeLong test of two evaluations, each a run folder (evaluation ``split``, B's ``split_b``)
    or an evaluation folder; writes ``compare_<B>.json`` in A's evaluation folder (or ``out``)."""
    a, b = evaluation_folder(run_a, split), evaluation_folder(run_b, split if split_b is None else split_b)
    names = (evaluation_label(a), evaluation_label(b))
    res = compare_predictions(_load(a), _load(b), level, names)
    res.update(evaluation_a=str(a), evaluation_b=str(b), split=a.name, split_b=b.name)
    path = Path(out) if out else a / f"compare_{_file_label(a, b)}.json"
    write_json(path, res)
    lvl = int(round(100 * level))
    zstat = "undefined (variance 0)" if res["z"] is None else f"{res['z']:.2f}"
    logger.info("AUC %s %.3f vs %s %.3f; difference %.3f (%d%% CI %.3f to %.3f), z = %s, p = %.4g "
                "(paired DeLong, %d cases, %d positive) -> %s", names[0], res["auc_a"], names[1],
                res["auc_b"], res["difference"], lvl, *res["ci"], zstat, res["p"], res["n"], res["n_pos"], path)
    return res


def _file_label(a: Path, b: Path) -> str:
    """B's run name, with its evaluation's name where that differs from A's."""
    if b.parent.name != "eval":
        return b.name
    run = b.parent.parent.name
    return run if b.name == a.name else f"{run}_{b.name}"
