"""Split at archive scale: the near-duplicate index finds exactly the pairs of a plain banded
search (kept here as the reference), from dHashes recorded at ingest, and a group merging many patient keys is named."""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest

from helpers.dicom_factory import make_dicom
from helpers.manifest import row
from fibrosis.config import IngestConfig, SplitConfig
from fibrosis.data.cache import MANIFEST_COLUMNS, CacheReader, to_cache_dtype
from fibrosis.data.ingest import ingest
from fibrosis.data.pixels import load_image
from fibrosis.data.split import (SPLITS, _order, assign, fractions, near_duplicate_arrays, near_duplicate_pairs,
                                  split_cache, stored_dhash)
from fibrosis.io import read_csv, write_csv
from helpers.paths import DEMO

DEMO_IMAGES = DEMO / "images"


def old_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """A plain banded search over all hashes in memory: the reference for equivalence."""
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


def clustered_hashes(n: int, seed: int, noise: float = 0.04) -> np.ndarray:
    """Hashes like an archive's: a few hundred anatomical 'templates' with per-image bit noise,
    exact copies and near copies (flipped bits) -- correlated, not uniform random."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(2, n // 20), 32), dtype=np.uint8)
    bits = np.unpackbits(base[rng.integers(0, len(base), n)], axis=1)
    bits ^= (rng.random(bits.shape) < noise).astype(np.uint8)
    for _ in range(n // 10):  # near copies at 0..6 bits
        src, dst = rng.integers(0, n, 2)
        bits[dst] = bits[src]
        bits[dst, rng.choice(256, int(rng.integers(0, 7)), replace=False)] ^= 1
    bits[n // 2:n // 2 + 30] = bits[0]  # a cluster of 30 identical copies
    return np.packbits(bits, axis=1)


@pytest.mark.parametrize("max_distance", [0, 1, 4, 8, 17, 31])
def test_index_finds_exactly_the_old_pairs_on_generated_hashes(max_distance):
    hashes = clustered_hashes(1500, seed=max_distance)
    expected = old_pairs(hashes, max_distance)
    assert len(expected) > 30  # the comparison is not between two empty lists
    assert near_duplicate_pairs(hashes, max_distance) == expected


def test_index_finds_exactly_the_old_pairs_on_the_demo_radiographs():
    files = sorted(DEMO_IMAGES.glob("*.dcm"))
    if not files:
        pytest.skip(f"{DEMO_IMAGES}: demo images absent")
    cfg = IngestConfig(image_size=128)
    hashes = np.stack([np.frombuffer(bytes.fromhex(stored_dhash(to_cache_dtype(load_image(f, cfg).image, "uint8"))),
                                     np.uint8) for f in files])
    for max_distance in (4, 16, 28, 31):
        assert near_duplicate_pairs(hashes, max_distance) == old_pairs(hashes, max_distance)
    assert len(old_pairs(hashes, 31)) > 0  # real radiographs at 31 bits: some pairs to compare


def test_index_edge_cases_all_pairs_and_group_filter():
    hashes = clustered_hashes(60, seed=3)
    brute = [(a, b, int(np.unpackbits(hashes[a] ^ hashes[b]).sum())) for a in range(60) for b in range(a + 1, 60)]
    assert near_duplicate_pairs(hashes, 256) == brute  # every pair is within 256 bits
    assert near_duplicate_pairs(hashes[:1], 4) == []
    groups = np.arange(60) // 2  # rows 2k and 2k+1 share a group: their pair is dropped
    a, b, d = near_duplicate_arrays(hashes, 40, groups=groups)
    assert list(zip(a.tolist(), b.tolist(), d.tolist())) == [p for p in brute if p[2] <= 40 and p[0] // 2 != p[1] // 2]


def _texture(seed: int, shape=(96, 80)) -> np.ndarray:
    import cv2
    noise = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), 6)
    field = (field - field.min()) / (field.max() - field.min())
    return np.rint(field * 4000).astype(np.uint16)


@pytest.fixture
def cache(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(16):
        make_dicom(d / f"p{i // 2}_{i % 2}.dcm", _texture(i), bits_stored=12, patient_id=f"P{i // 2}")
    twin = _texture(0).astype(np.int32) + np.random.default_rng(9).integers(-3, 4, (96, 80))
    make_dicom(d / "twin.dcm", twin.clip(0, 4095).astype(np.uint16), bits_stored=12, patient_id="OTHER-ID")
    cfg = IngestConfig(image_size=64, min_side=1, polarity_qa="keep")
    ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    return tmp_path / "c"


def test_ingest_records_the_dhash_split_would_compute_and_split_reads_no_pixels(cache, tmp_path):
    rows = read_csv(cache / "manifest.csv")
    reader = CacheReader(cache)
    assert [r["dhash"] for r in rows] == [stored_dhash(reader.raw(i)) for i in range(len(rows))]
    split_cache(cache, SplitConfig(train=0.5, val=0.25, test=0.25))
    expected = read_csv(cache / "manifest.csv"), (cache / "near_duplicates.csv").read_bytes()
    # without the shards, split can only succeed from the stored hashes
    (cache / "shards").rename(tmp_path / "shards-away")
    split_cache(cache, SplitConfig(train=0.5, val=0.25, test=0.25), reassign=True)
    assert (read_csv(cache / "manifest.csv"), (cache / "near_duplicates.csv").read_bytes()) == expected


def test_manifest_without_dhash_column_is_split_identically_and_filled(cache):
    split_cache(cache, SplitConfig(train=0.5, val=0.25, test=0.25))
    expected = read_csv(cache / "manifest.csv"), (cache / "near_duplicates.csv").read_bytes()
    old_columns = tuple(c for c in MANIFEST_COLUMNS if c != "dhash")  # a format-1 manifest of before
    rows = read_csv(cache / "manifest.csv")
    write_csv(cache / "manifest.csv", rows, old_columns)
    with open(cache / "manifest.csv", newline="") as fh:
        assert "dhash" not in next(csv.reader(fh))
    split_cache(cache, SplitConfig(train=0.5, val=0.25, test=0.25), reassign=True)
    assert (read_csv(cache / "manifest.csv"), (cache / "near_duplicates.csv").read_bytes()) == expected


def test_a_group_merging_many_patient_keys_is_named(tmp_path, caplog):
    d = tmp_path / "in"
    d.mkdir()
    img = _texture(5)
    for i in range(5):  # one image exported under five patient IDs
        make_dicom(d / f"copy{i}.dcm", img, bits_stored=12, patient_id=f"ID{i}")
    for i in range(6):
        make_dicom(d / f"other{i}.dcm", _texture(100 + i), bits_stored=12, patient_id=f"X{i}")
    ingest([d], tmp_path / "c", IngestConfig(image_size=64, min_side=1, polarity_qa="keep"), workers=1, progress=False)
    keys = sorted({r["patient_key"] for r in read_csv(tmp_path / "c" / "manifest.csv") if "copy" in r["path"]})
    summary = split_cache(tmp_path / "c", SplitConfig(max_group_patients=4))
    named = [w for w in summary.warnings if "merges 5 patient keys" in w]
    assert len(named) == 1 and all(k in named[0] for k in keys)
    assert "merges" in caplog.text
    assert not [w for w in split_cache(tmp_path / "c", SplitConfig(max_group_patients=5)).warnings if "merges" in w]


def test_a_no_op_resplit_does_nothing_and_reports_the_same(cache):
    cfg = SplitConfig(train=0.5, val=0.25, test=0.25)
    first = split_cache(cache, cfg)
    st = (cache / "manifest.csv").stat()
    again = split_cache(cache, cfg)
    assert ((cache / "manifest.csv").stat().st_ino, (cache / "manifest.csv").stat().st_mtime_ns) == \
        (st.st_ino, st.st_mtime_ns)  # not rewritten
    assert (again.counts, again.near_duplicates, again.warnings) == (first.counts, first.near_duplicates, first.warnings)
    assert (again.kept, again.assigned) == (first.kept + first.assigned, 0)  # as a full run would say
    # another seed with reassign, or a manifest changed by anyone, is split in full
    split_cache(cache, SplitConfig(train=0.5, val=0.25, test=0.25, seed=3), reassign=True)
    assert (cache / "manifest.csv").stat().st_ino != st.st_ino
    rows = read_csv(cache / "manifest.csv")
    for r in rows:
        r["split"] = ""
    write_csv(cache / "manifest.csv", rows, MANIFEST_COLUMNS)
    split_cache(cache, SplitConfig(train=0.5, val=0.25, test=0.25, seed=3))
    assert all(r["split"] for r in read_csv(cache / "manifest.csv"))


class _Groups:  # a plain dict-based union-find: the reference
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


def old_assign(rows: Iterable[dict[str, str]], cfg: SplitConfig, links: list[tuple[str, str]] = (),
           reassign: bool = False) -> tuple[dict[str, str], int, int]:
    """assign() written plainly with per-patient dicts: the reference for the
    array-based assign_codes."""
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


"split.json"  # what the last split saw (manifest sha256, config) and reported




def reference_split(cache: Path, cfg: SplitConfig, reassign: bool = False):
    """Split written plainly, row-wise: hashes from the pixels, the reference pair
    search, assign() over the full manifest rows. Returns (split per path, near_duplicates rows)."""
    from fibrosis.data.split import dhash

    rows = read_csv(cache / "manifest.csv")
    reader = CacheReader(cache)
    hashes = np.stack([dhash(reader.image(i)) for i in range(len(rows))])
    pairs = old_pairs(hashes, cfg.near_duplicate_hamming)
    links = [(rows[a]["patient_key"], rows[b]["patient_key"]) for a, b, _ in pairs
             if rows[a]["patient_key"] != rows[b]["patient_key"]]
    mapping, _, _ = old_assign(rows, cfg, links, reassign)
    for r in rows:
        r["split"] = mapping[r["patient_key"]]
    near = [{"path_a": rows[a]["path"], "path_b": rows[b]["path"], "patient_a": rows[a]["patient_key"],
             "patient_b": rows[b]["patient_key"], "split_a": rows[a]["split"], "split_b": rows[b]["split"],
             "distance": str(d)} for a, b, d in pairs
            if rows[a]["patient_key"] != rows[b]["patient_key"] or rows[a]["split"] != rows[b]["split"]]
    return {r["path"]: r["split"] for r in rows}, near


def _check_against_reference(cache: Path, cfg: SplitConfig, reassign: bool = False) -> None:
    expected = reference_split(cache, cfg, reassign)
    before = {r["path"]: r for r in read_csv(cache / "manifest.csv")}
    split_cache(cache, cfg, reassign=reassign)
    after = read_csv(cache / "manifest.csv")
    assert ({r["path"]: r["split"] for r in after}, read_csv(cache / "near_duplicates.csv")) == expected
    assert [{k: v for k, v in r.items() if k != "split"} for r in after] == \
        [{k: v for k, v in before[r["path"]].items() if k != "split"} for r in after]  # nothing else moves


def test_the_streaming_split_equals_the_old_row_wise_split(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(4)
    labels = ["image,fibrosis"]
    for i in range(60):  # 30 patients; every 7th image is a noisy copy of another under a third ID
        src = _texture(i if i % 7 else i // 7)
        img = np.clip(src.astype(np.int32) + rng.integers(-3, 4, src.shape), 0, 4095).astype(np.uint16)
        pid = f"P{i // 2}" if i % 7 else f"COPY{i}"
        make_dicom(d / f"f{i:02d}.dcm", img, bits_stored=12, patient_id=pid)
        labels.append(f"f{i:02d}.dcm,{'' if i % 11 == 0 else int(i % 5 == 0)}")
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    cfg_i = IngestConfig(image_size=64, min_side=1, polarity_qa="keep", labels_csv=str(tmp_path / "labels.csv"))
    ingest([d], tmp_path / "c", cfg_i, workers=1, progress=False)
    cfg = SplitConfig(train=0.5, val=0.2, test=0.2, calib=0.1, seed=7, near_duplicate_hamming=6)
    _check_against_reference(tmp_path / "c", cfg)
    for i in range(60, 70):  # new patients: earlier assignments kept, new ones dealt
        make_dicom(d / f"f{i:02d}.dcm", _texture(i), bits_stored=12, patient_id=f"P{i // 2}")
    ingest([d], tmp_path / "c", cfg_i, workers=1, progress=False)
    _check_against_reference(tmp_path / "c", cfg)
    _check_against_reference(tmp_path / "c", SplitConfig(seed=3, near_duplicate_hamming=20), reassign=True)


def test_the_demo_split_equals_the_old_row_wise_split(tmp_path):
    if not any(DEMO_IMAGES.glob("*.dcm")):
        pytest.skip(f"{DEMO_IMAGES}: demo images absent")
    ingest([DEMO_IMAGES], tmp_path / "c", IngestConfig(image_size=128), workers=2, progress=False)
    _check_against_reference(tmp_path / "c", SplitConfig())
    _check_against_reference(tmp_path / "c", SplitConfig(seed=5, near_duplicate_hamming=31), reassign=True)
    assert read_csv(tmp_path / "c" / "near_duplicates.csv")  # at 31 bits some real pairs exist


@pytest.mark.parametrize("seed", range(6))
def test_the_array_assign_equals_the_old_per_patient_assign(seed):
    """assign_codes (through assign) deals exactly as the plain dict-per-patient reference: groups
    linked in chains, mixed labels, earlier assignments (majority, ties), new patients."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    keys = [f"k{int(x):04d}" for x in rng.permutation(1000)[:n]]
    cfgs = [SplitConfig(seed=seed), SplitConfig(train=0.5, val=0.2, test=0.2, calib=0.1, seed=seed + 1),
            SplitConfig(train=0.8, val=0.2, test=0.0, seed=seed + 2)]
    cfg = cfgs[seed % 3]
    rows = []
    for _ in range(3 * n):
        rows.append({"patient_key": keys[int(rng.integers(n))],
                     "label": str(rng.choice(["0", "1", "", "x"], p=[0.5, 0.2, 0.2, 0.1])),
                     "split": str(rng.choice(["", "train", "val", "test", "calib"], p=[0.4, 0.3, 0.1, 0.1, 0.1]))})
    links = [(keys[int(rng.integers(n))], keys[int(rng.integers(n))]) for _ in range(int(rng.integers(0, n)))]
    present = {r["patient_key"] for r in rows}
    links = [(x, y) for x, y in links if x in present and y in present]
    # "x": a label that is no 0 or 1 counts as none in the reference; a manifest row cannot hold one
    typed = [row(patient_key=r["patient_key"], label=r["label"].replace("x", ""), split=r["split"]) for r in rows]
    for reassign in (False, True):
        assert assign(typed, cfg, links, reassign) == old_assign(rows, cfg, links, reassign)


def test_group_roots_are_the_smallest_member_of_each_linked_group():
    """The array union-find on long chains (the worst case for pointer jumping), stars and
    random links: each patient's root is the smallest code of its group, as the reference union-find."""
    from fibrosis.data.split import group_roots

    rng = np.random.default_rng(0)
    n = 500
    chain = rng.permutation(n)
    cases = [np.stack([chain[:-1], chain[1:]], 1),  # one chain through every patient, shuffled
             np.stack([np.full(n - 1, 7), np.arange(n)[np.arange(n) != 7]], 1),  # a star
             rng.integers(0, n, (300, 2)), np.zeros((0, 2), np.int64)]
    for links in cases:
        parent = list(range(n))

        def find(x: int, parent: list[int] = parent) -> int:
            while parent[x] != x:
                x = parent[x]
            return x

        for x, y in links.tolist():
            rx, ry = find(x), find(y)
            parent[max(rx, ry)] = min(rx, ry)
        assert group_roots(n, links).tolist() == [find(x) for x in range(n)]


@pytest.mark.parametrize("odd", ['a,b "quoted" é.dcm', "line\nbreak.dcm"])
def test_near_duplicate_paths_are_read_back_exactly(tmp_path, odd):
    """near_duplicates.csv names rows by reading their paths back from the rewritten manifest
    by offset: paths that need quoting, non-ASCII ones and (the slow csv fallback) a quoted
    newline come back as written."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (6, 32), dtype=np.uint8)
    hashes[3] = hashes[0]
    hashes[3, 0] ^= 1  # rows 0 and 3: near copies under two patients
    rows = [{"path": f"{k}-{odd}", "shard": 0, "index": k, "patient_key": f"p{k // 2}", "label": k % 2,
             "dhash": hashes[k].tobytes().hex()} for k in range(6)]
    write_csv(tmp_path / "manifest.csv", rows, MANIFEST_COLUMNS)
    s = split_cache(tmp_path, SplitConfig())
    assert s.near_duplicates == 1
    (pair,) = read_csv(tmp_path / "near_duplicates.csv")
    assert (pair["path_a"], pair["path_b"], pair["distance"]) == (f"0-{odd}", f"3-{odd}", "1")
    assert [r["path"] for r in read_csv(tmp_path / "manifest.csv")] == [r["path"] for r in rows]
