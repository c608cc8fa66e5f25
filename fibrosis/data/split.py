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
import itertools
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from fibrosis.data.cache import MANIFEST_COLUMNS, CacheLock, CacheReader

from fibrosis.io import file_sha256, iter_csv, write_csv, write_json
from fibrosis.config import SplitConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "calib")
DHASH_SIDE = 16  # 16x16 gradient signs = 256 bits; 64-bit dHash collides between different CXRs


@dataclass
class SplitSummary:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> images/patients/pos/neg
    near_duplicates: int = 0  # pairs across patients (rows of near_duplicates.csv)
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


def stored_dhash(stored: np.ndarray) -> str:
    """Hex dHash of one stored cache image, exactly as split computes it from the cache
    (``CacheReader.image``: the integer image over its dtype's maximum), so the hash the
    decode worker records at ingest is the one split would get from re-reading the pixels."""
    return dhash(stored.astype(np.float32) / float(np.iinfo(stored.dtype).max)).tobytes().hex()


def _block_values(hashes: np.ndarray, n_blocks: int) -> np.ndarray:
    """(n, n_blocks) uint64: bit k of the 256 goes to block k % n_blocks. Interleaved, not
    contiguous: a contiguous band is a strip of the thumbnail, and strips (collimation,
    background) agree between different chest radiographs far more often than chance
    (5.5e-3 of pairs on the demo); bits spread over the whole image agree far less often.
    A block of more than 64 bits is folded into 64 (xor): a fold can only add candidates,
    which are verified, never lose a pair."""
    bits = np.unpackbits(hashes, axis=1)
    n, nbits = bits.shape
    out = np.zeros((n, n_blocks), np.uint64)
    for b in range(n_blocks):
        cols = bits[:, b::n_blocks]
        for start in range(0, cols.shape[1], 64):
            chunk = cols[:, start:start + 64]
            packed = np.packbits(np.pad(chunk, ((0, 0), (0, 64 - chunk.shape[1]))), axis=1)
            out[:, b] ^= packed.view(">u8").ravel().astype(np.uint64)
    return out


def _table_plan(max_distance: int, nbits: int, max_tables: int = 40) -> tuple[int, list[tuple[int, ...]]]:
    """(blocks, tables) for multi-index hashing. A pair within ``max_distance`` bits differs in
    at most ``max_distance`` of ``max_distance + s`` blocks, so it agrees exactly on at least
    ``s`` of them: indexing every ``s``-subset of blocks finds it, and a key of ``s`` blocks is
    ``s * 256 / (max_distance + s)`` bits long -- s = 3 at the default distance 4 gives 110-bit
    keys instead of the 51-bit bands of one-block-per-table, so chance agreements between
    different radiographs become rare. ``s`` is the largest with at most ``max_tables`` tables."""
    s = 1
    while (s < 8 and max_distance + s + 1 <= nbits
           and math.comb(max_distance + s + 1, s + 1) <= max_tables):
        s += 1
    m = min(max_distance + s, nbits)
    return m, list(itertools.combinations(range(m), max(0, m - max_distance)))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads a combined key over all 64 bits (uint64 wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def near_duplicate_arrays(hashes: np.ndarray, max_distance: int, groups: np.ndarray | None = None,
                          batch: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) arrays, i < j, sorted by (i, j), of every pair within ``max_distance``
    bits (and, with ``groups``, only pairs whose groups differ, filtered before they are kept).

    Multi-index hashing (:func:`_table_plan`): per table, rows are sorted by their key and each
    run of equal keys gives its pairs, offset by offset, so the work is the number of candidates
    plus a sort, never a quadratic loop. A pair is kept only in the first table whose blocks it
    agrees on (no set of seen pairs), and distances are verified vectorised. Memory: the blocks
    (n x blocks x 8 bytes) and the pairs kept (9 bytes each)."""
    hashes = np.ascontiguousarray(hashes, np.uint8)
    n, nbytes = hashes.shape
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n < 2:
        return empty
    words = np.pad(hashes, ((0, 0), (0, -nbytes % 8))).view(np.uint64)
    m, tables = _table_plan(max_distance, nbytes * 8)
    blocks = _block_values(hashes, m)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def verify(t: int, a: np.ndarray, b: np.ndarray) -> None:
        eq = blocks[a] == blocks[b]
        first = np.full(a.size, len(tables), np.int64)
        for u in range(t, -1, -1):  # the first table this pair agrees on owns it
            first[eq[:, tables[u]].all(1)] = u
        keep = first == t
        if groups is not None:
            keep &= groups[a] != groups[b]
        a, b = a[keep], b[keep]
        d = np.bitwise_count(words[a] ^ words[b]).sum(1, dtype=np.int64)
        close = d <= max_distance
        if close.any():
            lo, hi = np.minimum(a, b)[close], np.maximum(a, b)[close]
            found.append((lo.astype(np.int64), hi.astype(np.int64), d[close]))

    for t, subset in enumerate(tables):
        key = np.zeros(n, np.uint64)
        for c in subset:
            key = _mix(key ^ blocks[:, c])
        order = np.argsort(key, kind="stable")
        sk = key[order]
        live = np.flatnonzero(sk[:-1] == sk[1:])
        k = 1
        while live.size:  # pairs (p, p + k) inside one run of equal keys
            for s0 in range(0, live.size, batch):
                pos = live[s0:s0 + batch]
                verify(t, order[pos], order[pos + k])
            k += 1
            live = live[live + k < n]
            live = live[sk[live] == sk[live + k]]
    if not found:
        return empty
    a, b, d = (np.concatenate(x) for x in zip(*found))
    idx = np.lexsort((b, a))
    return a[idx], b[idx], d[idx]


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with Hamming distance <= max_distance, sorted (see :func:`near_duplicate_arrays`)."""
    a, b, d = near_duplicate_arrays(hashes, max_distance)
    return list(zip(a.tolist(), b.tolist(), d.tolist()))


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


def _linked(patients: Iterable[str], links: Iterable[tuple[str, str]]) -> tuple["_Groups", dict[str, list[str]]]:
    """Union-find over near-duplicate links: (the groups, root -> its patients in input order)."""
    patients = list(patients)
    groups = _Groups(patients)
    for a, b in links:
        groups.union(a, b)
    members: dict[str, list[str]] = defaultdict(list)
    for p in patients:
        members[groups.find(p)].append(p)
    return groups, members


def assign(rows: Iterable[dict[str, str]], cfg: SplitConfig, links: list[tuple[str, str]] = (),
           reassign: bool = False) -> tuple[dict[str, str], int, int]:
    """patient_key -> split. ``links`` are patient pairs that must share a split. ``rows`` is
    read twice (a list, or a re-iterable view such as ``_Compact.rows``)."""
    targets = fractions(cfg)
    patients = sorted({r["patient_key"] for r in rows})
    groups, members = _linked(patients, links)
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


SPLIT_STATE = "split.json"  # what the last split saw (manifest sha256, config) and reported


def _previous_split(root: Path, cfg: SplitConfig, reassign: bool) -> SplitSummary | None:
    """The recorded summary, if the manifest is byte-identical to the one the last split wrote
    and the config is the same: the split would come out identical (it is deterministic, and
    without ``reassign`` it keeps every assignment the manifest has), so it is not recomputed.
    A manifest rewritten by ingest, another config or a first ``reassign`` runs in full."""
    try:
        state = json.loads((root / SPLIT_STATE).read_text())
        if (state["config"] != asdict(cfg) or (reassign and not state["reassign"])
                or not (root / "near_duplicates.csv").exists()
                or state["manifest_sha256"] != file_sha256(root / "manifest.csv")):
            return None
        done = SplitSummary(**state["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record (first split, older version) or an unreadable one: split in full
    if not reassign:  # what a full run without reassign reports: every patient kept
        done.kept, done.assigned = done.kept + done.assigned, 0
    return done


def _is_hex_hash(value: str | None, nbytes: int) -> bool:
    if not value or len(value) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


LABEL_TEXT = ("0", "1", "", "?")  # label codes of _Compact; "?" = any other text (counts as none)


class _Compact:
    """The four manifest columns split decides on, one small array entry per row (about 40
    bytes, not a dict of every column): memory stays a small fraction of the manifest's size,
    which is read twice as a stream instead (here, and to write the split column)."""

    def __init__(self, manifest: Path):
        nbytes = DHASH_SIDE * DHASH_SIDE // 8
        code: dict[str, int] = {}
        labels, splits = bytearray(), bytearray()
        codes_list: list[int] = []
        hashes = bytearray()
        self.missing: dict[int, list[tuple[int, int]]] = defaultdict(list)  # shard -> (row, index)
        label_code = {t: k for k, t in enumerate(LABEL_TEXT)}
        split_code = {s: k for k, s in enumerate(SPLITS)}
        for i, r in enumerate(iter_csv(manifest)):
            codes_list.append(code.setdefault(r["patient_key"], len(code)))
            labels.append(label_code.get(r.get("label") or "", 3))
            splits.append(split_code.get(r.get("split") or "", 255))
            h = r.get("dhash")
            if _is_hex_hash(h, nbytes):
                hashes += bytes.fromhex(h)
            else:
                hashes += bytes(nbytes)
                self.missing[int(r["shard"])].append((i, int(r["index"])))
        self.n = len(codes_list)
        # patient codes in sorted-key order, as assign() and the old row-wise code sort them
        self.patients = sorted(code)
        rank = {p: k for k, p in enumerate(self.patients)}
        remap = np.zeros(len(code), np.int64)
        for p, c in code.items():
            remap[c] = rank[p]
        self.codes = remap[np.asarray(codes_list, np.int64)] if codes_list else np.zeros(0, np.int64)
        self.labels = np.frombuffer(bytes(labels), np.uint8)
        self.splits = np.frombuffer(bytes(splits), np.uint8)
        self.hashes = np.frombuffer(bytes(hashes), np.uint8).reshape(self.n, nbytes).copy()
        self.filled: dict[int, str] = {}  # row -> dHash computed from the pixels

    def rows(self) -> Iterable[dict[str, str]]:
        """What :func:`assign` reads of each row (it iterates twice: a re-iterable view)."""
        compact = self

        class _View:
            def __iter__(self) -> Iterator[dict[str, str]]:
                for c, lab, sp in zip(compact.codes.tolist(), compact.labels.tolist(), compact.splits.tolist()):
                    yield {"patient_key": compact.patients[c], "label": LABEL_TEXT[lab],
                           "split": SPLITS[sp] if sp < len(SPLITS) else ""}

        return _View()

    def fill_missing_hashes(self, root: Path) -> None:
        """A cache written before the ``dhash`` column: hashes from the pixels, one shard at a
        time with its memory map closed after, so memory stays that of one shard."""
        if not self.missing:
            return
        logger.info("split: %d image(s) without a stored dHash (cache from an older version): "
                    "reading their pixels once", sum(map(len, self.missing.values())))
        CacheReader(root, [])  # checks cache.json (format, dtype) before any shard is read
        for shard, idx in sorted(self.missing.items()):
            arr = np.load(root / "shards" / f"shard-{shard:06d}.npy", mmap_mode="r")
            for i, index in idx:
                h = stored_dhash(np.asarray(arr[index]))
                self.hashes[i] = np.frombuffer(bytes.fromhex(h), np.uint8)
                self.filled[i] = h
            del arr  # unmapped now: resident pages do not pile up shard after shard


def split_cache(cache_dir: str | Path, cfg: SplitConfig, *, reassign: bool = False) -> SplitSummary:
    """Write the ``split`` column of ``<cache>/manifest.csv`` (atomically) and
    ``<cache>/near_duplicates.csv``; returns per-split counts and the report."""

    root = Path(cache_dir)
    manifest = root / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: no manifest (run `fibrosis ingest` first)")
    summary = SplitSummary()
    with CacheLock(root):  # the same lock as ingest: no concurrent manifest writers
        done = _previous_split(root, cfg, reassign)
        if done is not None:
            for w in done.warnings:
                logger.warning("%s", w)
            logger.info("split: manifest unchanged since the split recorded in %s: nothing to do", root / SPLIT_STATE)
            return done
        m = _Compact(manifest)
        if not m.n:
            raise ValueError(f"{manifest}: no images to split")
        m.fill_missing_hashes(root)
        patients, codes = m.patients, m.codes
        # Only pairs across patient keys matter: one key always gets one split, so a pair
        # within a patient is neither a link nor a row of near_duplicates.csv.
        a, b, d = near_duplicate_arrays(m.hashes, cfg.near_duplicate_hamming, groups=codes)
        link_codes = np.unique(np.stack([np.minimum(codes[a], codes[b]), np.maximum(codes[a], codes[b])], 1), axis=0)
        links = [(patients[x], patients[y]) for x, y in link_codes.tolist()]
        mapping, summary.kept, summary.assigned = assign(m.rows(), cfg, links, reassign)
        split_code = {s: k for k, s in enumerate(SPLITS)}
        by_code = np.array([split_code[mapping[p]] for p in patients], np.int64)
        row_split = by_code[codes]
        summary.near_duplicates = int(a.size)
        summary.near_duplicates_across_splits = int((row_split[a] != row_split[b]).sum())
        in_pairs = set(a.tolist()) | set(b.tolist())
        paths: dict[int, str] = {}

        def rewritten() -> Iterator[dict[str, str]]:
            for i, r in enumerate(iter_csv(manifest)):
                r["split"] = mapping[r["patient_key"]]
                if i in m.filled:
                    r["dhash"] = m.filled[i]
                if i in in_pairs:
                    paths[i] = r["path"]
                yield r

        write_csv(manifest, rewritten(), MANIFEST_COLUMNS)
        write_csv(root / "near_duplicates.csv",
                  ({"path_a": paths[i], "path_b": paths[j], "patient_a": patients[codes[i]],
                    "patient_b": patients[codes[j]], "split_a": SPLITS[row_split[i]],
                    "split_b": SPLITS[row_split[j]], "distance": dist}
                   for i, j, dist in zip(a.tolist(), b.tolist(), d.tolist())),
                  ("path_a", "path_b", "patient_a", "patient_b", "split_a", "split_b", "distance"))
        (root / SPLIT_STATE).unlink(missing_ok=True)  # written again below, with the new summary
        written = file_sha256(manifest)  # under the lock: an ingest after us changes it, and the record no longer holds
    _, members = _linked(patients, links)
    for ms in sorted(members.values(), key=lambda ms: (-len(ms), ms[0])):
        if len(ms) <= cfg.max_group_patients:
            break
        summary.warnings.append(
            f"a near-duplicate group merges {len(ms)} patient keys (more than split.max_group_patients="
            f"{cfg.max_group_patients}): {', '.join(ms[:8])}{', ...' if len(ms) > 8 else ''}; all share the "
            f"split {mapping[ms[0]]}. Many patients sharing near-identical images is more likely a template, "
            "phantom or re-used test image than one person; see near_duplicates.csv")
    for split in fractions(cfg):
        sel = row_split == split_code[split]
        lab = m.labels[sel]
        summary.counts[split] = {
            "images": int(sel.sum()), "patients": int(np.unique(codes[sel]).size),
            "positive": int((lab == 1).sum()), "negative": int((lab == 0).sum()), "unlabeled": int((lab == 2).sum())}
    per_patient = np.bincount(codes, minlength=len(patients))
    n_top = int(per_patient.max())
    first_row = np.full(len(patients), m.n, np.int64)
    np.minimum.at(first_row, codes, np.arange(m.n))
    top = patients[int(np.argmin(np.where(per_patient == n_top, first_row, m.n + 1)))]  # Counter's tie order
    if len(patients) > 1 and n_top >= max(10, 0.05 * m.n):
        summary.warnings.append(f"patient key {top} holds {n_top} of {m.n} images: is PatientID a "
                                "placeholder (e.g. an anonymised export)? All of them share one split.")
    if summary.near_duplicates_across_splits:
        summary.warnings.append(f"{summary.near_duplicates_across_splits} near-duplicate pair(s) sit in "
                                "different splits (kept earlier assignments); see near_duplicates.csv "
                                "or re-split with reassign")
    for w in summary.warnings:
        logger.warning("%s", w)
    write_json(root / SPLIT_STATE, {"manifest_sha256": written, "config": asdict(cfg),
                                    "reassign": reassign, "summary": asdict(summary)})
    logger.info("split: %s; %d near-duplicate pair(s) across patients", summary.counts,
                summary.near_duplicates)
    return summary
