"""The on-disk preprocessing cache: sharded ``.npy`` arrays plus a CSV manifest.

Layout of a cache directory::

    cache.json                 format version, image size, dtype, preprocessing settings
    shards/shard-000000.npy    (N, S, S) uint8 or uint16, one preprocessed image per row
    parts/shard-000000.csv     manifest rows of that shard (written last: the commit marker)
    parts/rejects-000000.csv   rejected / excluded inputs of the same chunk
    manifest.csv               all parts consolidated (+ the ``split`` column from `fibrosis split`)
    rejects.csv                all rejects consolidated
    consolidated.json          what the two were consolidated from (a no-op ingest rewrites neither)

Why this layout: a training epoch touches every image in random order, so the
reader must be a memory-speed random access, not a decode. Plain ``.npy`` shards
open with ``np.load(mmap_mode="r")`` -- zero-copy, page-cache backed, shareable
between DataLoader workers, and readable with nothing but NumPy. A shard and its
part file are written to temporary names and renamed (atomic on POSIX), and the
part file is renamed last, so a run killed mid-way leaves either a whole shard
that re-runs skip or nothing that counts: no loss and no duplicates.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fibrosis import artefacts
from fibrosis.data.manifest import (MANIFEST_COLUMNS, REJECT_COLUMNS, ManifestRow, RejectRow, read_manifest,
                                    read_rejects, write_manifest, write_rejects)
from fibrosis.io import file_sha256, open_regular, read_text, save_npy, write_json

CACHE_FORMAT = 1

DTYPES: dict[str, type[np.unsignedinteger[Any]]] = {"uint8": np.uint8, "uint16": np.uint16}


def to_cache_dtype(img01: np.ndarray, dtype: str) -> np.ndarray:
    """Float image in [0, 1] -> stored integer array (round-to-nearest)."""
    if dtype not in DTYPES:
        raise ValueError(f"cache dtype {dtype!r} not in {sorted(DTYPES)}")
    top = np.iinfo(DTYPES[dtype]).max
    return np.clip(np.rint(img01 * top), 0, top).astype(DTYPES[dtype])


# Per-image statistics of the cached (displayed, windowed, resized) image on the [0, 1] scale:
# `evaluate` stores them for the reference split and `score` for every scored image, so
# `fibrosis monitor` compares like with like (same pixel function, same quantisation).
IMAGE_STATS: tuple[str, ...] = ("img_mean", "img_std", "img_p05", "img_p50", "img_p95")


def image_statistics(stored: np.ndarray) -> dict[str, float]:
    """Mean, spread and 5/50/95th percentiles of one stored cache image (zero padding included,
    as the model sees it), rounded to 5 digits.

    From the image's histogram, not a sort: score calls this for every image on its hot
    path, and an integer image has at most 65,536 distinct values. The percentiles are
    np.percentile's (linear interpolation between order statistics), in float64."""
    stored = np.asarray(stored)
    counts = np.bincount(stored.ravel())
    values = np.flatnonzero(counts)
    counts = counts[values]
    v = values / float(np.iinfo(stored.dtype).max)
    n = int(counts.sum())
    mean = float(v @ counts / n)
    std = float(np.sqrt(((v - mean) ** 2) @ counts / n))
    cum = np.cumsum(counts)  # order statistic k (0-based) is v[searchsorted(cum, k + 1)]
    pcts = []
    for q in (5, 50, 95):
        pos = (n - 1) * q / 100.0
        lo, hi = v[np.searchsorted(cum, [int(np.floor(pos)) + 1, int(np.ceil(pos)) + 1])]
        pcts.append(lo + (hi - lo) * (pos - np.floor(pos)))
    return {k: round(float(x), 5) for k, x in zip(IMAGE_STATS, (mean, std, *pcts))}


class CacheWriter:
    """Writes shards and their manifest parts; safe to kill at any point."""

    def __init__(self, root: str | Path, image_size: int, dtype: str, preprocessing: dict[str, Any],
                 ingest_config: dict[str, Any] | None = None):
        self.root = Path(root)
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        (self.root / "parts").mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "image_size": image_size, "dtype": dtype,
                "preprocessing": preprocessing}
        meta_path = self.root / artefacts.CACHE_META
        if meta_path.exists():
            old = json.loads(read_text(meta_path))
            for key in ("format", "image_size", "dtype", "preprocessing"):
                if old.get(key) != meta[key]:
                    raise ValueError(
                        f"{meta_path}: existing cache has {key}={old.get(key)!r}, this run asks "
                        f"for {meta[key]!r}; images prepared differently must not be mixed: "
                        "use a new cache directory")
            meta = {**old, **meta}
        # The full ingest config of the latest run (policy lists, label column, ...):
        # `train` copies it into the checkpoint, so `score` applies what built the cache.
        if ingest_config is not None:
            meta["ingest_config"] = ingest_config
        if not meta_path.exists() or ingest_config is not None:
            write_json(meta_path, meta)
        self.image_size, self.dtype = image_size, dtype

    def next_shard_id(self) -> int:
        ids = [int(p.stem.split("-")[1]) for p in (self.root / "parts").glob("shard-*.csv")]
        ids += [int(p.stem.split("-")[1]) for p in (self.root / "shards").glob("shard-*.npy")]
        return max(ids, default=-1) + 1

    def write_shard(self, shard_id: int, images: list[np.ndarray], rows: list[ManifestRow],
                    rejects: list[RejectRow]) -> list[ManifestRow]:
        """Commit one chunk: array first, rejects, then the manifest part (the marker).
        Returns the rows as committed: image ``i`` of the shard is row ``i``, placed there."""
        name = f"shard-{shard_id:06d}"
        if images:
            save_npy(self.root / "shards" / f"{name}.npy", np.stack(images).astype(DTYPES[self.dtype], copy=False))
        placed = [dataclasses.replace(row, shard=shard_id, index=i) for i, row in enumerate(rows)]
        write_rejects(self.root / "parts" / f"rejects-{shard_id:06d}.csv", rejects)
        write_manifest(self.root / "parts" / f"{name}.csv", placed)
        return placed


def iter_parts(root: str | Path) -> Iterator[tuple[int, list[ManifestRow], list[RejectRow]]]:
    """(shard id, manifest rows, reject rows) of every committed chunk, in commit order."""
    root = Path(root)
    for part in sorted((root / "parts").glob("shard-*.csv")):
        rej = part.with_name(part.name.replace("shard-", "rejects-"))
        yield int(part.stem.split("-")[1]), read_manifest(part), (read_rejects(rej) if rej.exists() else [])


def manifest_hash(root: str | Path) -> str:
    """sha256 of the consolidated manifest: ties a checkpoint to the exact data it saw."""
    return file_sha256(Path(root) / artefacts.MANIFEST)


def consolidation_stamp(root: str | Path) -> dict[str, Any]:
    """What ``manifest.csv`` and ``rejects.csv`` are now: their columns, the parts folder's listing
    (name, size, mtime_ns of every file -- parts are written once, under new names, so any commit
    changes it) and the two files' sha256. Equal to the stamp recorded when they were last consolidated,
    consolidating again would write them byte for byte (see ``ingest.consolidate``), so a no-op
    ingest skips it: at 10k files that rewrite was ~40% of the no-op."""
    root = Path(root)
    listing = hashlib.sha256()
    if (root / "parts").is_dir():
        for e in sorted(os.scandir(root / "parts"), key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            listing.update(f"{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    files = {f"{name}_sha256": file_sha256(root / f"{name}.csv") if (root / f"{name}.csv").exists() else ""
             for name in ("manifest", "rejects")}
    # the columns too: a version that adds one must write it, not keep a manifest without it
    columns = {"manifest_columns": ",".join(MANIFEST_COLUMNS), "reject_columns": ",".join(REJECT_COLUMNS)}
    return {"format": 1, **columns, "parts": listing.hexdigest(), **files}


def recorded_consolidation(root: str | Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads(read_text(Path(root) / artefacts.CONSOLIDATED))
    except (OSError, ValueError):
        return None  # none yet (a cache of an older version) or unreadable: consolidate in full
    return stamp if isinstance(stamp, dict) else None


def record_consolidation(root: str | Path, stamp: dict[str, Any]) -> None:
    write_json(Path(root) / artefacts.CONSOLIDATED, stamp)


def manifest_rewritten(root: str | Path, before_sha256: str, after_sha256: str) -> None:
    """`fibrosis split` rewrote a consolidated manifest (only its ``split`` and ``dhash`` columns,
    which consolidation carries over from the manifest it replaces, so the new manifest is
    still what consolidating would write): move the stamp along, so the next no-op ingest
    still skips. A manifest that was not the consolidated one leaves the stamp stale."""
    stamp = recorded_consolidation(root)
    if stamp is not None and stamp.get("manifest_sha256") == before_sha256:
        record_consolidation(root, {**stamp, "manifest_sha256": after_sha256})


class CacheReader:
    """Random access to cached images by manifest row; memmaps open lazily per process."""

    def __init__(self, root: str | Path, rows: list[ManifestRow] | None = None):
        self.root = Path(root)
        meta_path = self.root / artefacts.CACHE_META
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: not a fibrosis cache (run `fibrosis ingest` first)")
        self.meta = json.loads(read_text(meta_path))
        if self.meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{meta_path}: cache format {self.meta.get('format')!r}, "
                             f"this version reads {CACHE_FORMAT}")
        self.rows = rows if rows is not None else read_manifest(self.root / artefacts.MANIFEST)
        self.image_size = int(self.meta["image_size"])
        self.scale = float(np.iinfo(DTYPES[self.meta["dtype"]]).max)
        self._shards: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, shard_id: int) -> np.ndarray:
        if os.getpid() != self._pid:  # forked DataLoader worker: reopen its own maps
            self._shards, self._pid = {}, os.getpid()
        arr = self._shards.get(shard_id)
        if arr is None:
            arr = np.load(self.root / "shards" / f"shard-{shard_id:06d}.npy", mmap_mode="r")
            self._shards[shard_id] = arr
        return arr

    def raw(self, i: int) -> np.ndarray:
        """Stored integer image (S, S), a read-only view into the memmap."""
        row = self.rows[i]
        return self._shard(row.shard)[row.index]

    def image(self, i: int) -> np.ndarray:
        """Float32 image in [0, 1], shape (S, S)."""
        return self.raw(i).astype(np.float32) / self.scale

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state


class CacheBusyError(ValueError):
    """Another process holds the cache's lock: a usage error (wait for it, or use another cache)."""


class CacheLock:
    """Exclusive lock on the cache (ingest and split both write its manifest); released
    by the OS if the process dies. The holder's PID is written into the lock file, so a
    second run can say who holds it; the file is opened without truncating it (a waiting
    run must not erase the holder's PID) and never as a FIFO."""

    def __init__(self, root: Path):
        self.path = root / ".ingest.lock"

    def __enter__(self) -> "CacheLock":
        self.fh = open_regular(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise CacheBusyError(f"{self.path.parent}: cache is in use by {self._holder()} (another `fibrosis "
                                 f"ingest` or `split` is writing it; lock {self.path}); expected one writer at a "
                                 "time: wait for it to finish, or use another cache folder") from None
        self.fh.truncate(0)
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()
        return self

    def _holder(self) -> str:
        try:
            with open_regular(self.path, "r") as fh:
                pid = fh.read(32).strip()
        except (OSError, ValueError):
            pid = ""
        return f"PID {pid}" if pid.isdigit() else "another process (PID not recorded)"

    def __exit__(self, *exc: Any) -> None:
        try:
            self.fh.truncate(0)
        except OSError:
            pass
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
