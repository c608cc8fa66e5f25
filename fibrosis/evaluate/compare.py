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
from dataclasses import dataclass, replace
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


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """``compare_<B>.json``: the paired DeLong test of two evaluations on the same cases (the
    test's own fields, then its warnings, the two names and, once written, the two folders)."""
    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float | None  # None: variance 0 and the AUCs differ (p is then a degenerate 0)
    p: float
    ci: list[float]
    level: float
    correlation: float | None
    n_pos: int
    n_neg: int
    method: str
    warnings: list[str]  # zero variance, tiny sets: kept next to the numbers
    run_a: str
    run_b: str
    n: int
    evaluation_a: str | None = None
    evaluation_b: str | None = None
    split: str | None = None
    split_b: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "auc_a": self.auc_a, "auc_b": self.auc_b, "difference": self.difference, "se": self.se, "z": self.z,
            "p": self.p, "ci": list(self.ci), "level": self.level, "correlation": self.correlation,
            "n_pos": self.n_pos, "n_neg": self.n_neg, "method": self.method, "warnings": list(self.warnings),
            "run_a": self.run_a, "run_b": self.run_b, "n": self.n}
        if self.evaluation_a is not None:
            out.update(evaluation_a=self.evaluation_a, evaluation_b=self.evaluation_b, split=self.split,
                       split_b=self.split_b)
        return out


def compare_predictions(a: dict[str, tuple[int, float]], b: dict[str, tuple[int, float]],
                        level: float = 0.95, names: tuple[str, str] = ("A", "B")) -> PairedComparison:
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
        t = delong_paired_test(y, [a[k][1] for k in keys], [b[k][1] for k in keys], level)
    # Kept next to the numbers (zero variance, tiny sets), not only in the log.
    notes = [str(w.message) for w in rec if issubclass(w.category, MetricWarning)]
    for msg in notes:
        logger.warning("compare %s vs %s: %s", names[0], names[1], msg)
    return PairedComparison(t["auc_a"], t["auc_b"], t["difference"], t["se"], t["z"], t["p"], t["ci"], t["level"],
                            t["correlation"], t["n_pos"], t["n_neg"], t["method"], notes, names[0], names[1], len(keys))


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test", *, split_b: str | None = None,
                 level: float = 0.95, out: str | Path | None = None) -> PairedComparison:
    """Paired DeLong test of two evaluations, each a run folder (evaluation ``split``, B's ``split_b``)
    or an evaluation folder; writes ``compare_<B>.json`` in A's evaluation folder (or ``out``)."""
    a, b = evaluation_folder(run_a, split), evaluation_folder(run_b, split if split_b is None else split_b)
    names = (evaluation_label(a), evaluation_label(b))
    res = replace(compare_predictions(_load(a), _load(b), level, names), evaluation_a=str(a), evaluation_b=str(b),
                  split=a.name, split_b=b.name)
    path = Path(out) if out else a / f"compare_{_file_label(a, b)}.json"
    write_json(path, res.to_json())
    lvl = int(round(100 * level))
    zstat = "undefined (variance 0)" if res.z is None else f"{res.z:.2f}"
    logger.info("AUC %s %.3f vs %s %.3f; difference %.3f (%d%% CI %.3f to %.3f), z = %s, p = %.4g "
                "(paired DeLong, %d cases, %d positive) -> %s", names[0], res.auc_a, names[1],
                res.auc_b, res.difference, lvl, *res.ci, zstat, res.p, res.n, res.n_pos, path)
    return res


def _file_label(a: Path, b: Path) -> str:
    """B's run name, with its evaluation's name where that differs from A's."""
    if b.parent.name != "eval":
        return b.name
    run = b.parent.parent.name
    return run if b.name == a.name else f"{run}_{b.name}"
