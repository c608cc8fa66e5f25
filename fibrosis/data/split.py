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

import csv
import hashlib
import itertools
import json
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeGuard, cast

import numpy as np

from fibrosis import artefacts
from fibrosis.artefacts import check_schema
from fibrosis.data.cache import CacheLock, CacheReader, manifest_rewritten
from fibrosis.data.manifest import ManifestRow, iter_manifest, write_manifest
from fibrosis.io import csv_value, file_sha256, open_regular, read_text, write_csv, write_json
from fibrosis.config import SplitConfig
from fibrosis.words import plural

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

    def __str__(self) -> str:
        """One line in words: per split its images, patients and labels; the near-duplicates."""
        parts = []
        for name, c in self.counts.items():
            labels = f"{c.get('positive', 0)} positive, {c.get('negative', 0)} negative"
            if c.get("unlabeled"):
                labels += f", {c['unlabeled']} unlabelled"
            parts.append(f"{name} {plural(c.get('images', 0), 'image')} of {plural(c.get('patients', 0), 'patient')} "
                         f"({labels})")
        dup = plural(self.near_duplicates, "near-duplicate pair")
        if self.near_duplicates_across_splits:
            dup += f" ({self.near_duplicates_across_splits} across splits)"
        return f"{'; '.join(parts) or 'no images'}; {dup} across patients"


def fractions(cfg: SplitConfig) -> dict[str, float]:
    fr = {"train": cfg.train, "val": cfg.val, "test": cfg.test, "calib": cfg.calib}
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fr} must be >= 0 and sum to 1 (got {sum(fr.values()):g})")
    return {k: v for k, v in fr.items() if v > 0}


def dhash(img: np.ndarray, side: int = DHASH_SIDE) -> np.ndarray:
    """Difference hash: signs of horizontal gradients on a (side x side+1) area-averaged thumbnail."""
    # imported here, not at the top: cv2 takes ~0.27 s to import, and split reads the hashes
    # ingest stored, so a split (and a no-op re-split above all) never needs it
    import cv2

    small = cv2.resize(img.astype(np.float32), (side + 1, side), interpolation=cv2.INTER_AREA)
    return np.packbits(small[:, 1:] > small[:, :-1])


def stored_dhash(stored: np.ndarray) -> str:
    """Hex dHash of one stored cache image, exactly as split computes it from the cache
    (``CacheReader.image``: the integer image over its dtype's maximum), so the hash the
    decode worker records at ingest is the one split would get from re-reading the pixels."""
    return dhash(stored.astype(np.float32) / float(np.iinfo(stored.dtype).max)).tobytes().hex()


def _table_masks(n_blocks: int, tables: list[tuple[int, ...]], nwords: int) -> np.ndarray:
    """(tables, nwords) uint64: per table, the bits of its blocks, laid out as the hash words.
    Bit k of the hash goes to block k % n_blocks. Interleaved, not contiguous: a contiguous
    band is a strip of the thumbnail, and strips (collimation, background) agree between
    different chest radiographs far more often than chance (5.5e-3 of pairs on the demo); bits
    spread over the whole image agree far less often. Two rows agree on a table exactly when
    their xor has no bit under its mask, so neither the index nor the check needs a copy of
    the blocks (56 bytes a row at the default distance): only the hashes, as they are."""
    block_of_bit = np.arange(nwords * 64) % n_blocks
    bits = np.stack([np.isin(block_of_bit, subset) for subset in tables]).astype(np.uint8)
    return np.packbits(bits, axis=1).view(np.uint64)  # packbits' bit order is the hashes'


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


def _mix_inplace(x: np.ndarray, tmp: np.ndarray) -> None:
    """splitmix64 finaliser on ``x`` in place (``tmp``: scratch of its shape): spreads a
    combined key over all 64 bits (uint64 wraps), with no temporary array per step."""
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
        np.right_shift(x, np.uint64(shift), out=tmp)
        x ^= tmp
        if mult is not None:
            x *= np.uint64(mult)


def near_duplicate_arrays(hashes: np.ndarray, max_distance: int, groups: np.ndarray | None = None,
                          batch: int = 1 << 14) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) arrays -- int32, int32, int16 -- i < j, sorted by (i, j), of every pair
    within ``max_distance`` bits (and, with ``groups``, only pairs whose groups differ, filtered
    before they are kept).

    Multi-index hashing (:func:`_table_plan`): per table, rows are sorted by their key and each
    run of equal keys gives its pairs, offset by offset, so the work is the number of candidates
    plus a sort, never a quadratic loop. A pair is kept only in the first table it agrees on (no
    set of seen pairs), and distances are verified vectorised. Memory: the hashes (read in
    place), one table's key and order (24 bytes a row, reused table after table), the pairs
    kept (10 bytes each) and one batch of candidates (``batch`` bounds it, so it does not grow
    with n)."""
    hashes = np.ascontiguousarray(hashes, np.uint8)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int16))
    if len(hashes) < 2:
        return empty
    # the index's arrays are gone when _pair_chunks returns, before the pairs are gathered
    found = _pair_chunks(hashes, max_distance, groups, batch)
    if not found:
        return empty
    a, b, d = (np.concatenate([f[k] for f in found]) for k in range(3))
    found.clear()
    idx = np.lexsort((b, a))
    a, b, d = a[idx], b[idx], d[idx]  # one column at a time would save little: 10 bytes a pair
    return a, b, d


def _pair_chunks(hashes: np.ndarray, max_distance: int, groups: np.ndarray | None,
                 batch: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The search of :func:`near_duplicate_arrays`: its pairs as unsorted (i, j, distance) chunks."""
    n, nbytes = hashes.shape
    if n >= 2**31:
        raise ValueError(f"{n} hashes: row numbers are int32")
    # the hashes as 64-bit words, a view when they are whole words (256 bits): no copy
    words = (hashes if nbytes % 8 == 0 else np.pad(hashes, ((0, 0), (0, -nbytes % 8)))).view(np.uint64)
    m, tables = _table_plan(max_distance, nbytes * 8)
    masks = _table_masks(m, tables, words.shape[1])
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def verify(t: int, a: np.ndarray, b: np.ndarray) -> None:
        x = words[a] ^ words[b]
        keep = ~(x & masks[t]).any(1)  # agrees on table t (not a collision of 64-bit keys)
        if groups is not None:
            keep &= groups[a] != groups[b]
        idx = np.flatnonzero(keep)
        for u in range(t):  # the first table this pair agrees on owns it: drop it if that is earlier
            if not idx.size:
                break
            idx = idx[(x[idx] & masks[u]).any(1)]  # most near copies agree on table 0: gone at once
        a, b = a[idx], b[idx]
        d = np.bitwise_count(x[idx]).sum(1, dtype=np.int64)
        close = d <= max_distance
        if close.any():
            lo, hi = np.minimum(a, b)[close], np.maximum(a, b)[close]
            found.append((lo.astype(np.int32), hi.astype(np.int32), d[close].astype(np.int16)))

    key = np.empty(n, np.uint64)
    tmp = np.empty(n, np.uint64)  # scratch, then the sorted keys: one buffer for both
    for t in range(len(tables)):
        key.fill(0)
        for w in np.flatnonzero(masks[t]).tolist():  # the key: the table's bits, word by word
            np.bitwise_and(words[:, w], masks[t, w], out=tmp)
            key ^= tmp
            _mix_inplace(key, tmp)
        order = np.argsort(key, kind="stable")
        sk = np.take(key, order, out=tmp, mode="clip")  # "raise" would buffer a copy; order is in range
        live = np.flatnonzero(sk[:-1] == sk[1:])
        k = 1
        while live.size:  # pairs (p, p + k) inside one run of equal keys
            for s0 in range(0, live.size, batch):
                pos = live[s0:s0 + batch]
                verify(t, order[pos], order[pos + k])
            k += 1
            live = live[live + k < n]
            live = live[sk[live] == sk[live + k]]
        del order, sk
    return found


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) with Hamming distance <= max_distance, sorted (see :func:`near_duplicate_arrays`)."""
    a, b, d = near_duplicate_arrays(hashes, max_distance)
    return list(zip(a.tolist(), b.tolist(), d.tolist()))


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def group_roots(n_patients: int, link_codes: np.ndarray) -> np.ndarray:
    """Per patient code, the smallest patient code of its group (patients joined by links, an
    (k, 2) array of patient codes). Codes are ranks of the sorted keys, so the root is also
    the group's smallest key -- the representative the row-wise union-find chose.

    Union-find on arrays: every link hooks the larger of its two roots under the smaller, then
    every patient is pointed at its root (pointer jumping), until both ends of every link share
    a root. Labels only decrease and the smallest member of a group always points at itself,
    so it is the root each group ends with. (Not scipy's connected_components: importing
    scipy.sparse costs split 23 MB, a quarter of its memory.)"""
    # int32 while codes fit: half the memory of int64 per patient and per link
    dtype = np.int32 if n_patients < 2**31 else np.int64
    parent = np.arange(n_patients, dtype=dtype)
    link_codes = np.asarray(link_codes, dtype).reshape(-1, 2)
    a, b = link_codes[:, 0], link_codes[:, 1]
    while True:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            return parent
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)
        np.minimum.at(parent, rb, low)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


def _chunked(values: np.ndarray, size: int = 4096) -> Iterator[Any]:
    """The Python values of an array one chunk at a time: ``tolist()`` of the whole array would
    hold a list (and an int object per entry) as long as the array."""
    for s0 in range(0, len(values), size):
        yield from values[s0:s0 + size].tolist()


def assign_codes(codes: np.ndarray, labels: np.ndarray, splits: np.ndarray, patients: Sequence[str],
                 cfg: SplitConfig, link_codes: np.ndarray | None = None,
                 reassign: bool = False, root: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """Split code (index into SPLITS) per patient code, patients kept, patients dealt.

    Rows are three arrays -- patient code (rank of the key in the sorted ``patients``), label
    code (:func:`label_code`) and split code (SPLITS, 255 = none) -- and patients and groups are array
    entries: memory is a few bytes per row and per patient, not a dict and a set per patient,
    so it stays a small fraction of the manifest whatever the archive's size. Each
    per-patient table is dropped as soon as what it is for is taken from it. ``root``: the
    caller's ``group_roots(len(patients), link_codes)``, if it has it (then links are unused)."""
    targets = fractions(cfg)
    n = len(patients)
    k_splits = len(SPLITS)
    if root is None:
        root = group_roots(n, np.zeros((0, 2), np.int64) if link_codes is None else link_codes)
    stratum = np.full(n, 2, np.uint8)  # per group root: 1 any positive, else 0 any negative, else 2
    for lab in (0, 1):
        has = np.zeros(n, bool)
        has[root[codes[labels == lab]]] = True
        stratum[has] = lab  # positive (lab 1) written last: it wins
        del has
    has_old: np.ndarray  # per group root: has images in a split already
    if reassign:
        has_old, own = np.zeros(n, bool), np.zeros(n, np.int64)
    else:  # patient -> images per split already assigned: its majority, ties to the earlier split
        allowed = np.array([sp in targets for sp in SPLITS] + [False])
        sel = allowed[np.minimum(splits, k_splits)]
        existing = np.bincount(codes[sel].astype(np.int64) * k_splits + splits[sel],
                               minlength=n * k_splits).reshape(n, k_splits)
        del sel
        # numpy types any(axis) as a scalar or an array: of a 2-D array, it is an array.
        has_old, own = cast(np.ndarray, existing.any(1)), existing.argmax(1)  # argmax takes the first maximum
        del existing
    votes = np.bincount(root[has_old].astype(np.int64) * k_splits + own[has_old],
                        minlength=n * k_splits).reshape(n, k_splits)
    kept_group, majority = cast(np.ndarray, votes.any(1)), votes.argmax(1)  # per root (any: as above)
    del votes
    # Assigned patients never move; new patients join their group's majority split.
    result = np.where(has_old, own, majority[root]).astype(np.uint8)
    kept = int(has_old.sum())
    del own, majority, has_old
    in_kept = kept_group[root]
    counts = np.zeros((3, k_splits), np.int64)  # stratum -> split -> patients
    np.add.at(counts, (stratum[root[in_kept]], result[in_kept]), 1)
    counts_list = counts.tolist()
    sizes = np.bincount(root, minlength=n)
    new_roots = np.flatnonzero((root == np.arange(n)) & ~kept_group)
    del kept_group
    digests = bytearray()  # the deal order: sha256 of seed and the group's smallest key
    for r in _chunked(new_roots):
        digests += hashlib.sha256(f"{cfg.seed}:{patients[r]}".encode()).digest()
    words = np.frombuffer(digests, ">u8").reshape(-1, 4)  # a view: no copy of the digests
    order = new_roots[np.lexsort(words.T[::-1])] if new_roots.size else new_roots
    del words, digests, new_roots
    split_of_root = np.zeros(n, np.uint8)
    fractions_by_code = [(SPLITS.index(sp), f) for sp, f in targets.items()]
    for r in _chunked(order):
        c = counts_list[stratum[r]]
        size = int(sizes[r])
        total = sum(c) + size
        best = max(fractions_by_code, key=lambda kf: (kf[1] * total - c[kf[0]], -kf[0]))[0]
        split_of_root[r] = best
        c[best] += size
    del order, sizes, stratum
    result = np.where(in_kept, result, split_of_root[root])
    return result, kept, n - kept


def assign(rows: Iterable[ManifestRow], cfg: SplitConfig, links: Iterable[tuple[str, str]] = (),
           reassign: bool = False) -> tuple[dict[str, str], int, int]:
    """patient_key -> split, for manifest rows (their ``patient_key``, ``label`` and ``split``);
    ``links`` are patient pairs that must share a split. :func:`assign_codes` on the rows' codes."""
    fractions(cfg)  # refused before anything is read
    keys: list[str] = []
    split_code = {sp: k for k, sp in enumerate(SPLITS)}
    labels, splits = bytearray(), bytearray()
    for r in rows:
        keys.append(r.patient_key)
        labels.append(label_code(r.label))
        splits.append(split_code.get(r.split, 255))
    patients = sorted(set(keys))
    rank = {p: k for k, p in enumerate(patients)}
    link_codes = np.array([(rank[x], rank[y]) for x, y in links], np.int64).reshape(-1, 2)
    result, kept, assigned = assign_codes(np.array([rank[k] for k in keys], np.int64),
                                          np.frombuffer(bytes(labels), np.uint8),
                                          np.frombuffer(bytes(splits), np.uint8).astype(np.int64),
                                          patients, cfg, link_codes, reassign)
    return {p: SPLITS[sp] for p, sp in zip(patients, result.tolist())}, kept, assigned


SPLIT_SCHEMA = 1


@dataclass(frozen=True)
class SplitRecord:
    """``split.json``: what the last split saw (the manifest's sha256, its config) and reported.
    Written by :func:`split_cache` alone, read by :meth:`read` alone."""

    manifest_sha256: str
    config: dict[str, Any]
    reassign: bool
    summary: SplitSummary
    schema: int = SPLIT_SCHEMA

    def write(self, root: Path) -> None:
        write_json(root / artefacts.SPLIT_STATE, asdict(self))

    @classmethod
    def read(cls, root: Path) -> SplitRecord | None:
        """The record, or None where there is none or it cannot be trusted (unreadable, or written
        before records had a schema): the split then runs in full and writes a new one. A newer
        schema is refused (:class:`fibrosis.artefacts.SchemaError`)."""
        path = root / artefacts.SPLIT_STATE
        try:
            raw = json.loads(read_text(path))
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or "schema" not in raw:
            return None
        check_schema(path, raw["schema"], SPLIT_SCHEMA)
        try:
            return cls(str(raw["manifest_sha256"]), dict(raw["config"]), bool(raw["reassign"]),
                       SplitSummary(**raw["summary"]), SPLIT_SCHEMA)
        except (KeyError, TypeError, ValueError):
            return None


def _previous_split(root: Path, cfg: SplitConfig, reassign: bool, manifest_sha256: str) -> SplitSummary | None:
    """The recorded summary, if the manifest is byte-identical to the one the last split wrote
    and the config is the same: the split would come out identical (it is deterministic, and
    without ``reassign`` it keeps every assignment the manifest has), so it is not recomputed.
    A manifest rewritten by ingest, another config or a first ``reassign`` runs in full."""
    record = SplitRecord.read(root)
    if (record is None or record.config != asdict(cfg) or (reassign and not record.reassign)
            or not (root / artefacts.NEAR_DUPLICATES).exists() or record.manifest_sha256 != manifest_sha256):
        return None
    done = record.summary
    if not reassign:  # what a full run without reassign reports: every patient kept
        done.kept, done.assigned = done.kept + done.assigned, 0
    return done


def _is_hex_hash(value: str | None, nbytes: int) -> TypeGuard[str]:
    if not value or len(value) != 2 * nbytes:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def label_code(label: int | None) -> int:
    """A row's label as split's one-byte code: 0, 1, or 2 for none."""
    return 2 if label is None else label


class _Keys(Sequence[str]):
    """Sorted patient keys as one bytes array (16 bytes a key, not a str object of ~65): a key
    is decoded only when it is written or named."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]  # by index only, never a slice
        return str(self.keys[i].decode("utf-8"))  # numpy types the element as Any


def _rank_codes(key_chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, int32 code per row) of the rows' keys, in chunks (emptied here):
    the codes are ranks of the sorted keys (UTF-8 bytes sort as the str do), as assign()
    orders patients. np.unique(return_inverse=True) gives the same, but
    holds the keys twice and three int64 columns at once; here the keys in row order are
    dropped once sorted, and the codes are int32."""
    keys = np.concatenate(key_chunks) if len(key_chunks) > 1 else key_chunks[0]
    key_chunks.clear()
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    del keys
    first = np.ones(n, bool)  # first row of each key in sorted order
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    uniq = ordered[first]
    del ordered
    dtype = np.int32 if n < 2**31 else np.int64
    codes = np.empty(n, dtype)
    codes[order] = np.cumsum(first, dtype=dtype) - 1
    return uniq, codes


class _Compact:
    """The four manifest columns split decides on, one small array entry per row (the 32-byte
    hash, freed after the search, a 4-byte patient code and a byte each for label and split;
    16 bytes of key per row while the codes are made), not a dict of every column: memory
    stays a small fraction of the manifest's size, which is read as a stream instead (here,
    to write the split column, and a line per near-duplicate row for near_duplicates.csv)."""

    def __init__(self, manifest: Path, chunk: int = 4096):
        nbytes = DHASH_SIDE * DHASH_SIDE // 8
        key_chunks: list[np.ndarray] = []
        keys: list[bytes] = []
        labels, splits = bytearray(), bytearray()
        hashes = bytearray()
        self.missing: dict[int, list[tuple[int, int]]] = defaultdict(list)  # shard -> (row, index)
        split_code = {s: k for k, s in enumerate(SPLITS)}
        for i, r in enumerate(iter_manifest(manifest)):
            keys.append(r.patient_key.encode("utf-8"))
            if len(keys) >= chunk:  # fixed-width bytes, chunk by chunk: no str per row is kept
                key_chunks.append(np.array(keys, dtype=bytes))
                keys.clear()
            labels.append(label_code(r.label))
            splits.append(split_code.get(r.split, 255))
            if _is_hex_hash(r.dhash, nbytes):
                hashes += bytes.fromhex(r.dhash)
            else:
                hashes += bytes(nbytes)
                self.missing[r.shard].append((i, r.index))
        key_chunks.append(np.array(keys, dtype=bytes))
        del keys
        uniq, self.codes = _rank_codes(key_chunks)
        self.n = len(self.codes)
        self.patients = _Keys(uniq)
        self.labels = np.frombuffer(bytes(labels), np.uint8)
        self.splits = np.frombuffer(bytes(splits), np.uint8)
        # the bytearray's own buffer, no copy (writable: fill_missing_hashes writes into it)
        self.hashes = (np.frombuffer(hashes, np.uint8).reshape(self.n, nbytes) if self.n
                       else np.zeros((0, nbytes), np.uint8))
        self.filled: dict[int, str] = {}  # row -> dHash computed from the pixels

    def fill_missing_hashes(self, root: Path) -> None:
        """A cache written before the ``dhash`` column: hashes from the pixels, one shard at a
        time with its memory map closed after, so memory stays that of one shard."""
        if not self.missing:
            return
        logger.info("split: %s without a stored dHash (cache from an older version): "
                    "reading their pixels once", plural(sum(map(len, self.missing.values())), "image"))
        CacheReader(root, [])  # checks cache.json (format, dtype) before any shard is read
        for shard, idx in sorted(self.missing.items()):
            arr = np.load(root / "shards" / f"shard-{shard:06d}.npy", mmap_mode="r")
            for i, index in idx:
                h = stored_dhash(np.asarray(arr[index]))
                self.hashes[i] = np.frombuffer(bytes.fromhex(h), np.uint8)
                self.filled[i] = h
            del arr  # unmapped now: resident pages do not pile up shard after shard


class _OffsetRows:
    """A CSV's rows, each with the byte offset it starts at, and any row read back by offset.

    split needs the paths of the rows in a near-duplicate pair again after it has rewritten the
    manifest. Keeping an 8-byte offset per such row instead of its path (60 bytes and more,
    and nearly every row is in a pair in an archive of near copies) keeps that memory flat;
    the rows written are read back one at a time."""

    def __init__(self, path: Path):
        self.fh = open_regular(path, "rb")
        self.pos = 0
        self.escaped = False
        self.fieldnames: Sequence[str] = [csv_value(n) for n in next(csv.reader(self._lines()), [])]

    def _lines(self) -> Iterator[str]:
        for raw in self.fh:  # split on b"\n": never inside a UTF-8 character
            self.pos += len(raw)
            self.escaped = self.escaped or b"'" in raw  # a cell to decode (io.csv_value) in this record
            yield raw.decode("utf-8")

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        """(offset, row) as ``iter_csv`` gives the rows: csv pulls one line at a time, so the
        bytes consumed before a row is read are where it starts."""
        self.fh.seek(0)
        self.pos = 0
        reader = csv.DictReader(self._lines())
        _ = reader.fieldnames  # reads the header
        self.escaped = False
        while True:
            start = self.pos
            row = next(reader, None)
            if row is None:
                return
            yield start, _decoded(row) if self.escaped else row
            self.escaped = False

    def read(self, offset: int) -> dict[str, str]:
        self.fh.seek(offset)
        self.pos = offset
        return _decoded(next(csv.DictReader(self._lines(), fieldnames=self.fieldnames)))

    def path(self, offset: int) -> str | None:
        """The ``path`` of the row at ``offset``: parsed from its one line when the line holds
        the whole record (an even number of quotes; a quoted newline is rare in a path), as
        :meth:`read` would, at a third of its cost -- near_duplicates.csv reads one per pair."""
        self.fh.seek(offset)
        line = self.fh.readline()
        col = self.fieldnames.index("path")
        if b'"' not in line:  # csv quotes every field holding a comma, quote or line break
            values = line.rstrip(b"\r\n").split(b",")
            return csv_value(values[col].decode("utf-8")) if col < len(values) else None
        if line.count(b'"') % 2:
            return self.read(offset)["path"]
        values = next(csv.reader([line.decode("utf-8")]), [])
        return csv_value(values[col]) if col < len(values) else None

    def close(self) -> None:
        self.fh.close()


def _decoded(row: dict[str, str]) -> dict[str, str]:
    """A manifest row as written (:func:`fibrosis.io.csv_value` of each cell)."""
    return {k: csv_value(v) if isinstance(v, str) else v for k, v in row.items()}


def _row_offsets(path: Path, rows: np.ndarray, n: int, block: int = 1 << 20) -> np.ndarray | None:
    """Byte offsets where ``rows`` (sorted row numbers) start in a CSV of ``n`` records that
    write_csv wrote (each ended by one "\n"): row k starts after the k-th newline (the 0th
    ends the header). A NumPy scan a block at a time, far faster than csv's; None if the file
    has more newlines than records (a quoted newline inside a field), where only csv can tell."""
    out = np.empty(len(rows), np.int64)
    seen = pos = 0  # newlines before this block, bytes before this block
    with open(path, "rb") as fh:
        while data := fh.read(block):
            nl = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
            lo, hi = np.searchsorted(rows, [seen, seen + nl.size])
            out[lo:hi] = pos + nl[rows[lo:hi] - seen] + 1
            seen += nl.size
            pos += len(data)
    return out if seen == n + 1 else None


def _link_codes(ca: np.ndarray, cb: np.ndarray, n_patients: int) -> np.ndarray:
    """(k, 2) distinct patient-code pairs (low, high), sorted: np.unique(axis=0) of the pairs,
    through one int64 per pair (low * n + high sorts the same) instead of its row-view sort."""
    low, high = np.minimum(ca, cb).astype(np.int64), np.maximum(ca, cb)
    low *= n_patients
    low += high
    del high
    flat = np.unique(low)
    del low
    return np.stack([flat // n_patients, flat % n_patients], 1).astype(ca.dtype)


def split_cache(cache_dir: str | Path, cfg: SplitConfig, *, reassign: bool = False) -> SplitSummary:
    """Write the ``split`` column of ``<cache>/manifest.csv`` (atomically) and
    ``<cache>/near_duplicates.csv``; returns per-split counts and the report."""

    root = Path(cache_dir)
    manifest = root / artefacts.MANIFEST
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: no manifest (run `fibrosis ingest` first)")
    summary = SplitSummary()
    with CacheLock(root):  # the same lock as ingest: no concurrent manifest writers
        before = file_sha256(manifest)
        done = _previous_split(root, cfg, reassign, before)
        if done is not None:
            for w in done.warnings:
                logger.warning("%s", w)
            logger.info("split: manifest unchanged since the split recorded in %s, kept: %s",
                        root / artefacts.SPLIT_STATE, done)
            return done
        m = _Compact(manifest)
        if not m.n:
            raise ValueError(f"{manifest}: no images to split")
        m.fill_missing_hashes(root)
        patients, codes = m.patients, m.codes
        # Only pairs across patient keys matter: one key always gets one split, so a pair
        # within a patient is neither a link nor a row of near_duplicates.csv.
        a, b, d = near_duplicate_arrays(m.hashes, cfg.near_duplicate_hamming, groups=codes)
        del m.hashes  # 32 bytes a row, needed by the search only
        # the groups, once: the links are dropped, and the warning below reuses them
        root_of = group_roots(len(patients), _link_codes(codes[a], codes[b], len(patients)))
        by_code, summary.kept, summary.assigned = assign_codes(codes, m.labels, m.splits, patients, cfg,
                                                               reassign=reassign, root=root_of)
        split_code = {s: k for k, s in enumerate(SPLITS)}
        row_split = by_code[codes]
        summary.near_duplicates = int(a.size)
        summary.near_duplicates_across_splits = int((row_split[a] != row_split[b]).sum())
        in_pairs = np.zeros(m.n, bool)
        in_pairs[a] = in_pairs[b] = True

        def rewritten() -> Iterator[ManifestRow]:
            # row i of the manifest is row i of m: the lock keeps anyone else from rewriting it
            for i, (r, sp) in enumerate(zip(iter_manifest(manifest), _chunked(row_split))):
                yield replace(r, split=SPLITS[sp], dhash=m.filled.get(i, r.dhash))

        write_manifest(manifest, rewritten())
        pair_row_ids = np.flatnonzero(in_pairs)
        del in_pairs
        source = _OffsetRows(manifest)  # the manifest as just written
        offsets = _row_offsets(manifest, pair_row_ids, m.n)
        if offsets is None:  # a quoted newline in some field: csv finds where the rows start
            wanted = set(pair_row_ids.tolist())
            offsets = np.array([start for k, (start, _) in enumerate(source) if k in wanted], np.int64)
        try:

            def pair_rows(size: int = 4096) -> Iterator[dict[str, object]]:
                path_a: str | None
                last_a, path_a = -1, ""  # pairs are sorted by row a: read each row a once
                for s0 in range(0, a.size, size):  # a chunk of pairs at a time: no column of them all
                    i, j = a[s0:s0 + size], b[s0:s0 + size]
                    for ra, rb, ca, cb, sa, sb, dist in zip(*(x.tolist() for x in (
                            np.searchsorted(pair_row_ids, i), np.searchsorted(pair_row_ids, j),
                            codes[i], codes[j], row_split[i], row_split[j], d[s0:s0 + size]))):
                        if ra != last_a:
                            last_a, path_a = ra, source.path(offsets[ra])
                        yield {"path_a": path_a, "path_b": source.path(offsets[rb]),
                               "patient_a": patients[ca], "patient_b": patients[cb],
                               "split_a": SPLITS[sa], "split_b": SPLITS[sb], "distance": dist}

            write_csv(root / artefacts.NEAR_DUPLICATES, pair_rows(),
                      ("path_a", "path_b", "patient_a", "patient_b", "split_a", "split_b", "distance"))
        finally:
            source.close()
        (root / artefacts.SPLIT_STATE).unlink(missing_ok=True)  # written again below, with the new summary
        written = file_sha256(manifest)  # under the lock: an ingest after us changes it, and the record no longer holds
        manifest_rewritten(root, before, written)  # so a no-op ingest after a split still skips consolidating
    sizes = np.bincount(root_of, minlength=len(patients))
    big = np.flatnonzero(sizes > cfg.max_group_patients)
    for g in big[np.lexsort((big, -sizes[big]))].tolist():  # largest first, then by smallest key
        ms = [patients[p] for p in np.flatnonzero(root_of == g)[:8].tolist()]
        summary.warnings.append(
            f"a near-duplicate group merges {sizes[g]} patient keys (more than split.max_group_patients="
            f"{cfg.max_group_patients}): {', '.join(ms)}{', ...' if sizes[g] > 8 else ''}; all share the "
            f"split {SPLITS[by_code[g]]}. Many patients sharing near-identical images is more likely a template, "
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
    SplitRecord(written, asdict(cfg), reassign, summary).write(root)
    logger.info("split: %s (%s)", summary, root / artefacts.NEAR_DUPLICATES)
    return summary
