"""A no-op re-ingest: files unchanged since they were committed (size, mtime_ns,
device:inode) are skipped without being read; ``verify`` hashes them anyway; a touched file is
hashed once and its new stamp recorded; a cache of an older version gets its stamps filled."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.dicom_factory import chest_phantom, make_dicom, to_stored

from fibrosis.config import IngestConfig
from fibrosis.data.cache import MANIFEST_COLUMNS
from fibrosis.data.ingest import ingest
from fibrosis.io import read_csv, write_csv

HOUR_NS = 3600 * 10**9
STAMP = ("file_size", "file_mtime_ns", "file_id")


@pytest.fixture
def cfg() -> IngestConfig:
    return IngestConfig(image_size=32, min_side=1, shard_size=2)


def _chest(path: Path, seed: int) -> Path:
    make_dicom(path, to_stored(chest_phantom(64, 60, seed=seed), 12), bits_stored=12,
               WindowCenter=2048, WindowWidth=4096, patient_id=f"P{seed}")
    st = os.stat(path)  # an hour old: not "racily clean", its stamp is trusted
    os.utime(path, ns=(st.st_atime_ns - HOUR_NS, st.st_mtime_ns - HOUR_NS))
    return path


def _rewrite_keeping_stamp(path: Path, seed: int) -> None:
    """Other pixel values (the last bytes of the file are pixel data), same size, same inode
    (written in place), mtime put back: only a content hash can tell. If ingest skips this
    file, it did not read it."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(st.st_size - 256)
        fh.write(np.random.default_rng(seed).integers(0, 16, 256, dtype=np.uint8).tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns, os.stat(path).st_size) == \
        (st.st_ino, st.st_mtime_ns, st.st_size)


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(5):
        _chest(d / f"ok{i:02d}.dcm", i)
    return d


def test_unchanged_files_are_skipped_unread_and_verify_hashes_them(tmp_path, folder, cfg):
    cache = tmp_path / "cache"
    first = ingest([folder], cache, cfg, workers=1, progress=False)
    rows = read_csv(cache / "manifest.csv")
    assert all(r[c] for r in rows for c in STAMP) and first.ingested == 5
    _rewrite_keeping_stamp(folder / "ok01.dcm", seed=77)
    again = ingest([folder], cache, cfg, workers=1, progress=False)
    assert (again.ingested, again.skipped) == (0, 5)
    assert read_csv(cache / "manifest.csv") == rows  # not read: the old hash stands
    verified = ingest([folder], cache, cfg, workers=1, progress=False, verify=True)
    assert (verified.ingested, verified.skipped) == (1, 4)
    new = {r["path"]: r for r in read_csv(cache / "manifest.csv")}
    old = {r["path"]: r for r in rows}
    changed = str((folder / "ok01.dcm").resolve())
    assert new[changed]["content_hash"] != old[changed]["content_hash"]
    assert all(new[p] == old[p] for p in old if p != changed)


def test_a_touched_file_is_hashed_once_then_skipped_unread(tmp_path, folder, cfg):
    cache = tmp_path / "cache"
    ingest([folder], cache, cfg, workers=1, progress=False)
    target = folder / "ok02.dcm"
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    again = ingest([folder], cache, cfg, workers=1, progress=False)
    assert (again.ingested, again.skipped, again.relabelled) == (0, 5, 0)
    row = {r["path"]: r for r in read_csv(cache / "manifest.csv")}[str(target.resolve())]
    assert row["file_mtime_ns"] == str(st.st_mtime_ns + 10**9)  # the new stamp is recorded
    _rewrite_keeping_stamp(target, seed=78)
    third = ingest([folder], cache, cfg, workers=1, progress=False)
    assert (third.ingested, third.skipped) == (0, 5)  # skipped unread on the recorded stamp


def test_a_recent_file_is_not_trusted_by_its_stamp(tmp_path, folder, cfg):
    """A file modified less than the mtime granularity before it was read could change again
    without its mtime moving: its stamp is left empty, so the next run hashes it."""
    fresh = folder / "fresh.dcm"
    make_dicom(fresh, to_stored(chest_phantom(64, 60, seed=40), 12), bits_stored=12,
               WindowCenter=2048, WindowWidth=4096, patient_id="P40")
    cache = tmp_path / "cache"
    ingest([folder], cache, cfg, workers=1, progress=False)
    row = {r["path"]: r for r in read_csv(cache / "manifest.csv")}[str(fresh.resolve())]
    assert not row["file_mtime_ns"]


def test_a_cache_without_stamps_is_filled_and_keeps_every_other_value(tmp_path, folder, cfg):
    cache = tmp_path / "cache"
    ingest([folder], cache, cfg, workers=1, progress=False)
    before = read_csv(cache / "manifest.csv")
    old_columns = tuple(c for c in MANIFEST_COLUMNS if c not in STAMP)  # as an older version wrote them
    for part in [cache / "manifest.csv", *sorted((cache / "parts").glob("shard-*.csv"))]:
        write_csv(part, read_csv(part), old_columns)
    again = ingest([folder], cache, cfg, workers=1, progress=False)
    assert (again.ingested, again.skipped) == (0, 5)
    assert read_csv(cache / "manifest.csv") == before  # stamps filled, every other value identical
    _rewrite_keeping_stamp(folder / "ok03.dcm", seed=79)
    assert ingest([folder], cache, cfg, workers=1, progress=False).ingested == 0  # now skipped unread


def test_the_runs_own_view_consolidates_exactly_as_the_parts_do(tmp_path, folder, cfg):
    """Ingest consolidates from the entries it committed (one copy in memory), not by reading
    every part back: both must give the same manifest and rejects, byte for byte."""
    from fibrosis.data.ingest import consolidate

    cache = tmp_path / "cache"
    (folder / "junk.txt").write_text("not an image")
    ingest([folder], cache, cfg, workers=1, progress=False)
    _chest(folder / "ok05.dcm", 5)
    os.utime(folder / "ok01.dcm")  # touched: a rows-only part with its new stamp
    with open(folder / "ok02.dcm", "r+b") as fh:  # changed content: a new row
        fh.seek(-64, os.SEEK_END)
        fh.write(bytes(64))
    ingest([folder], cache, cfg, workers=1, progress=False)
    written = (cache / "manifest.csv").read_bytes(), (cache / "rejects.csv").read_bytes()
    assert consolidate(cache) == (6, 1)
    assert ((cache / "manifest.csv").read_bytes(), (cache / "rejects.csv").read_bytes()) == written


def _manifest_rows_alive() -> int:
    """Manifest rows (:class:`ManifestRow` instances) alive in this process."""
    import gc

    from fibrosis.data.manifest import ManifestRow

    gc.collect()
    return sum(type(o) is ManifestRow for o in gc.get_objects())


def test_the_planner_holds_no_row_per_committed_file_in_memory(tmp_path, cfg, monkeypatch):
    """Ingest's view of the committed cache (the rows it plans skips and relabels
    with, the duplicate owners) is an on-disk index, so while the files are decoded the run holds
    at most a shard's worth of manifest rows, not one per committed file; the scratch index is
    gone after the run. Counted, not timed: the cost in N is measured by benchmarks/scale.py."""
    import fibrosis.data.ingest as ingest_mod
    from fibrosis.data.ingest_index import INDEX_NAME

    d = tmp_path / "in"
    d.mkdir()
    for i in range(16):
        _chest(d / f"ok{i:02d}.dcm", i)
    cache = tmp_path / "cache"
    ingest([d], cache, cfg, workers=1, progress=False)
    before = _manifest_rows_alive()  # other tests' fixtures may hold rows of their own
    seen: list[int] = []
    real = ingest_mod.process_file

    def counting(task, c):
        if task[0].endswith("ok15.dcm"):  # the last file: every other one was committed or is pending
            seen.append(_manifest_rows_alive() - before)
        return real(task, c)

    monkeypatch.setattr(ingest_mod, "process_file", counting)
    again = ingest([d], cache, cfg, workers=1, progress=False, verify=True)  # every file is a task
    assert (again.ingested, again.skipped) == (0, 16) and len(seen) == 1
    assert max(seen) <= 2 * cfg.shard_size + 2, seen  # one pending rows-only part, not 16 rows
    assert not (cache / INDEX_NAME).exists()


def _file_ids(cache: Path) -> dict[str, tuple[int, int]]:
    return {n: (os.stat(cache / n).st_ino, os.stat(cache / n).st_mtime_ns) for n in ("manifest.csv", "rejects.csv")}


def test_a_no_op_rewrites_neither_manifest_nor_rejects_even_after_a_split(tmp_path, folder, cfg):
    """Consolidation is skipped when nothing was committed and neither file was touched since
    (the stamp in consolidated.json); split moves the stamp along, because consolidating a
    split manifest gives it back byte for byte -- checked here by forcing it."""
    from fibrosis.config import SplitConfig
    from fibrosis.artefacts import CONSOLIDATED
    from fibrosis.data.ingest import consolidate
    from fibrosis.data.split import split_cache

    cache = tmp_path / "cache"
    (folder / "junk.dcm").write_bytes(b"not a dicom")  # one reject, so rejects.csv has a row
    ingest([folder], cache, cfg, workers=1, progress=False)
    split_cache(cache, SplitConfig(train=0.6, val=0.2, test=0.2, calib=0.0))
    split_bytes = (cache / "manifest.csv").read_bytes()
    assert {r["split"] for r in read_csv(cache / "manifest.csv")} - {""}
    before, parts = _file_ids(cache), sorted(os.listdir(cache / "parts"))
    again = ingest([folder], cache, cfg, workers=1, progress=False)
    assert (again.ingested, again.skipped, sum(again.rejected.values())) == (0, 5, 1)
    assert _file_ids(cache) == before  # not rewritten
    assert sorted(os.listdir(cache / "parts")) == parts  # the junk file's same verdict: not committed again
    (cache / CONSOLIDATED).unlink()
    assert consolidate(cache) == (5, 1)  # the full rewrite gives the same bytes
    assert (cache / "manifest.csv").read_bytes() == split_bytes


def test_a_hand_edited_manifest_or_a_new_file_is_consolidated_again(tmp_path, folder, cfg):
    cache = tmp_path / "cache"
    ingest([folder], cache, cfg, workers=1, progress=False)
    good = (cache / "manifest.csv").read_bytes()
    (cache / "manifest.csv").write_bytes(good.rsplit(b"\n", 2)[0] + b"\n")  # the last row lost
    ingest([folder], cache, cfg, workers=1, progress=False)
    assert (cache / "manifest.csv").read_bytes() == good  # not trusted: rewritten from the parts
    _chest(folder / "ok99.dcm", 99)
    ingest([folder], cache, cfg, workers=1, progress=False)
    assert len(read_csv(cache / "manifest.csv")) == 6


def test_a_version_with_other_manifest_columns_consolidates_again(tmp_path, folder, cfg, monkeypatch):
    import fibrosis.data.cache as cache_mod
    import fibrosis.data.manifest as manifest_mod

    cache = tmp_path / "cache"
    ingest([folder], cache, cfg, workers=1, progress=False)
    before = _file_ids(cache)["manifest.csv"]
    more = MANIFEST_COLUMNS + ("a_new_column",)  # appended, so optional on read as every appended column
    for mod in (cache_mod, manifest_mod):
        monkeypatch.setattr(mod, "MANIFEST_COLUMNS", more)
    monkeypatch.setattr(manifest_mod, "OPTIONAL_COLUMNS", manifest_mod.OPTIONAL_COLUMNS | {"a_new_column"})
    ingest([folder], cache, cfg, workers=1, progress=False)
    assert _file_ids(cache)["manifest.csv"] != before
    with open(cache / "manifest.csv") as fh:
        assert fh.readline().rstrip("\n").endswith(",a_new_column")


def test_a_folder_listable_again_keeps_the_no_op_and_blocked_again_is_reported(tmp_path, folder, cfg, unlistable):
    """Whether a folder rejected as unlistable can be listed now is part of the stamp: its
    reject leaves rejects.csv once, later no-op runs rewrite nothing, and blocking it again
    brings the reject back (though the same verdict adds no part)."""
    cache, locked = tmp_path / "cache", folder / "locked"
    locked.mkdir()
    _chest(locked / "x.dcm", 7)
    unlistable.add(str(locked))
    ingest([folder], cache, cfg, workers=1, progress=False)
    assert [r["path"] for r in read_csv(cache / "rejects.csv")] == [str(locked)]
    unlistable.discard(str(locked))
    ingest([folder], cache, cfg, workers=1, progress=False)
    assert read_csv(cache / "rejects.csv") == [] and len(read_csv(cache / "manifest.csv")) == 6
    before = _file_ids(cache)
    ingest([folder], cache, cfg, workers=1, progress=False)
    assert _file_ids(cache) == before
    unlistable.add(str(locked))
    summary = ingest([folder], cache, cfg, workers=1, progress=False)
    assert [r["path"] for r in read_csv(cache / "rejects.csv")] == [str(locked)] and summary.rejected["error"] == 1
