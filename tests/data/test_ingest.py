"""`fibrosis ingest`: accounting invariant, re-runs, kill-midway, exit status, labels, pseudonyms."""
from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers.dicom_factory import chest_phantom, make_dicom, make_png, to_stored, truncate

from fibrosis.data.cache import MANIFEST_COLUMNS, CacheReader

from fibrosis.io import read_csv, write_csv
from fibrosis.config import IngestConfig
from fibrosis.data.identity import SaltMismatchError, patient_key, resolve_salt
from fibrosis.data.ingest import discover, ingest
from fibrosis.data.records import Skipped
from fibrosis.data.labels import LabelsError
from fibrosis.data.workers import ordered_map
from helpers.paths import REPO

SECRET_ID, SECRET_NAME = "MRN-SECRET-7731", "Secretname^Patricia"


@pytest.fixture
def cfg() -> IngestConfig:
    return IngestConfig(image_size=32, min_side=1, shard_size=2)


def _chest(path: Path, seed: int, **kw) -> Path:
    kw.setdefault("patient_id", f"P{seed}")
    return make_dicom(path, to_stored(chest_phantom(64, 60, seed=seed), 12), bits_stored=12,
                      WindowCenter=2048, WindowWidth=4096, **kw)


@pytest.fixture
def mixed(tmp_path) -> dict[str, Path]:
    """One file per outcome, in nested folders, including a hidden file (an input like any other)."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    f = {f"ok{i}": _chest(d / f"ok{i}.dcm", i) for i in range(4)}
    f["secret"] = _chest(d / "sub" / "secret.dcm", 9, patient_id=SECRET_ID, patient_name=SECRET_NAME)
    f["lateral"] = _chest(d / "lat.dcm", 5, view="LL")
    f["truncated"] = truncate(_chest(d / "trunc.dcm", 6), 0.5)
    (d / "notes.txt").write_text("not an image")
    f["text"] = d / "notes.txt"
    f["png"] = make_png(d / "sub" / "x.png", to_stored(chest_phantom(64, 64, seed=7), 8))
    f["copy"] = d / "sub" / "copy_of_ok0.dcm"
    shutil.copy(f["ok0"], f["copy"])
    (d / ".DS_Store").write_text("hidden")
    f["hidden"] = d / ".DS_Store"
    return f


def _accounting(cache: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    rows = read_csv(cache / "manifest.csv")
    rejects = read_csv(cache / "rejects.csv")
    paths = [r["path"] for r in rows] + [r["path"] for r in rejects]
    assert len(paths) == len(set(paths)), "a path appears twice in manifest + rejects"
    return {r["path"]: r for r in rows}, {r["path"]: r for r in rejects}


def test_every_input_path_appears_exactly_once(tmp_path, mixed, cfg):
    cache = tmp_path / "cache"
    summary = ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    rows, rejects = _accounting(cache)
    assert set(rows) | set(rejects) == {str(p.resolve()) for p in mixed.values()}
    kinds = {Path(p).name: r["kind"] for p, r in rejects.items()}
    assert kinds == {"lat.dcm": "excluded", "trunc.dcm": "error", "notes.txt": "error", ".DS_Store": "error",
                     "ok0.dcm": "duplicate"} or kinds == {"lat.dcm": "excluded", "trunc.dcm": "error",
                                                          "notes.txt": "error", ".DS_Store": "error",
                                                          "copy_of_ok0.dcm": "duplicate"}
    dup = next(r for r in rejects.values() if r["kind"] == "duplicate")
    assert "identical content" in dup["reason"]
    assert (summary.ingested, summary.rejected) == (6, {"error": 3, "excluded": 1, "duplicate": 1})
    assert summary.exit_code == 0 and summary.ok()
    assert len(CacheReader(cache)) == 6 and CacheReader(cache).raw(5).shape == (32, 32)


def test_same_sop_instance_reexported_is_a_duplicate(tmp_path, cfg):
    d = tmp_path / "in"
    d.mkdir()
    _chest(d / "a.dcm", 1, sop_uid="1.2.3.4.5")
    make_dicom(d / "b.dcm", to_stored(chest_phantom(64, 60, seed=1), 12), "rle", bits_stored=12,
               sop_uid="1.2.3.4.5")
    ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    _, rejects = _accounting(tmp_path / "c")
    assert "same (0008,0018) SOPInstanceUID 1.2.3.4.5" in rejects[str(d / "b.dcm")]["reason"]


def test_rerun_skips_retries_rejects_and_reingests_changed_files(tmp_path, mixed, cfg):
    cache = tmp_path / "cache"
    first = ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    rows1 = read_csv(cache / "manifest.csv")
    again = ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    assert (again.ingested, again.skipped) == (0, first.ingested)
    assert again.rejected == first.rejected  # rejects are re-tried, with the same outcome
    assert read_csv(cache / "manifest.csv") == rows1
    _chest(mixed["ok1"], 11)  # new content under the same path
    third = ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    assert (third.ingested, third.skipped) == (1, first.ingested - 1)
    rows, _ = _accounting(cache)
    assert len(rows) == len(rows1)
    assert rows[str(mixed["ok1"].resolve())]["content_hash"] != {r["path"]: r for r in rows1}[
        str(mixed["ok1"].resolve())]["content_hash"]


def test_split_column_survives_reconsolidation(tmp_path, mixed, cfg):
    from fibrosis.config import SplitConfig
    from fibrosis.data.split import split_cache

    cache = tmp_path / "cache"
    ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    split_cache(cache, SplitConfig())
    before = {r["path"]: r["split"] for r in read_csv(cache / "manifest.csv")}
    _chest(tmp_path / "in" / "new.dcm", 21)
    ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    after = {r["path"]: r["split"] for r in read_csv(cache / "manifest.csv")}
    assert all(after[p] == s for p, s in before.items())
    assert after[str((tmp_path / "in" / "new.dcm").resolve())] == ""  # until `fibrosis split` runs


KILLER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from fibrosis.data import cache
    from fibrosis.config import IngestConfig
    from fibrosis.data.ingest import ingest
    original, calls = cache.CacheWriter.write_shard, []
    def dying(self, shard_id, images, rows, rejects):
        calls.append(shard_id)
        if len(calls) == 3:  # worst moment: shard array written, its manifest part not yet
            np.save(self.root / "shards" / f"shard-{shard_id:06d}.npy", np.stack(images))
            os._exit(9)
        return original(self, shard_id, images, rows, rejects)
    cache.CacheWriter.write_shard = dying
    ingest([sys.argv[1]], sys.argv[2], IngestConfig(image_size=32, min_side=1, shard_size=2),
           workers=1, progress=False)
""")


def test_killed_run_then_rerun_loses_and_duplicates_nothing(tmp_path, cfg):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(9):
        _chest(d / f"img{i}.dcm", i)
    (d / "bad.dcm").write_bytes(b"\0" * 300)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, str(d), str(killed)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert len(list((killed / "parts").glob("shard-*.csv"))) == 2  # two commits survived
    assert len(list((killed / "shards").glob("*.npy"))) == 3  # plus one orphan array
    resumed = ingest([d], killed, cfg, workers=1, progress=False)
    assert resumed.skipped == 4 and resumed.ingested == 5
    clean = tmp_path / "clean"
    ingest([d], clean, cfg, workers=1, progress=False)
    rows_k, rej_k = _accounting(killed)
    rows_c, rej_c = _accounting(clean)
    assert set(rows_k) == set(rows_c) and set(rej_k) == set(rej_c) and len(rows_k) == 9
    rk, rc = CacheReader(killed), CacheReader(clean)
    index_k = {r.path: i for i, r in enumerate(rk.rows)}
    for i, r in enumerate(rc.rows):
        np.testing.assert_array_equal(rk.raw(index_k[r.path]), rc.raw(i))
    shard_ids = {r.shard for r in rk.rows}
    assert {int(p.stem.split("-")[1]) for p in (killed / "shards").glob("*.npy")} == shard_ids  # orphan gone


def test_exit_status(tmp_path, mixed, cfg):
    cache = tmp_path / "cache"
    assert ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False, strict=True).exit_code == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.dcm").write_text("nope")
    nothing = ingest([bad], tmp_path / "c2", cfg, workers=1, progress=False)
    assert nothing.status == "nothing-ingested" and nothing.exit_code == 1 and not nothing.ok()
    (tmp_path / "empty").mkdir()
    assert ingest([tmp_path / "empty"], tmp_path / "c3", cfg, workers=1, progress=False).exit_code == 1
    with pytest.raises(FileNotFoundError, match="input not found"):
        ingest([tmp_path / "missing"], tmp_path / "c4", cfg, workers=1, progress=False)


def test_labels_join_hints_and_patient_keys(tmp_path, cfg):
    d = tmp_path / "in"
    d.mkdir()
    grey = to_stored(chest_phantom(64, 64), 8)
    make_png(d / "00001_000.png", grey)
    make_png(d / "00001_001.png", grey[::-1].copy())
    make_png(d / "00002_000.png", grey[:, ::-1].copy())
    _chest(d / "by_sop.dcm", 1, sop_uid="1.2.826.1")
    _chest(d / "by_study.dcm", 2, study_uid="1.2.826.2")
    _chest(d / "nolabel.dcm", 3)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,sop_instance_uid,study_instance_uid,patient_id,age,sex,view,fibrosis\n"
                      "00001_000.png,,,1,61,F,PA,1\n00001_001.png,,,1,62,F,PA,0\n00002_000.png,,,2,40,M,AP,0\n"
                      ",1.2.826.1,,,,,,1\n,,1.2.826.2,,,,,0\n")
    summary = ingest([d], tmp_path / "c", dataclasses.replace(cfg, labels_csv=str(labels)),
                     workers=1, progress=False)
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "c" / "manifest.csv")}
    assert {n: r["label"] for n, r in rows.items()} == {
        "00001_000.png": "1", "00001_001.png": "0", "00002_000.png": "0", "by_sop.dcm": "1",
        "by_study.dcm": "0", "nolabel.dcm": ""}
    assert summary.unlabeled == 1
    assert rows["00001_000.png"]["patient_key"] == rows["00001_001.png"]["patient_key"]
    assert rows["00001_000.png"]["patient_key"] != rows["00002_000.png"]["patient_key"]
    assert (rows["00002_000.png"]["sex"], rows["00002_000.png"]["age"], rows["00002_000.png"]["view_position"]) \
        == ("M", "40", "AP")
    assert rows["00001_000.png"]["sop_uid"].startswith("file:00001_000-")


def test_bad_labels_csv_is_refused(tmp_path, cfg):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis\na.png,maybe\n")
    with pytest.raises(LabelsError, match=r"label 'maybe'; expected one of"):
        ingest([tmp_path], tmp_path / "c", dataclasses.replace(cfg, labels_csv=str(labels)), progress=False)
    labels.write_text("image,fibrosis\na.png,1\na.png,0\n")
    with pytest.raises(LabelsError, match="appears twice"):
        ingest([tmp_path], tmp_path / "c", dataclasses.replace(cfg, labels_csv=str(labels)), progress=False)


def test_no_patient_identifiers_in_any_output(tmp_path, mixed, cfg, monkeypatch):
    monkeypatch.delenv("FIBROSIS_SALT", raising=False)
    cache = tmp_path / "cache"
    ingest([tmp_path / "in"], cache, cfg, workers=1, progress=False)
    for f in cache.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert SECRET_ID.encode() not in data and b"Secretname" not in data, f
    salt = resolve_salt(cache)
    row = next(r for r in read_csv(cache / "manifest.csv") if r["path"].endswith("secret.dcm"))
    assert row["patient_key"] == patient_key(SECRET_ID, salt) and len(row["patient_key"]) == 16


def test_salt_from_environment_or_created_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBROSIS_SALT", "site-secret")
    assert resolve_salt(tmp_path) == "site-secret" and not (tmp_path / "salt.key").exists()
    monkeypatch.delenv("FIBROSIS_SALT")
    salt = resolve_salt(tmp_path)
    assert len(salt) == 64 and resolve_salt(tmp_path) == salt
    assert stat.S_IMODE((tmp_path / "salt.key").stat().st_mode) == 0o600
    assert patient_key("A", salt) != patient_key("A", "other") and patient_key("A", salt) != patient_key("B", salt)


def test_hidden_files_and_unreadable_folders_are_accounted_for(tmp_path, cfg, unlistable):
    """Review: .IM0001 and .snap/IM0002 appeared in neither CSV; an unreadable folder was walked past."""
    d = tmp_path / "in"
    (d / ".snap").mkdir(parents=True)
    (d / "locked").mkdir()
    _chest(d / ".IM0001", 1)
    _chest(d / ".snap" / "IM0002", 2)
    (d / ".hidden.txt").write_text("not an image")
    target = str(d / "locked")
    unlistable.add(target)
    summary = ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    rows, rejects = _accounting(tmp_path / "c")
    assert set(rows) == {str(d / ".IM0001"), str(d / ".snap" / "IM0002")}
    assert {p: (r["kind"], r["reason"]) for p, r in rejects.items() if "locked" in p} == {
        target: ("error", "cannot list folder: Permission denied")}
    assert set(rejects) == {target, str(d / ".hidden.txt")}
    assert (summary.inputs, summary.ingested, summary.rejected["error"]) == (4, 2, 2)
    with pytest.raises(OSError, match=r"locked: cannot list folder: Permission denied"):
        discover([d])  # the files-only view refuses rather than drop the folder silently
    unlistable.discard(target)  # readable again: its files are ingested and the folder's reject is gone
    _chest(d / "locked" / "x.dcm", 3)
    ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    rows, rejects = _accounting(tmp_path / "c")
    assert str(d / "locked" / "x.dcm") in rows and set(rejects) == {str(d / ".hidden.txt")}


def test_missing_file_listed_in_csv_is_a_reject(tmp_path, cfg):
    _chest(tmp_path / "a.dcm", 1)
    (tmp_path / "list.csv").write_text("path\na.dcm\ngone.dcm\n")
    ingest([tmp_path / "list.csv"], tmp_path / "c", cfg, workers=1, progress=False)
    _, rejects = _accounting(tmp_path / "c")
    assert "cannot read file" in rejects[str(tmp_path / "gone.dcm")]["reason"]


def test_changed_preprocessing_is_refused(tmp_path, mixed, cfg):
    ingest([tmp_path / "in"], tmp_path / "c", cfg, workers=1, progress=False)
    with pytest.raises(ValueError, match="preprocessing"):
        ingest([tmp_path / "in"], tmp_path / "c", dataclasses.replace(cfg, voi_percentiles=(1.0, 99.0)),
               workers=1, progress=False)


def test_worker_processes_give_the_same_cache(tmp_path, mixed, cfg):
    ingest([tmp_path / "in"], tmp_path / "one", cfg, workers=1, progress=False)
    ingest([tmp_path / "in"], tmp_path / "two", cfg, workers=2, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "patient_key"} for r in rows]  # noqa: E731
    assert strip(read_csv(tmp_path / "one" / "manifest.csv")) == strip(read_csv(tmp_path / "two" / "manifest.csv"))
    assert read_csv(tmp_path / "one" / "rejects.csv") == read_csv(tmp_path / "two" / "rejects.csv")
    a, b = CacheReader(tmp_path / "one"), CacheReader(tmp_path / "two")
    for i in range(len(a)):
        np.testing.assert_array_equal(a.raw(i), b.raw(i))


def _dies_on_crash(task, cfg):
    if "crash" in task[0]:
        os._exit(11)  # what a segfault in a native decoder looks like to the pool
    return Skipped(task[0], "")


def test_a_crashing_decoder_rejects_only_its_file(cfg):
    tasks = [(f"/x/{n}", "", {}) for n in ("a", "b", "crash", "c", "d", "e")]
    results = list(ordered_map(_dies_on_crash, tasks, cfg, workers=2))
    assert [r.path for r in results] == [t[0] for t in tasks]
    assert [type(r).__name__ for r in results] == ["Skipped", "Skipped", "Rejected", "Skipped", "Skipped", "Skipped"]
    assert "crashed its worker process" in results[2].reason


def test_workers_that_cannot_start_stop_the_run_instead_of_rejecting_files(tmp_path):
    """A __main__ that children cannot re-import kills every worker: that is not the files' fault."""
    script = textwrap.dedent("""
        from fibrosis.config import IngestConfig
        from fibrosis.data.workers import ordered_map, process_file
        tasks = [(f"/x/{i}", "", {}) for i in range(3)]
        try:
            list(ordered_map(process_file, tasks, IngestConfig(), workers=2))
        except RuntimeError as exc:
            print("RAISED", exc)
    """)
    proc = subprocess.run([sys.executable, "-"], input=script, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert "RAISED ingest worker processes die before doing any work" in proc.stdout, proc.stderr[-2000:]


def test_labels_join_on_the_relative_path_and_refuse_ambiguous_names(tmp_path, cfg):
    """PACS exports repeat IM0001.dcm in every study folder: a label must reach one patient."""
    d = tmp_path / "in"
    (d / "studyA").mkdir(parents=True)
    (d / "studyB").mkdir()
    _chest(d / "studyA" / "IM0001.dcm", 1, patient_id="A")
    _chest(d / "studyB" / "IM0001.dcm", 2, patient_id="B")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis\nstudyA/IM0001.dcm,1\n")
    ingest([d], tmp_path / "c", dataclasses.replace(cfg, labels_csv=str(labels)), workers=1, progress=False)
    rows = {Path(r["path"]).parent.name: r["label"] for r in read_csv(tmp_path / "c" / "manifest.csv")}
    assert rows == {"studyA": "1", "studyB": ""}
    labels.write_text("image,fibrosis\nIM0001.dcm,1\n")
    with pytest.raises(LabelsError, match=r"labels.csv:2: image 'IM0001.dcm' matches 2 input files \(.*studyA"):
        ingest([d], tmp_path / "c2", dataclasses.replace(cfg, labels_csv=str(labels)), workers=1, progress=False)
    assert not (tmp_path / "c2" / "manifest.csv").exists()  # refused before any work


def test_rerun_with_corrected_labels_relabels_skipped_rows(tmp_path, cfg, monkeypatch):
    """Corrected labels reach rows that are skipped (unchanged content) without a re-decode,
    persist across later runs, and a changed PNG hint re-ingests just that file."""
    monkeypatch.setenv("FIBROSIS_SALT", "s")
    d, cache, labels = tmp_path / "in", tmp_path / "cache", tmp_path / "labels.csv"
    d.mkdir()
    _chest(d / "a.dcm", 1, sop_uid="1.2.826.10")
    _chest(d / "b.dcm", 2)
    make_png(d / "x.png", to_stored(chest_phantom(64, 64), 8))
    with_labels = dataclasses.replace(cfg, labels_csv=str(labels))
    head = "image,sop_instance_uid,patient_id,age,sex,view,fibrosis\n"
    labels.write_text(head + ",1.2.826.10,,,,,1\nb.dcm,,,,,,1\nx.png,,P1,61,f,pa,1\n")
    ingest([d], cache, with_labels, workers=1, progress=False)
    rows = read_csv(cache / "manifest.csv")
    for r in rows:
        r["split"] = "train"  # as `fibrosis split` leaves it
    write_csv(cache / "manifest.csv", rows, MANIFEST_COLUMNS)
    before = {Path(r["path"]).name: r for r in rows}

    labels.write_text(head + ",1.2.826.10,,,,,0\nb.dcm,,,,,,\nx.png,,P1,61,F,PA,0\n")
    again = ingest([d], cache, with_labels, workers=1, progress=False)
    assert (again.ingested, again.skipped, again.relabelled) == (0, 3, 3)
    after = {Path(r["path"]).name: r for r in read_csv(cache / "manifest.csv")}
    assert {n: r["label"] for n, r in after.items()} == {"a.dcm": "0", "b.dcm": "", "x.png": "0"}
    assert all({**after[n], "label": ""} == {**before[n], "label": ""} for n in before)  # only the label

    _chest(d / "new.dcm", 3)  # a later run without a labels CSV keeps the corrected labels
    ingest([d], cache, cfg, workers=1, progress=False)
    after = {Path(r["path"]).name: r for r in read_csv(cache / "manifest.csv")}
    assert {n: r["label"] for n, r in after.items()} == {"a.dcm": "0", "b.dcm": "", "x.png": "0", "new.dcm": ""}

    labels.write_text(head + ",1.2.826.10,,,,,0\nx.png,,P2,61,F,PA,0\n")  # corrected patient of x.png
    fourth = ingest([d], cache, with_labels, workers=1, progress=False)
    assert (fourth.ingested, fourth.skipped, fourth.relabelled) == (1, 3, 0)
    after = {Path(r["path"]).name: r for r in read_csv(cache / "manifest.csv")}
    assert after["x.png"]["patient_key"] == patient_key("P2", "s") != before["x.png"]["patient_key"]
    same = ingest([d], cache, with_labels, workers=1, progress=False)
    assert (same.ingested, same.skipped, same.relabelled) == (0, 4, 0)


def test_a_different_salt_for_an_existing_cache_is_refused(tmp_path, cfg, monkeypatch):
    """One patient must never get two patient keys in one cache (review: $FIBROSIS_SALT
    forgotten in the next session silently created a new salt.key)."""
    d1, d2, cache = tmp_path / "b1", tmp_path / "b2", tmp_path / "cache"
    d1.mkdir(), d2.mkdir()
    _chest(d1 / "img1.dcm", 1, patient_id="MRN-1")
    _chest(d2 / "img2.dcm", 2, patient_id="MRN-1")
    monkeypatch.setenv("FIBROSIS_SALT", "site-secret")
    ingest([d1], cache, cfg, workers=1, progress=False)
    monkeypatch.delenv("FIBROSIS_SALT")
    with pytest.raises(SaltMismatchError, match=r"salt.check: .*salt.key.*is missing.*FIBROSIS_SALT"):
        ingest([d2], cache, cfg, workers=1, progress=False)
    assert not (cache / "salt.key").exists()  # no second salt created on the way
    monkeypatch.setenv("FIBROSIS_SALT", "another-secret")
    with pytest.raises(SaltMismatchError, match=r"fingerprint [0-9a-f]{16} .*\$FIBROSIS_SALT.*expected [0-9a-f]{16}"):
        ingest([d2], cache, cfg, workers=1, progress=False)
    monkeypatch.setenv("FIBROSIS_SALT", "site-secret")
    ingest([d2], cache, cfg, workers=1, progress=False)
    keys = {r["patient_key"] for r in read_csv(cache / "manifest.csv")}
    assert keys == {patient_key("MRN-1", "site-secret")}
    assert b"site-secret" not in (cache / "salt.check").read_bytes()  # a fingerprint, not the salt


def test_salt_file_replaced_under_a_cache_is_refused(tmp_path, cfg, monkeypatch):
    monkeypatch.delenv("FIBROSIS_SALT", raising=False)
    d = tmp_path / "in"
    d.mkdir()
    _chest(d / "a.dcm", 1)
    ingest([d], tmp_path / "c", cfg, workers=1, progress=False)
    (tmp_path / "c" / "salt.key").write_text("0" * 64)
    with pytest.raises(SaltMismatchError, match=r"salt.key"):
        resolve_salt(tmp_path / "c")


def test_a_cache_inside_the_input_folder_is_not_ingested_as_input(tmp_path, cfg):
    d = tmp_path / "in"
    d.mkdir()
    _chest(d / "a.dcm", 1)
    first = ingest([d], d / "cache", cfg, workers=1, progress=False)
    again = ingest([d], d / "cache", cfg, workers=1, progress=False)
    assert (first.inputs, first.ingested) == (1, 1)
    # The second run sees only a.dcm: no shards, manifests or lock files as rejects.
    assert (again.inputs, again.skipped, sum(again.rejected.values())) == (1, 1, 0)


# ---------------------------------------------------------------- auxiliary findings


def _aux_inputs(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(("a", "b", "c", "d")):
        _chest(d / f"{name}.dcm", i)
    return d, tmp_path / "labels.csv"


def test_aux_findings_reach_the_manifest_and_missing_stays_missing(tmp_path, cfg, caplog):
    d, labels = _aux_inputs(tmp_path)
    labels.write_text("image,fibrosis,edema,finding_labels\n"
                      "a.dcm,1,1,Fibrosis|Mass\nb.dcm,0,,No Finding\nc.dcm,0,0,\n")  # d.dcm: no row
    aux_cfg = dataclasses.replace(cfg, labels_csv=str(labels), aux_label_columns=("edema",),
                                  findings_column="finding_labels")
    with caplog.at_level("INFO", logger="fibrosis.data.ingest"):
        ingest([d], tmp_path / "c", aux_cfg, workers=1, progress=False)
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "c" / "manifest.csv")}
    assert {n: (r["label"], r["aux_labels"]) for n, r in rows.items()} == {
        "a.dcm": ("1", "Mass=1|edema=1"), "b.dcm": ("0", "Mass=0"), "c.dcm": ("0", "edema=0"), "d.dcm": ("", "")}
    assert "auxiliary findings: 2 (Mass, edema); 4 labelled values joined to 3 images" in caplog.text
    assert list(MANIFEST_COLUMNS)[-1] == "aux_labels"


@pytest.mark.parametrize("verify", [False, True])  # skipped unread (stat) / hashed and skipped
def test_corrected_findings_update_aux_labels_of_skipped_rows(tmp_path, cfg, monkeypatch, verify):
    monkeypatch.setenv("FIBROSIS_SALT", "s")
    d, labels = _aux_inputs(tmp_path)
    cache = tmp_path / "cache"
    aux_cfg = dataclasses.replace(cfg, labels_csv=str(labels), findings_column="findings")
    head = "image,fibrosis,findings\n"
    labels.write_text(head + "a.dcm,1,Mass\nb.dcm,0,Edema\nc.dcm,0,\n")
    ingest([d], cache, aux_cfg, workers=1, progress=False)
    before = {Path(r["path"]).name: r for r in read_csv(cache / "manifest.csv")}
    assert before["a.dcm"]["aux_labels"] == "Edema=0|Mass=1" and before["c.dcm"]["aux_labels"] == ""

    labels.write_text(head + "a.dcm,1,Mass\nb.dcm,0,\nc.dcm,0,Edema|Mass\n")  # only the findings change
    again = ingest([d], cache, aux_cfg, workers=1, progress=False, verify=verify)
    assert (again.ingested, again.skipped, again.relabelled) == (0, 4, 2)
    after = {Path(r["path"]).name: r for r in read_csv(cache / "manifest.csv")}
    assert {n: r["aux_labels"] for n, r in after.items()} == {
        "a.dcm": "Edema=0|Mass=1", "b.dcm": "", "c.dcm": "Edema=1|Mass=1", "d.dcm": ""}
    strip = {"aux_labels": "", "file_size": "", "file_mtime_ns": "", "file_id": ""}
    assert all({**after[n], **strip} == {**before[n], **strip} for n in before)  # label, shard, index kept

    ingest([d], cache, cfg, workers=1, progress=False)  # no labels CSV: the cache's findings stay
    assert {Path(r["path"]).name: r["aux_labels"] for r in read_csv(cache / "manifest.csv")} == \
        {n: r["aux_labels"] for n, r in after.items()}
    same = ingest([d], cache, aux_cfg, workers=1, progress=False, verify=verify)
    assert (same.skipped, same.relabelled) == (4, 0)


def test_a_cache_without_the_aux_labels_column_reads_and_is_filled(tmp_path, cfg):
    """A cache of an older version (parts and manifest without aux_labels) is re-ingested as is,
    and a labels CSV with findings fills the column without decoding anything again."""
    d, labels = _aux_inputs(tmp_path)
    cache = tmp_path / "cache"
    labels.write_text("image,fibrosis,findings\na.dcm,1,Mass\nb.dcm,0,No Finding\n")
    ingest([d], cache, dataclasses.replace(cfg, labels_csv=str(labels)), workers=1, progress=False)
    old_columns = tuple(c for c in MANIFEST_COLUMNS if c != "aux_labels")
    for part in [cache / "manifest.csv", *(cache / "parts").glob("shard-*.csv")]:
        write_csv(part, read_csv(part), old_columns)
    assert "aux_labels" not in (cache / "manifest.csv").read_text()

    ingest([d], cache, dataclasses.replace(cfg, labels_csv=str(labels)), workers=1, progress=False)
    rows = read_csv(cache / "manifest.csv")
    assert [r["aux_labels"] for r in rows] == [""] * 4  # nothing known, nothing relabelled

    filled = ingest([d], cache, dataclasses.replace(cfg, labels_csv=str(labels), findings_column="findings"),
                    workers=1, progress=False)
    assert (filled.ingested, filled.relabelled) == (0, 2)
    assert {Path(r["path"]).name: r["aux_labels"] for r in read_csv(cache / "manifest.csv")} == {
        "a.dcm": "Mass=1", "b.dcm": "Mass=0", "c.dcm": "", "d.dcm": ""}


def test_cli_aux_flags_set_the_ingest_config(tmp_path):
    from fibrosis.cli.main import main

    d, labels = _aux_inputs(tmp_path)
    labels.write_text("image,fibrosis,no,findings\na.dcm,1,1,Mass\nb.dcm,0,0,\n")  # `no`: a YAML boolean
    assert main(["ingest", str(d), "--cache", str(tmp_path / "c"), "--labels", str(labels), "--no-progress",
                 "--workers", "1", "--set", "ingest.min_side=1", "--aux-columns", "no",
                 "--findings-column", "findings"]) == 0
    rows = {Path(r["path"]).name: r["aux_labels"] for r in read_csv(tmp_path / "c" / "manifest.csv")}
    assert rows == {"a.dcm": "Mass=1|no=1", "b.dcm": "no=0", "c.dcm": "", "d.dcm": ""}
