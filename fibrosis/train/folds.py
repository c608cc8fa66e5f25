"""Patient-level, label-stratified k-fold over the development patients (train + val).

The test split (and calib, when present) is never dealt into a fold: `fibrosis tune`
selects on out-of-fold predictions of development patients only, and the test split stays
as untouched as it is for `fibrosis train`. Near-duplicate images of different patient
keys (``cache/near_duplicates.csv``, written by `fibrosis split`) are merged into one
group, as `split` does, so the same lungs cannot be trained on and held out.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fibrosis import artefacts
from fibrosis.data.manifest import ManifestRow
from fibrosis.data.split import group_roots
from fibrosis.io import read_csv

logger = logging.getLogger(__name__)

DEV_SPLITS = ("train", "val")  # development data; test and calib are never in a fold


@dataclass(frozen=True)
class Fold:
    """One (repeat, fold): manifest row indices trained on and held out."""

    repeat: int
    fold: int
    train: tuple[int, ...]
    heldout: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"r{self.repeat}-f{self.fold}"


def repeat_of(fold_name: str) -> int:
    """The repeat of a :attr:`Fold.name` (``r1-f3`` -> 1)."""
    m = re.fullmatch(r"r(\d+)-f-?\d+", fold_name)
    if m is None:
        raise ValueError(f"fold name {fold_name!r}; expected r<repeat>-f<fold>")
    return int(m.group(1))


def dev_indices(rows: Sequence[ManifestRow], where: str = artefacts.MANIFEST) -> list[int]:
    """Rows of the development patients; refuses a development row without a label."""
    idx = [i for i, r in enumerate(rows) if r.split in DEV_SPLITS]
    bad = [i for i in idx if rows[i].label is None]
    if bad:
        raise ValueError(f"{where}: row {bad[0]} (split {rows[bad[0]].split!r}) has label="
                         f"{rows[bad[0]].cell('label')!r}; expected 0 or 1 for every development row")
    return idx


def near_duplicate_links(cache_dir: str | Path) -> list[tuple[str, str]]:
    """Patient-key pairs that `fibrosis split` found to share near-duplicate images."""
    path = Path(cache_dir) / artefacts.NEAR_DUPLICATES
    if not path.is_file():
        return []
    return [(r["patient_a"], r["patient_b"]) for r in read_csv(path) if r["patient_a"] != r["patient_b"]]


def patient_groups(keys: Sequence[str], links: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Group id per row: the patient key, merged over near-duplicate links; a group is named by
    its smallest key (split's union-find, on ranks of the sorted keys)."""
    names = sorted(set(keys))
    code = {k: i for i, k in enumerate(names)}
    pairs = np.array([(code[a], code[b]) for a, b in links if a in code and b in code], dtype=np.int64)
    root = group_roots(len(names), pairs.reshape(-1, 2))
    return [names[root[code[k]]] for k in keys]


def _strata(rows: Sequence[ManifestRow], idx: Sequence[int], links: Sequence[tuple[str, str]]
            ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(labels, patient group, group label) of rows ``idx``: a group is positive when any of its
    images is, as `split` stratifies."""
    y = np.array([rows[i].label for i in idx])
    groups = patient_groups([rows[i].patient_key for i in idx], links)
    g_pos = {g for g, v in zip(groups, y) if v == 1}
    return y, groups, np.array([1 if g in g_pos else 0 for g in groups])


def make_folds(rows: Sequence[ManifestRow], folds: int, repeats: int = 1, seed: int = 0,
               links: Sequence[tuple[str, str]] = (), where: str = artefacts.MANIFEST) -> list[Fold]:
    """``repeats`` x ``folds`` patient-level folds over the development rows of ``rows``.

    Stratified by group label (a group is positive when any of its images is); each
    repeat re-deals with seed ``seed + repeat``.
    """
    idx = dev_indices(rows, where)
    y, groups, strat = _strata(rows, idx, links)
    n_groups = len(set(groups))
    pos_groups = len({g for g, v in zip(groups, y) if v == 1})
    if pos_groups < folds or n_groups - pos_groups < folds:
        raise ValueError(f"{where}: {pos_groups} positive and {n_groups - pos_groups} negative development "
                         f"patient group(s); tune.folds={folds} needs at least {folds} of each")
    out: list[Fold] = []
    for r in range(repeats):
        skf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
        for k, (tr, ho) in enumerate(skf.split(np.zeros(len(idx)), strat, groups)):
            out.append(Fold(r, k, tuple(sorted(idx[i] for i in tr)), tuple(sorted(idx[i] for i in ho))))
            ytr = y[tr]
            if ytr.sum() == 0 or y[ho].sum() == 0:
                raise ValueError(f"{where}: fold {k} of repeat {r} has no positive in its training or "
                                 f"held-out part; use fewer tune.folds")
    check_folds(rows, out, groups=dict(zip(idx, groups)))
    return out


def check_folds(rows: Sequence[ManifestRow], folds: Sequence[Fold],
                groups: dict[int, str] | None = None) -> None:
    """Invariants every fold set must keep (asserted at run time, not only in tests):
    within a repeat every development row is held out exactly once; no patient (or
    near-duplicate group) is on both sides of a fold; no test/calib row is in any fold."""
    dev = set(dev_indices(rows))
    by_repeat: dict[int, list[int]] = {}
    for f in folds:
        by_repeat.setdefault(f.repeat, []).extend(f.heldout)
        every = set(f.train) | set(f.heldout)
        if set(f.train) & set(f.heldout) or every != dev:
            raise RuntimeError(f"fold {f.name}: train/held-out rows overlap or differ from the development rows")
        a = {rows[i].patient_key for i in f.train}
        b = {rows[i].patient_key for i in f.heldout}
        if a & b:
            raise RuntimeError(f"fold {f.name}: patient(s) {sorted(a & b)[:3]} on both sides")
        if groups is not None and {groups[i] for i in f.train} & {groups[i] for i in f.heldout}:
            raise RuntimeError(f"fold {f.name}: a near-duplicate group is on both sides")
    for r, held in by_repeat.items():
        if sorted(held) != sorted(dev):
            raise RuntimeError(f"repeat {r}: development rows are not each held out exactly once")


def inner_validation(rows: Sequence[ManifestRow], train: Sequence[int], fraction: float, seed: int,
                     links: Sequence[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
    """A fold's training rows cut into (train, val) as `fibrosis split` cuts development data:
    patient-level (near-duplicate groups kept together), label-stratified, ``fraction`` held for
    validation (rounded to 1 / k folds of StratifiedGroupKFold, k >= 2)."""
    idx = list(train)
    _, groups, strat = _strata(rows, idx, links)
    k = max(2, round(1 / fraction)) if fraction > 0 else 2
    tr, va = next(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(idx)), strat, groups))
    return sorted(idx[i] for i in tr), sorted(idx[i] for i in va)
