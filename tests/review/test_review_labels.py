"""The reader's labels file: what a click writes, atomic rewrites, resume, and that `ingest --labels`
and `monitor --labels` read it as it is."""
from __future__ import annotations

import os

import pytest

from fibrosis.data.labels import load_labels
from fibrosis.io import read_csv
from fibrosis.monitor.load import attach_labels, read_scores
from fibrosis.review.labels import LabelStore, columns
from fibrosis.review.worklist import load_worklist


@pytest.fixture
def wl(scored):
    return load_worklist(scored.scores)


def study_of(wl, uid: str) -> int:
    return next(s for s in range(len(wl.study_table)) if wl.studies.study_uid[s] == uid)


def image_named(wl, name: str) -> int:
    return next(i for i in range(len(wl.image_table)) if wl.image_table.names[i] == name)


def test_a_click_writes_one_row(wl, scored, tmp_path):
    store = LabelStore(tmp_path / "r.csv", wl, "fibrosis")
    s = study_of(wl, scored.study_uids[0])
    entry = store.set("study", s, "present", "AB")
    assert entry.call == "present" and wl.study_table.read[s] and not wl.study_table.read[:s].any()
    rows = read_csv(tmp_path / "r.csv")
    assert tuple(rows[0]) == columns("fibrosis")
    assert rows == [{"sop_instance_uid": "", "image": "", "study_instance_uid": scored.study_uids[0], "fibrosis": "1",
                     "reader_call": "present", "reader": "AB", "level": "study", "labelled_at": entry.labelled_at}]
    store.set("study", s, "absent", "CD")  # a changed mind replaces the row
    assert [(r["fibrosis"], r["reader_call"], r["reader"]) for r in read_csv(tmp_path / "r.csv")] == [("0", "absent", "CD")]


def test_bad_calls_and_readers_are_refused(wl, tmp_path):
    store = LabelStore(tmp_path / "r.csv", wl, "fibrosis")
    with pytest.raises(ValueError, match="call 'maybe'; expected one of"):
        store.set("study", 0, "maybe", "AB")
    with pytest.raises(ValueError, match="reader 'A B'"):
        store.set("study", 0, "present", "A B")
    assert not (tmp_path / "r.csv").exists()


def test_resume_after_a_restart(wl, scored, tmp_path):
    path = tmp_path / "r.csv"
    store = LabelStore(path, wl, "fibrosis")
    store.set("study", study_of(wl, scored.study_uids[1]), "uncertain", "AB")
    store.set("image", image_named(wl, "IM0003.dcm"), "absent", "AB")
    wl2 = load_worklist(scored.scores)
    again = LabelStore(path, wl2, "fibrosis")
    assert len(again) == 2 and again.get("study", study_of(wl2, scored.study_uids[1])).call == "uncertain"
    assert again.get("image", image_named(wl2, "IM0003.dcm")).call == "absent"
    assert int(wl2.study_table.read.sum()) == 1 and int(wl2.image_table.read.sum()) == 1
    # rows of studies not in these scores are kept on the next rewrite
    text = path.read_text().replace(scored.study_uids[1], "9.9.9")
    path.write_text(text)
    third = LabelStore(path, load_worklist(scored.scores), "fibrosis")
    third.set("study", 0, "present", "AB")
    assert "9.9.9" in path.read_text() and len(read_csv(path)) == 3


def test_a_failed_rewrite_leaves_the_previous_file(wl, tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    store = LabelStore(path, wl, "fibrosis")
    store.set("study", 0, "present", "AB")
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.set("study", 1, "absent", "AB")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]  # no temporary file left behind
    assert len(store) == 1 and store.get("study", 1) is None  # nor a label the file does not hold


def test_a_file_that_is_not_ours_is_refused_unchanged(wl, tmp_path):
    theirs = tmp_path / "labels.csv"
    theirs.write_text("image,fibrosis\nIM0001.dcm,1\n")
    with pytest.raises(ValueError, match="not a reader labels file of `fibrosis review`"):
        LabelStore(theirs, wl, "fibrosis")
    assert theirs.read_text() == "image,fibrosis\nIM0001.dcm,1\n"
    LabelStore(tmp_path / "r.csv", wl, "fibrosis").set("study", 0, "present", "AB")
    with pytest.raises(ValueError, match="with label column 'other'"):  # another model's label column
        LabelStore(tmp_path / "r.csv", wl, "other")


def test_ingest_and_monitor_read_the_labels_as_they_are(wl, scored, tmp_path):
    path = tmp_path / "r.csv"
    store = LabelStore(path, wl, "fibrosis")
    store.set("study", study_of(wl, scored.study_uids[0]), "present", "AB")  # two frontal images
    store.set("study", study_of(wl, scored.study_uids[2]), "uncertain", "AB")
    store.set("image", image_named(wl, "IM0004.dcm"), "absent", "AB")
    store.set("image", image_named(wl, "export.png"), "present", "AB")  # no SOP UID of its own: by file name
    # ingest's reader, as ingest joins (path, SOP UID, study UID)
    labels = load_labels(path, "fibrosis")
    rows = {r["path"]: r for r in read_csv(scored.scores)}
    got = {name: labels.label(p, r["sop_uid"], r["study_uid"])[0] for p, r in rows.items()
           for name in [p.rsplit("/", 1)[-1]]}
    assert got["IM0000.dcm"] == got["IM0100.dcm"] == "1"  # the study's label reaches both images
    assert got["IM0002.dcm"] == ""  # uncertain: no label for training
    assert got["IM0004.dcm"] == "0" and got["export.png"] == "1"
    assert labels.label(scored.inputs / "export.png", "", "")[0] == "1"  # ingest sees no UID for a PNG
    # monitor's reader of scores and labels
    scores = read_scores(scored.scores, wl.model_id)
    assert attach_labels(scores, path, "fibrosis") == 4
    assert {r.cells["path"].rsplit("/", 1)[-1]: r.label for r in scores if r.label is not None} == {
        "IM0000.dcm": 1, "IM0100.dcm": 1, "IM0004.dcm": 0, "export.png": 1}
