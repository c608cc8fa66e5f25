"""`fibrosis split`: patient-level, label-stratified train/val/test(/calib) split.

The unit of assignment is a *group* of patients: one patient key, merged with
every other patient key that shares a near-duplicate image (256-bit dHash
within ``split.near_duplicate_hamming`` bits). Near-identical images under two
keys are almost always one person exported under two IDs; keeping them
together stops the same lungs from reaching train and test.

Groups are stratified by label (positive if any image is positive, then
negative, then unlabeled) and dealt out in a seeded random order, each to the
split furthest below its target share -- exact proportions without rejection
sampling. Assignments already in the manifest are kept (``reassign=False``),
so adding data later never moves a patient that a model may already have been
tested on; only new patients are dealt.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fibrosis.data.cache import MANIFEST_COLUMNS, CacheLock, CacheReader

from fibrosis.io import read_csv, write_csv
from fibrosis.config import SplitConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "calib")
DHASH_SIDE = 16  # 16x16 gradient signs = 256 bits; 64-bit dHash collides between different CXRs


@dataclass
class SplitSummary:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> images/patients/pos/neg
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)  # pairs across patients
    near_duplicates_across_splits: int = 0
    kept: int = 0  # patients whose earlier assignment was kept
    assigned: int = 0  # patients dealt in this run
    warnings: list[str] = field(default_factory=list)


def fractions(cfg: SplitConfig) -> dict[str, float]:
    fr = {"train": cfg.train, "val": cfg.val, "test": cfg.test, "calib": cfg.calib}
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fr} must be >= 0 and sum to 1 (got {sum(fr.values()):g})")
    return {k: v for k, v in fr.items() if v > 0}


def dhash(img: np.ndarray, side: int = DHASH_SIDE) -> np.ndarray:
    """Difference hash: signs of horizontal gradients on a (side x side+1) area-averaged thumbnail."""
    small = cv2.resize(img.astype(np.float32), (side + 1, side), interpolation=cv2.INTER_AREA)
    return np.packbits(small[:, 1:] > small[:, :-1])


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with Hamming distance <= max_distance, by multi-index hashing:
    with max_distance + 1 bands, any such pair agrees exactly on at least one band."""
    n, nbytes = hashes.shape
    bands = np.array_split(np.arange(nbytes), min(max_distance + 1, nbytes))
    candidates: set[tuple[int, int]] = set()
    for cols in bands:
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, key in enumerate(hashes[:, cols]):
            buckets[key.tobytes()].append(i)
        for members in buckets.values():
            candidates.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
    out = []
    for a, b in sorted(candidates):
        d = int(np.unpackbits(hashes[a] ^ hashes[b]).sum())
        if d <= max_distance:
            out.append((a, b, d))
    return out


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


class _Groups:
    """Union-find over patient keys."""

    def __init__(self, keys: list[str]):
        self.parent = {k: k for k in keys}

    def find(self, k: str) -> str:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign(rows: list[dict[str, str]], cfg: SplitConfig, links: list[tuple[str, str]] = (),
           reassign: bool = False) -> tuple[dict[str, str], int, int]:
    """patient_key -> split. ``links`` are patient pairs that must share a split."""
    targets = fractions(cfg)
    patients = sorted({r["patient_key"] for r in rows})
    groups = _Groups(patients)
    for a, b in links:
        groups.union(a, b)
    members: dict[str, list[str]] = defaultdict(list)
    for p in patients:
        members[groups.find(p)].append(p)
    labels: dict[str, set[str]] = defaultdict(set)
    existing: dict[str, Counter] = defaultdict(Counter)  # patient -> split -> images
    for r in rows:
        labels[groups.find(r["patient_key"])].add(r.get("label", ""))
        if not reassign and r.get("split") in targets:
            existing[r["patient_key"]][r["split"]] += 1

    def majority(c: Counter) -> str:
        return max(c.items(), key=lambda kv: (kv[1], -SPLITS.index(kv[0])))[0]

    stratum = {g: "1" if "1" in labels[g] else ("0" if "0" in labels[g] else "") for g in members}
    result: dict[str, str] = {}
    counts: dict[str, Counter] = defaultdict(Counter)  # stratum -> split -> patients
    kept = 0
    new_groups = []
    for g, ms in members.items():
        old = [p for p in ms if existing[p]]
        if not old:
            new_groups.append(g)
            continue
        # Assigned patients never move; new patients join their group's majority split.
        group_split = majority(sum((Counter({majority(existing[p]): 1}) for p in old), Counter()))
        for p in ms:
            result[p] = majority(existing[p]) if existing[p] else group_split
            counts[stratum[g]][result[p]] += 1
        kept += len(old)
    for g in sorted(new_groups, key=lambda g: _order(cfg.seed, g)):
        c = counts[stratum[g]]
        total = sum(c.values()) + len(members[g])
        split = max(targets, key=lambda s: (targets[s] * total - c[s], -SPLITS.index(s)))
        for p in members[g]:
            result[p] = split
        c[split] += len(members[g])
    return result, kept, len(patients) - kept


def split_cache(cache_dir: str | Path, cfg: SplitConfig, *, reassign: bool = False) -> SplitSummary:
    """Write the ``split`` column of ``<cache>/manifest.csv`` (atomically) and
    ``<cache>/near_duplicates.csv``; returns per-split counts and the report."""

    root = Path(cache_dir)
    manifest = root / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: no manifest (run `fibrosis ingest` first)")
    summary = SplitSummary()
    with CacheLock(root):  # the same lock as ingest: no concurrent manifest writers
        rows = read_csv(manifest)
        if not rows:
            raise ValueError(f"{manifest}: no images to split")
        reader = CacheReader(root, rows)
        hashes = np.stack([dhash(reader.image(i)) for i in range(len(rows))])
        pairs = near_duplicate_pairs(hashes, cfg.near_duplicate_hamming)
        links = [(rows[a]["patient_key"], rows[b]["patient_key"]) for a, b, _ in pairs
                 if rows[a]["patient_key"] != rows[b]["patient_key"]]
        mapping, summary.kept, summary.assigned = assign(rows, cfg, links, reassign)
        for r in rows:
            r["split"] = mapping[r["patient_key"]]
        for a, b, d in pairs:
            ra, rb = rows[a], rows[b]
            if ra["patient_key"] != rb["patient_key"] or ra["split"] != rb["split"]:
                summary.near_duplicates.append({
                    "path_a": ra["path"], "path_b": rb["path"], "patient_a": ra["patient_key"],
                    "patient_b": rb["patient_key"], "split_a": ra["split"], "split_b": rb["split"],
                    "distance": d})
        summary.near_duplicates_across_splits = sum(p["split_a"] != p["split_b"] for p in summary.near_duplicates)
        write_csv(manifest, rows, MANIFEST_COLUMNS)
        write_csv(root / "near_duplicates.csv", summary.near_duplicates,
                  ("path_a", "path_b", "patient_a", "patient_b", "split_a", "split_b", "distance"))
    per_patient = Counter(r["patient_key"] for r in rows)
    for split in fractions(cfg):
        sel = [r for r in rows if r["split"] == split]
        summary.counts[split] = {
            "images": len(sel), "patients": len({r["patient_key"] for r in sel}),
            "positive": sum(r["label"] == "1" for r in sel), "negative": sum(r["label"] == "0" for r in sel),
            "unlabeled": sum(r["label"] == "" for r in sel)}
    top, n_top = per_patient.most_common(1)[0]
    if len(per_patient) > 1 and n_top >= max(10, 0.05 * len(rows)):
        summary.warnings.append(f"patient key {top} holds {n_top} of {len(rows)} images: is PatientID a "
                                "placeholder (e.g. an anonymised export)? All of them share one split.")
    if summary.near_duplicates_across_splits:
        summary.warnings.append(f"{summary.near_duplicates_across_splits} near-duplicate pair(s) sit in "
                                "different splits (kept earlier assignments); see near_duplicates.csv "
                                "or re-split with reassign")
    for w in summary.warnings:
        logger.warning("%s", w)
    logger.info("split: %s; %d near-duplicate pair(s) across patients", summary.counts,
                len(summary.near_duplicates))
    return summary
