"""`fibrosis listen` against a real PACS and dcmtk: Orthanc (tests/pacs.py) on loopback in a
network namespace of its own. The demo studies go to Orthanc with dcmtk's storescu and the
repository's association profile, Orthanc sends them to the node as a PACS routing rule
would, the node sends SRs and SCs back, and what Orthanc stored is read back through its
REST API: one current SR per study, the right references, the right decision; an image
that arrives late supersedes the study's SR; corrupt pixel data are refused with 0xC210."""
from __future__ import annotations

import csv
import json
import logging
import re
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from helpers import pacs
from helpers.sr_reader import read_sr
from helpers.checkpoints import make_checkpoint, youden_threshold
from fibrosis.config import IngestConfig
from fibrosis.score.node import Destination, Node, NodeConfig
from helpers.paths import REPO

DEMO = REPO / "data" / "demo" / "score"
PROFILE = REPO / "scripts" / "dcmtk" / "storescu-fibrosis.cfg"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    pacs.require()
    with pacs.own_network():
        server = pacs.Orthanc(tmp_path_factory.mktemp("orthanc"))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    # Threshold inside the tiny model's range of study probabilities on the demo (0.54-0.57),
    # so that Orthanc gets both Present and Absent.
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", ingest=IngestConfig(image_size=64),
                           threshold=youden_threshold(0.55))


def readme_command(tool: str) -> list[str]:
    """The README's `tool` line from its DICOM section (continuation lines joined)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(tool + " ")]
    assert lines, f"README shows no {tool} command"
    return shlex.split(lines[0])


def wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.25)
    return cond()


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def corrupt_j2k(path: Path) -> Path:
    """A demo JPEG 2000 file whose codestream is garbage after its first bytes: the header
    and the encapsulation are fine, the pixel data do not decode."""
    ds = pydicom.dcmread(DEMO / "00000820_000.dcm")
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    junk = frame[:64] + np.random.default_rng(0).integers(0, 256, len(frame) - 64, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([junk])
    ds.StudyInstanceUID, ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.77.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def test_demo_studies_go_through_orthanc_and_their_results_come_back(orthanc, ckpt, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FIBROSIS_SALT", "pacs-salt")
    caplog.set_level(logging.INFO, logger="fibrosis")
    # 1. The demo studies into the PACS, with storescu and the repository's profile.
    res = subprocess.run(["storescu", "-xf", str(PROFILE), "Fibrosis", "-nh", "+sd", "+r", "-aet", "MODALITY",
                          "-aec", pacs.AET, "127.0.0.1", str(pacs.DICOM_PORT), str(DEMO)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    studies = {}
    for f in sorted(DEMO.glob("*.dcm")):
        try:
            hdr = pydicom.dcmread(f, stop_before_pixels=True)
            str(hdr.StudyInstanceUID)
        except Exception:
            continue  # the non-DICOM file; the truncated one reads but storescu could not send it
        if "truncated" not in f.name:
            studies.setdefault(str(hdr.StudyInstanceUID), []).append(str(hdr.SOPInstanceUID))
    assert sum(map(len, studies.values())) == 13 == len(orthanc.get("/instances"))

    # 2. The node, and Orthanc's route to it; Orthanc sends each study, one image held back.
    work = tmp_path / "node"
    node = Node(NodeConfig(ckpt, work, 0, ae_title="FIBROSIS", allowed_callers=(pacs.AET, "MODALITY"),
                           destination=Destination(pacs.AET, "127.0.0.1", pacs.DICOM_PORT), idle_seconds=1,
                           sc=True, engine="eager", device="cpu", workers=1, timeout=20))
    node.start()
    try:
        orthanc.put("/modalities/fibrosis", {"AET": "FIBROSIS", "Host": "127.0.0.1", "Port": node.port})
        late_study = next(s for s, sops in studies.items() if len(sops) == 2)
        late_sop = sorted(studies[late_study])[1]
        ids = {i["sop_uid"]: i["id"] for s in studies for i in orthanc.instances(s)}
        orthanc.post("/modalities/fibrosis/store", {"Resources": [ids[sop] for s in studies for sop in studies[s]
                                                                   if sop != late_sop], "Synchronous": True})

        def srs(study: str) -> list[dict]:
            return sorted((i for i in orthanc.instances(study) if i["modality"] == "SR"), key=lambda i: i["number"])

        assert wait_for(lambda: node.idle() and all(srs(s) for s in studies), 120), \
            {s: len(srs(s)) for s in studies}
        first = srs(late_study)
        assert len(first) == 1

        # 3. The held-back image arrives after its study was scored and sent.
        orthanc.post("/modalities/fibrosis/store", {"Resources": [ids[late_sop]], "Synchronous": True})
        assert wait_for(lambda: node.idle() and len(srs(late_study)) == 2, 120), srs(late_study)

        # 4. Corrupt pixel data straight from a modality: refused with 0xC210, never scored.
        bad = corrupt_j2k(tmp_path / "corrupt.dcm")
        res = subprocess.run(["storescu", "-v", "-xf", str(PROFILE), "Fibrosis", "-aet", "MODALITY", "-aec", "FIBROSIS",
                              "127.0.0.1", str(node.port), str(bad)], capture_output=True, text=True, timeout=60)
        assert "Received Store Response (Error: CannotUnderstand)" in res.stdout + res.stderr, res.stderr
        time.sleep(2)  # more than --idle: had it been stored, it would be scored now
        assert node.idle()
    finally:
        node.stop()

    assert not (work / "incoming" / "1.2.826.0.1.3680043.8.498.77").exists()
    assert not orthanc.instances("1.2.826.0.1.3680043.8.498.77")
    assert node.counts["refused"] == 1 and node.counts["unsent_studies"] == 0

    # What Orthanc stored, per study: one current SR (the highest InstanceNumber; any other is
    # named as its predecessor), referencing the study's images, with the node's decision.
    study_rows = {r["study_uid"]: r for r in rows(work / "scores.studies.csv")}
    report = []
    for study, sops in sorted(studies.items()):
        stored = orthanc.instances(study)
        sr_insts = sorted((i for i in stored if i["modality"] == "SR"), key=lambda i: i["number"])
        sc_insts = [i for i in stored if i["modality"] == "OT" or i["series_uid"] != sr_insts[0]["series_uid"]
                    and i["sop_uid"] not in sops]
        raw = orthanc.file(sr_insts[-1]["id"])
        current = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
        (tmp_path / "current.sr.dcm").write_bytes(raw)  # dcmtk reads what Orthanc holds
        dump = subprocess.run(["dsrdump", str(tmp_path / "current.sr.dcm")], capture_output=True, text=True,
                              timeout=60)
        assert dump.returncode == 0 and '"Fibrosis of lung")=(' in dump.stdout, dump.stderr
        doc = read_sr(current)
        expected_n = 2 if study == late_study else 1
        assert [i["number"] for i in sr_insts] == list(range(1, expected_n + 1))
        assert len({i["series_uid"] for i in sr_insts}) == 1
        if expected_n == 2:
            pred = current.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            assert pred.ReferencedSOPInstanceUID == sr_insts[0]["sop_uid"]
        else:
            assert "PredecessorDocumentsSequence" not in current
        assert sorted(doc["study"]["refs"]) == sorted(sops) == sorted(r for g in doc["images"] for r in g["refs"])
        decision = bool(int(study_rows[study]["decision_fibrosis"]))
        assert doc["study"]["decision"] is decision
        assert doc["study"]["probability"] == pytest.approx(float(study_rows[study]["probability_calibrated"]), abs=1e-6)
        # One SC per image, in the study, each pointing at its source image.
        sc_sources = sorted(pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.file(i["id"])),
                                            stop_before_pixels=True).SourceImageSequence[0].ReferencedSOPInstanceUID
                            for i in sc_insts)
        assert sc_sources == sorted(sops)
        report.append({"study": study[-12:], "srs": [(i["sop_uid"][-12:], i["number"]) for i in sr_insts],
                       "decision": "Present" if decision else "Absent", "images": len(doc["images"]),
                       "scs": len(sc_insts)})
    print("\nstored in Orthanc per study:\n" + "\n".join(json.dumps(r) for r in report))
    assert {r["decision"] for r in report} == {"Present", "Absent"}
    # Logged for an IT person: Orthanc's associations with the AE titles and the peer.
    assert any(re.fullmatch(r"association from ORTHANC@127\.0\.0\.1:\d+ to FIBROSIS accepted: \d+ instances "
                            r"stored, 0 refused; released", r.getMessage()) for r in caplog.records)


def test_the_readme_commands_work_on_the_demo_data(orthanc, ckpt, tmp_path, monkeypatch, caplog):
    """The README's echoscu and storescu lines, as printed (host and port aside), against the
    node: every readable demo file is acknowledged, in the syntax it is stored in."""
    monkeypatch.setenv("FIBROSIS_SALT", "pacs-salt")
    caplog.set_level(logging.INFO, logger="fibrosis")
    node = Node(NodeConfig(ckpt, tmp_path / "node", 0, ae_title="FIBROSIS", allowed_callers=("PACS",),
                           idle_seconds=60, engine="eager", device="cpu", workers=1))
    node.start()
    try:
        def local(cmd: list[str]) -> list[str]:
            cmd = [str(REPO / a) if a.startswith("scripts/") else a for a in cmd]
            i = cmd.index("localhost")
            cmd[i:i + 2] = ["127.0.0.1", str(node.port)]
            return [str(DEMO) if a.startswith("/data/") else a for a in cmd]

        echo = subprocess.run(local(readme_command("echoscu")), capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        store = subprocess.run(local(readme_command("storescu")), capture_output=True, text=True, timeout=120)
        assert store.returncode == 0, store.stderr[-2000:]
        assert wait_for(lambda: node.counts["received"] == 13, 30), node.counts
        # A caller the node does not know is refused, and the log says why.
        stranger = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "FIBROSIS", "127.0.0.1", str(node.port)],
                                  capture_output=True, text=True, timeout=60)
        assert stranger.returncode != 0
    finally:
        node.stop()
    assert node.counts["refused"] == 0
    syntaxes = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
                for f in (tmp_path / "node" / "incoming").rglob("*.dcm")}
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1"} <= syntaxes  # as stored
    assert any("association from STRANGER@127.0.0.1:" in r.getMessage() and "not allowed" in r.getMessage()
               for r in caplog.records)
