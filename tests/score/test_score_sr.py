"""DICOM SR / SC outputs of `fibrosis score`: round trip against the scores CSV, validation, privacy."""
from __future__ import annotations

import csv
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, make_png, to_stored, truncate
from helpers.sr_reader import read_sr
from helpers.scores import status_text
from helpers.checkpoints import PATIENT_ID, PATIENT_NAME, THRESHOLD, make_checkpoint
from fibrosis.io import file_sha256
from fibrosis.score import run as S

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture(scope="module")
def scored(tmp_path_factory, ckpt):
    """Study 1.2.3.1: PA + AP scored, a lateral excluded, a truncated file failed;
    study 1.2.3.2: one RLE image; a PNG that belongs to no DICOM study."""
    root = tmp_path_factory.mktemp("in")
    px = lambda seed: to_stored(chest_phantom(96, 80, seed=seed), 12)  # noqa: E731
    kw = dict(patient_id=PATIENT_ID, patient_name=PATIENT_NAME, bits_stored=12, AccessionNumber="ACC-77")
    make_dicom(root / "s1_pa.dcm", px(1), study_uid="1.2.3.1", sop_uid="1.2.3.1.1", **kw)
    make_dicom(root / "s1_ap.dcm", px(2), study_uid="1.2.3.1", sop_uid="1.2.3.1.2", view="AP", **kw)
    make_dicom(root / "s1_lat.dcm", px(3), study_uid="1.2.3.1", sop_uid="1.2.3.1.3", view="LL", **kw)
    truncate(make_dicom(root / "s1_trunc.dcm", px(6), study_uid="1.2.3.1", sop_uid="1.2.3.1.4", **kw), 0.5)
    make_dicom(root / "s2.dcm", px(4), "rle", study_uid="1.2.3.2", sop_uid="1.2.3.2.1", **kw)
    make_png(root / "export.png", (chest_phantom(90, 90, seed=5) * 255).astype(np.uint8))
    out = tmp_path_factory.mktemp("out")
    mp = pytest.MonkeyPatch()
    mp.setenv("FIBROSIS_SALT", "sr-salt")
    try:
        summary = S.score(ckpt, root, out / "scores.csv", progress=False, device="cpu",
                          sr_out=out / "sr", sc_out=out / "sc")
    finally:
        mp.undo()
    return root, out, summary


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sr_round_trip_matches_the_scores_csv(scored, ckpt):
    root, out, summary = scored
    csv_rows = {Path(r["path"]).name: r for r in rows(out / "scores.csv")}
    studies = {r["study_uid"]: r for r in rows(out / "scores.studies.csv")}
    srs = sorted((out / "sr").glob("*.dcm"))
    assert [p.name for p in srs] == ["1.2.3.1.sr.dcm", "1.2.3.2.sr.dcm"]
    assert {str(p) for p in srs} <= set(summary.dicom_files)
    sha = file_sha256(ckpt)
    for path in srs:
        ds = pydicom.dcmread(path)
        src = pydicom.dcmread(root / ("s1_pa.dcm" if ds.StudyInstanceUID == "1.2.3.1" else "s2.dcm"))
        assert ds.SOPClassUID == COMPREHENSIVE_SR and ds.Modality == "SR"
        # Patient and study modules copied from the source; a new series of our own.
        assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == (PATIENT_ID, PATIENT_NAME, "ACC-77")
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
        doc = read_sr(ds)
        assert "not a diagnosis" in doc["texts"]["121106"].lower()
        assert doc["texts"]["CKPTSHA256"] == sha and doc["texts"]["MODELID"] == summary.model_id
        assert doc["observer"]["121005"] == ("DCM", "121007")  # observer type: device
        assert doc["observer"]["121012"].startswith("2.25.")  # device observer UID
        assert doc["observer"]["121016"] == sha  # device serial number
        assert doc["observer"]["121015"] == summary.model_id  # device model name
        study = studies[ds.StudyInstanceUID]
        assert doc["study"]["probability"] == pytest.approx(float(study["probability_calibrated"]), abs=1e-6)
        assert doc["study"]["decision"] == bool(int(study["decision_fibrosis"]))
        assert (doc["study"]["threshold_name"], doc["study"]["threshold"]) == ("youden", THRESHOLD)
        assert doc["title"] == ("DCM", "126000")  # TID 1500 Imaging Measurement Report
        ok = {r["sop_uid"]: r for r in csv_rows.values()
              if r["study_uid"] == ds.StudyInstanceUID and r["status"] == "ok"}
        assert sorted(doc["study"]["refs"]) == sorted(ok)
        assert sorted(ref for img in doc["images"] for ref in img["refs"]) == sorted(ok)
        for img in doc["images"]:
            row = ok[img["refs"][0]]
            assert img["probability"] == pytest.approx(float(row["probability_calibrated"]), abs=1e-6)
            assert img["decision"] == bool(int(row["decision_fibrosis"]))
            assert (img["threshold_name"], img["threshold"]) == (row["threshold_name"], float(row["threshold"]))
            # The finding is the concept; its value says present or absent, as a consumer reads it.
            assert img["finding"] == (("SCT", "52101004") if int(row["decision_fibrosis"]) else ("SCT", "272519000"))
        # Every SOP instance referenced in the tree is listed as evidence of the same study.
        evidence = {s.ReferencedSOPInstanceUID for e in ds.CurrentRequestedProcedureEvidenceSequence
                    for r in e.ReferencedSeriesSequence for s in r.ReferencedSOPSequence}
        refs = {u for c in [doc["study"], *doc["images"], *doc["not_scored"]] for u in c["refs"]}
        assert refs <= evidence and refs <= set(doc["library"])
    s1 = read_sr(pydicom.dcmread(out / "sr" / "1.2.3.1.sr.dcm"))
    not_scored = {c["refs"][0]: c["reason"] for c in s1["not_scored"]}
    assert not_scored == {"1.2.3.1.3": status_text(csv_rows["s1_lat.dcm"]),
                          "1.2.3.1.4": status_text(csv_rows["s1_trunc.dcm"])}
    assert not_scored["1.2.3.1.3"].startswith("excluded:") and not_scored["1.2.3.1.4"].startswith("error:")
    # An image that was not scored is "not evaluated", never "fibrosis" nor "absent".
    assert [c["finding"] for c in s1["not_scored"]] == [("SCT", "373121007")] * 2
    assert all(c["probability"] is None for c in s1["not_scored"])


def test_sr_passes_highdicom_checks(scored):
    import highdicom as hd

    root, out, _ = scored
    for path in sorted((out / "sr").glob("*.dcm")):
        sr = hd.sr.srread(path)  # highdicom's own parsing and content-tree validation
        assert isinstance(sr, hd.sr.ComprehensiveSR)
        assert sr.get_evidence()  # evidence sequences parse
        groups = sr.content.get_planar_roi_measurement_groups() + list(
            sr.content.get_image_measurement_groups())
        assert groups  # a TID 1500 reader finds the measurement groups


def test_a_study_scored_again_supersedes_its_sr_only_when_the_content_changed(scored, ckpt, tmp_path,
                                                                               monkeypatch):
    """One policy: unchanged content leaves the SR file as it is (same UID, same bytes);
    changed content (here an image that arrived later) gets a new UID, the next
    InstanceNumber in the same series and the old SR in Predecessor Documents Sequence."""
    root, out, _ = scored
    monkeypatch.setenv("FIBROSIS_SALT", "sr-salt")
    sr_dir = tmp_path / "sr"
    shutil.copytree(out / "sr", sr_dir)
    shutil.copytree(out / "sc", tmp_path / "sc")
    before = {p.name: p.read_bytes() for p in sr_dir.iterdir()}
    sc_before = {p.name: p.read_bytes() for p in (tmp_path / "sc").iterdir()}
    S.score(ckpt, root, tmp_path / "again.csv", progress=False, device="cpu", sr_out=sr_dir,
            sc_out=tmp_path / "sc")
    assert {p.name: p.read_bytes() for p in sr_dir.iterdir()} == before
    assert {p.name: p.read_bytes() for p in (tmp_path / "sc").iterdir()} == sc_before  # not made again
    first = pydicom.dcmread(sr_dir / "1.2.3.2.sr.dcm")
    assert first.InstanceNumber == 1 and "PredecessorDocumentsSequence" not in first

    late = root.parent / "late"
    shutil.copytree(root, late)
    make_dicom(late / "s2_late.dcm", to_stored(chest_phantom(96, 80, seed=8), 12), study_uid="1.2.3.2",
               sop_uid="1.2.3.2.2", patient_id=PATIENT_ID, patient_name=PATIENT_NAME, bits_stored=12)
    S.score(ckpt, late, tmp_path / "late.csv", progress=False, device="cpu", sr_out=sr_dir)
    assert (sr_dir / "1.2.3.1.sr.dcm").read_bytes() == before["1.2.3.1.sr.dcm"]  # that study did not change
    second = pydicom.dcmread(sr_dir / "1.2.3.2.sr.dcm")
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID and second.InstanceNumber == 2
    pred = second.PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == "1.2.3.2"
    series = pred.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == [first.SOPInstanceUID]
    assert sorted(r for g in read_sr(second)["images"] for r in g["refs"]) == ["1.2.3.2.1", "1.2.3.2.2"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
def test_dciodvfy_finds_no_errors(scored):
    _, out, _ = scored
    for path in sorted((out / "sr").glob("*.dcm")) + sorted((out / "sc").glob("*.dcm")):
        res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_identifiers_stay_in_the_dicom_world(scored, ckpt, tmp_path, monkeypatch, caplog):
    root, out, _ = scored
    monkeypatch.setenv("FIBROSIS_SALT", "sr-salt")
    with caplog.at_level(logging.DEBUG):
        S.score(ckpt, root, tmp_path / "s.csv", progress=False, device="cpu",
                sr_out=tmp_path / "sr", sc_out=tmp_path / "sc")
    for secret in (PATIENT_ID, "Doe", "ACC-77"):
        assert secret not in caplog.text
        for f in ("scores.csv", "scores.studies.csv"):
            assert secret not in (out / f).read_text()


def test_gradcam_secondary_capture_in_the_source_study(scored):
    root, out, _ = scored
    # <source SOP Instance UID>.sc.dcm
    scs = {p.name[:-len(".sc.dcm")]: pydicom.dcmread(p) for p in (out / "sc").glob("*.dcm")}
    assert sorted(scs) == ["1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1"]  # one per frontal image scored
    by_source = {}
    for source_uid, ds in scs.items():
        assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.PhotometricInterpretation == "RGB"
        assert ds.PatientID == PATIENT_ID and ds.StudyInstanceUID in ("1.2.3.1", "1.2.3.2")
        img = ds.pixel_array
        # Large enough to read (the model input is 32 px here), the warning burned in.
        assert img.shape == (1024, 1024, 3) and img.std() > 0
        assert ds.BurnedInAnnotation == "YES" and ds.ImageType[:2] == ["DERIVED", "SECONDARY"]
        white = (img == 255).all(axis=2)
        assert white[:60].sum() > 500 and white[-60:].sum() > 500  # text in the top and bottom bands
        assert not white[200:800].any()  # none over the heat map itself
        src = ds.SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID == source_uid
        assert src.ReferencedSOPClassUID == pydicom.dcmread(root / ("s2.dcm" if source_uid == "1.2.3.2.1" else
                                                                    "s1_pa.dcm")).SOPClassUID
        by_source.setdefault(ds.StudyInstanceUID, []).append(ds.SeriesInstanceUID)
    assert sorted(len(v) for v in by_source.values()) == [1, 2]
    assert len(set(by_source["1.2.3.1"])) == 1  # one overlay series per study
