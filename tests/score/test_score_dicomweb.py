"""DICOMweb query-score-store against Orthanc's DICOMweb plugin (tests/pacs.py): QIDO-RS finds
the studies, WADO-RS retrieves them as stored into a folder that a re-run does not fetch
again, `score` scores them and STOW-RS sends the SRs back once; `ingest` builds a cache
from the same kind of query. Credentials from the environment or a file only."""
from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest

from helpers import pacs
from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from helpers.sr_reader import read_sr
from helpers.checkpoints import make_checkpoint
from fibrosis.cli.main import main
from fibrosis.config import IngestConfig
from helpers.paths import REPO

DEMO = REPO / "data" / "demo" / "score"
JANUARY, OLDER = "1.2.826.0.1.3680043.8.498.2026", "1.2.826.0.1.3680043.8.498.2025"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc holding the demo studies (13 readable CR/DX files) and two dated studies."""
    pacs.require()
    root = tmp_path_factory.mktemp("dated")
    dated = [make_dicom(root / "jan.dcm", to_stored(chest_phantom(300, 260, seed=1), 12), bits_stored=12,
                        study_uid=JANUARY, sop_uid=JANUARY + ".1", StudyDate="20260115"),
             make_dicom(root / "old.dcm", to_stored(chest_phantom(300, 260, seed=2), 12), bits_stored=12,
                        study_uid=OLDER, sop_uid=OLDER + ".1", StudyDate="20250301")]
    with pacs.own_network():
        server = pacs.Orthanc(tmp_path_factory.mktemp("orthanc"))
        try:
            for f in sorted(DEMO.glob("0*.dcm")) + dated:
                if "truncated" not in f.name:
                    server.post("/instances", f.read_bytes())
            assert len(server.get("/instances")) == 15
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", ingest=IngestConfig(image_size=64))


@pytest.fixture
def auth(monkeypatch):
    monkeypatch.setenv("FIBROSIS_DICOMWEB_AUTH", f"basic {pacs.USER}:{pacs.PASSWORD}")
    monkeypatch.setenv("FIBROSIS_SALT", "dicomweb-salt")


def url(server: pacs.Orthanc) -> str:
    return server.url + "/dicom-web"


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def score_args(server, ckpt, tmp: Path, *extra: str) -> list[str]:
    return ["--log-file", str(tmp / "log.txt"), "score", "--run", str(ckpt), "--dicomweb", url(server),
            "--fetch-dir", str(tmp / "fetch"), "--out", str(tmp / "scores.csv"), "--sr-out", str(tmp / "sr"),
            "--workers", "1", "--engine", "eager", "--device", "cpu", "--no-progress", *extra]


def test_query_retrieve_score_and_stow_end_to_end(orthanc, ckpt, tmp_path, auth):
    assert main(score_args(orthanc, ckpt, tmp_path, "--stow")) == 0
    fetched = sorted((tmp_path / "fetch").rglob("*.dcm"))
    assert len(fetched) == 15
    # Retrieved as stored: JPEG 2000 and RLE stay compressed.
    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in fetched}
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"} <= syntaxes
    studies = {r["study_uid"]: r for r in rows(tmp_path / "scores.studies.csv")}
    assert len(studies) == 12
    for study, row in studies.items():
        srs = [i for i in orthanc.instances(study) if i["modality"] == "SR"]
        assert len(srs) == 1, study
        doc = read_sr(pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.file(srs[0]["id"]))))
        assert doc["study"]["decision"] is bool(int(row["decision_fibrosis"]))
        images = sorted(i["sop_uid"] for i in orthanc.instances(study) if i["modality"] in ("CR", "DX"))
        assert sorted(doc["study"]["refs"]) == images
    first_log = (tmp_path / "log.txt").read_text()
    assert "15 instances retrieved, 0 already there" in first_log
    assert "12 objects stored, 0 stored by an earlier run, 0 failed" in first_log

    # Again: nothing retrieved twice, no SR rewritten or sent twice, the PACS unchanged.
    (tmp_path / "log.txt").unlink()
    sr_bytes = {p.name: p.read_bytes() for p in (tmp_path / "sr").iterdir()}
    assert main(score_args(orthanc, ckpt, tmp_path, "--stow")) == 0
    log = (tmp_path / "log.txt").read_text()
    assert "0 instances retrieved, 15 already there, 12 not CR/DX (not retrieved)" in log  # our SRs
    assert "0 objects stored, 12 stored by an earlier run" in log
    assert {p.name: p.read_bytes() for p in (tmp_path / "sr").iterdir()} == sr_bytes
    assert sum(1 for s in studies for i in orthanc.instances(s) if i["modality"] == "SR") == 12


def test_study_date_range_and_study_list_select_what_is_retrieved(orthanc, ckpt, tmp_path, auth):
    assert main(score_args(orthanc, ckpt, tmp_path / "a", "--study-date", "20260101-20260131")) == 0
    assert [p.parent.name for p in (tmp_path / "a" / "fetch").rglob("*.dcm")] == [JANUARY]
    assert main(score_args(orthanc, ckpt, tmp_path / "b", "--study", OLDER, "--modality", "DX")) == 0
    assert [p.parent.name for p in (tmp_path / "b" / "fetch").rglob("*.dcm")] == [OLDER]
    assert main(score_args(orthanc, ckpt, tmp_path / "c", "--study-date", "2026-01")) == 2  # not a date


def test_credentials_come_from_the_environment_or_a_file(orthanc, ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FIBROSIS_SALT", "dicomweb-salt")
    monkeypatch.delenv("FIBROSIS_DICOMWEB_AUTH", raising=False)
    assert main(score_args(orthanc, ckpt, tmp_path / "none", "--study", JANUARY)) == 2
    assert "HTTP 401 (credentials: $FIBROSIS_DICOMWEB_AUTH or --dicomweb-auth-file)" in capsys.readouterr().err
    secret = tmp_path / "auth"
    secret.write_text(f"basic {pacs.USER}:{pacs.PASSWORD}\n")
    assert main(score_args(orthanc, ckpt, tmp_path / "file", "--study", JANUARY,
                           "--dicomweb-auth-file", str(secret))) == 0
    secret.write_text(f"{pacs.USER}:{pacs.PASSWORD}\n")  # no scheme
    assert main(score_args(orthanc, ckpt, tmp_path / "bad", "--study", JANUARY,
                           "--dicomweb-auth-file", str(secret))) == 2
    err = capsys.readouterr().err
    assert "expected one line 'bearer TOKEN' or 'basic USER:PASSWORD'" in err and pacs.PASSWORD not in err


def test_ingest_builds_a_cache_from_a_dicomweb_query(orthanc, tmp_path, auth):
    cache = tmp_path / "cache"
    assert main(["ingest", "--dicomweb", url(orthanc), "--fetch-dir", str(tmp_path / "fetch"), "--cache", str(cache),
                 "--workers", "1", "--no-progress", "--set", "ingest.image_size=64"]) == 0
    manifest = rows(cache / "manifest.csv")
    rejects = rows(cache / "rejects.csv") if (cache / "rejects.csv").exists() else []
    assert len(manifest) + len(rejects) == 15  # every CR/DX instance, nothing else (no SR, no SC)
    assert {r["modality"] for r in manifest} <= {"CR", "DX"}
