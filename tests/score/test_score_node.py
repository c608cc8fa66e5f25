"""`fibrosis listen` on loopback: a PACS-like SCU sends the demo scoring folder, the node
scores each study once it is idle and sends the SRs back to a loopback SCP; malformed
input mid-association is refused and the node keeps serving; restart and SIGTERM."""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from helpers.dicom_factory import chest_phantom, make_dataset, make_dicom, to_stored
from helpers.dicom_net import LOOPBACK, Collector, associate, contexts_of
from helpers.sr_reader import read_sr
from helpers.checkpoints import PATIENT_ID, PATIENT_NAME, make_checkpoint
from fibrosis.config import IngestConfig
from fibrosis.score import run as S
from fibrosis.score.node import (COMPREHENSIVE_SR, DX_PRESENTATION, SECONDARY_CAPTURE, VERIFICATION,
                                 Destination, Node, NodeConfig)
from helpers.paths import DEMO, REPO

DEMO_SCORE = DEMO / "score"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", ingest=IngestConfig(image_size=64))


def dicom_files() -> list[Path]:
    """The demo files an SCU can send (not_a_dicom.dcm has no file meta to send)."""
    out = []
    for f in sorted(DEMO_SCORE.iterdir()):
        try:
            pydicom.filereader.read_file_meta_info(f)
        except Exception:
            continue
        out.append(f)
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def acknowledged(work: Path, study: str, seed: int, **header: str) -> Path:
    """One instance of ``study`` in the node's incoming/ folder, as if received and acknowledged
    before the node stopped (SOPInstanceUID ``<study>.1``)."""
    folder = work / "incoming" / study
    folder.mkdir(parents=True)
    return make_dicom(folder / f"{study}.1.dcm", to_stored(chest_phantom(300, 260, seed=seed), 12), bits_stored=12,
                      study_uid=study, sop_uid=f"{study}.1", **header)


def dx_file(path: Path, body: bytes, sop_uid: str) -> Path:
    """A file whose meta says DX For Presentation, explicit VR LE, followed by ``body``
    as it is: an SCU sends the bytes after the meta without decoding them."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)
        fh.write(body)
    return path


def ct_in_dx_context(path: Path) -> Path:
    """A well-formed CT image dataset announced as DX: not its context's SOP class."""
    ds = make_dataset(to_stored(chest_phantom(64, 64, seed=9), 12), bits_stored=12, SOPClassUID=CT_STORAGE)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return dx_file(path, buf.getvalue(), str(ds.SOPInstanceUID))


def garbage_dataset(path: Path) -> Path:
    """A data set that does not decode: a sequence whose item is not an (FFFE,E000) item."""
    body = (b"\x08\x00\x16\x00UI\x1c\x00" + DX_PRESENTATION.encode() + b"\x00"
            + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x12\x34\x56\x78\x04\x00\x00\x00abcd")
    return dx_file(path, body, "1.2.826.0.1.3680043.8.498.1")


@pytest.mark.skipif(not DEMO_SCORE.is_dir(), reason="data/demo not present")
def test_loopback_node_returns_the_same_scores_as_fibrosis_score(ckpt, tmp_path, monkeypatch, caplog):
    import pynetdicom

    caplog.set_level(logging.DEBUG, logger="fibrosis")
    monkeypatch.setenv("FIBROSIS_SALT", "node-salt")
    # The SCU sends each file's bytes as they are (no decode / re-encode), as storescu does.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    ref = S.score(ckpt, DEMO_SCORE, tmp_path / "ref.csv", progress=False, device="cpu", sr_out=tmp_path / "ref_sr")
    ref_rows = {r["sop_uid"]: r for r in rows(tmp_path / "ref.csv") if r["status"] == "ok"}
    ref_studies = {r["study_uid"]: r for r in rows(tmp_path / "ref.studies.csv")}
    truncated = DEMO_SCORE / "00003138_000_truncated.dcm"  # alone in its study: the node refuses it, so no SR
    n_srs = len(list((tmp_path / "ref_sr").glob("*.dcm"))) - 1

    pacs = Collector("PACS", (COMPREHENSIVE_SR, SECONDARY_CAPTURE))
    node = Node(NodeConfig(ckpt, tmp_path / "node", 0, ae_title="FIBROSIS", idle_seconds=0.5,
                           allowed_callers=("MODALITY",), destination=Destination("PACS", LOOPBACK, pacs.port),
                           engine="eager", device="cpu", workers=1, timeout=15))
    node.start()
    try:
        assert node.port > 0
        # A malformed association: bytes that are no A-ASSOCIATE-RQ.
        with socket.create_connection((LOOPBACK, node.port), timeout=5) as raw:
            raw.sendall(b"\x01\x00\x00\x00\x00\x10" + b"not a PDU" * 8)
            raw.settimeout(5)
            try:
                raw.recv(1024)
            except (socket.timeout, ConnectionError):
                pass
        # A calling AE title that is not allowed, and a wrong called AE title.
        assert associate(node.port, "FIBROSIS", "STRANGER", [(VERIFICATION, ExplicitVRLittleEndian)]).is_rejected
        assert associate(node.port, "OTHER", "MODALITY", [(VERIFICATION, ExplicitVRLittleEndian)]).is_rejected

        files = dicom_files()
        ct = ct_in_dx_context(tmp_path / "ct.dcm")
        junk = garbage_dataset(tmp_path / "junk.dcm")
        unknown = "1.2.826.0.1.3680043.8.498.999"  # a SOP class nobody knows
        ctxs = contexts_of(files + [ct]) + [(VERIFICATION, ExplicitVRLittleEndian),
                                            (unknown, ExplicitVRLittleEndian)]
        assoc = associate(node.port, "FIBROSIS", "MODALITY", ctxs)
        assert assoc.is_established
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [unknown]
        assert assoc.send_c_echo().Status == 0x0000
        half = len(files) // 2
        statuses = {f.name: assoc.send_c_store(f).Status for f in files[:half]}
        # Mid-association: a dataset that is not of its context's SOP class, one that does not decode.
        bad = {"ct": assoc.send_c_store(ct).Status, "junk": assoc.send_c_store(junk).Status}
        statuses.update({f.name: assoc.send_c_store(f).Status for f in files[half:]})
        assert assoc.send_c_echo().Status == 0x0000  # still serving, same association
        assoc.release()
        assert bad == {"ct": 0xA900, "junk": 0xC210}, bad
        # Pixel data that do not decode are refused before the acknowledgement, never scored.
        assert statuses.pop(truncated.name) == 0xC210
        assert set(statuses.values()) == {0x0000}, statuses

        assert wait_for(lambda: pacs.count() >= n_srs and node.idle(), 60), (pacs.count(), n_srs)
        assert node.counts["refused"] == 3 and node.counts["received"] == len(files) - 1
    finally:
        node.stop()
        pacs.close()

    got = {ds.StudyInstanceUID: read_sr(ds) for ds in pacs.datasets}
    assert len(pacs.datasets) == n_srs and set(got) >= set(ref_studies)
    for study_uid, doc in got.items():
        if study_uid in ref_studies:
            want = float(ref_studies[study_uid]["probability_calibrated"])
            assert doc["study"]["probability"] == pytest.approx(want, abs=1e-6)
        for img in doc["images"]:
            ref_row = ref_rows[img["refs"][0]]
            assert img["probability"] == pytest.approx(float(ref_row["probability_calibrated"]), abs=1e-6)
            assert img["decision"] == bool(int(ref_row["decision_fibrosis"]))
    assert sum(len(d["images"]) for d in got.values()) == ref.counts["ok"]
    assert sum(len(d["not_scored"]) for d in got.values()) == 0  # the truncated file never got in
    node_rows = {r["sop_uid"]: r["probability_calibrated"] for r in rows(tmp_path / "node" / "scores.csv")
                 if r["sop_uid"]}
    assert node_rows == {k: r["probability_calibrated"] for k, r in ref_rows.items()}
    assert not (tmp_path / "node" / "incoming" / pydicom.dcmread(truncated, force=True,
                                                                 stop_before_pixels=True).StudyInstanceUID).exists()
    # Logs an IT person can use: one INFO line per association, with who, and why when refused.
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assoc_lines = [m for m in infos if m.startswith("association from")]
    assert any(re.fullmatch(rf"association from MODALITY@127\.0\.0\.1:\d+ to FIBROSIS accepted: "
                            rf"{len(files) - 1} instances stored, 3 refused; released", m) for m in assoc_lines), \
        assoc_lines
    assert any("STRANGER" in m and "refused: calling AE title 'STRANGER' not allowed" in m for m in assoc_lines)
    assert any("refused: called AE title 'OTHER'; this node is 'FIBROSIS'" in m for m in assoc_lines)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "instance" in r.getMessage()
             and r.getMessage().startswith("C-STORE from MODALITY@")]
    assert len(debug) == len(files) - 1
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
               and r.getMessage().startswith("C-STORE from")]
    assert len(refused) == 3 and any("0xC210" in m and "PixelData" in m for m in refused), refused
    batches = [m for m in infos if m.startswith("batch: ") and " scored in " in m]
    assert sum(int(m.split()[1]) for m in batches) == len(got)  # studies of the batches, not of the CSV


def test_restart_scores_what_was_left_unscored(ckpt, tmp_path, monkeypatch, caplog):
    """Instances acknowledged before a crash are in incoming/; the next start scores them.
    The patient's identifiers reach the SR, never the CSV or the log."""
    monkeypatch.setenv("FIBROSIS_SALT", "node-salt")
    caplog.set_level(logging.DEBUG)
    work = tmp_path / "node"
    acknowledged(work, "1.2.3.77", 3, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    (work / "tmp").mkdir()
    (work / "tmp" / "1.2.3.77.2.123.part").write_bytes(b"half an instance")  # never acknowledged
    node = Node(NodeConfig(ckpt, work, 0, idle_seconds=60, engine="eager", device="cpu", workers=1, sc=True))
    node.start()
    try:
        assert wait_for(lambda: (work / "state" / "1.2.3.77.json").is_file(), 60)
    finally:
        node.stop()
    assert (work / "sr" / "1.2.3.77.sr.dcm").is_file() and not list((work / "tmp").iterdir())
    sc = pydicom.dcmread(work / "sc" / "1.2.3.77.1.sc.dcm")
    assert sc.StudyInstanceUID == "1.2.3.77" and sc.SOPClassUID == SECONDARY_CAPTURE
    state = json.loads((work / "state" / "1.2.3.77.json").read_text())
    assert state["files"] == ["1.2.3.77.1.dcm"] and state["objects"] == ["1.2.3.77.sr.dcm", "1.2.3.77.1.sc.dcm"]
    assert pydicom.dcmread(work / "sr" / "1.2.3.77.sr.dcm").PatientID == PATIENT_ID == sc.PatientID
    for secret in (PATIENT_ID, "Doe"):
        assert secret not in caplog.text and secret not in (work / "scores.csv").read_text()
    assert [(r["sop_uid"], r["status"]) for r in rows(work / "scores.csv")] == [("1.2.3.77.1", "ok")]
    # Done studies are not scored again on the next start.
    assert Node(NodeConfig(ckpt, work, 0)).pending_on_startup() == []


def test_results_not_sent_are_sent_after_a_restart_without_scoring_again(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("FIBROSIS_SALT", "node-salt")
    work = tmp_path / "node"
    acknowledged(work, "1.2.3.78", 4)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind((LOOPBACK, 0))
        closed = s.getsockname()[1]
    kw = dict(idle_seconds=60, engine="eager", device="cpu", workers=1, timeout=5)
    node = Node(NodeConfig(ckpt, work, 0, destination=Destination("PACS", LOOPBACK, closed), **kw))
    node.start()
    try:
        assert wait_for(lambda: node.counts["send_failed"] == 1, 60)
    finally:
        node.stop()
    state = json.loads((work / "state" / "1.2.3.78.json").read_text())
    assert state["sent"] == [] and state["failures"] == 1 and node.counts["unsent_studies"] == 1
    sr_bytes, csv_bytes = (work / "sr" / "1.2.3.78.sr.dcm").read_bytes(), (work / "scores.csv").read_bytes()
    pacs = Collector("PACS", (COMPREHENSIVE_SR,))
    node = Node(NodeConfig(ckpt, work, 0, destination=Destination("PACS", LOOPBACK, pacs.port), **kw))
    assert node.pending_on_startup() == [] and node.unsent_on_startup() == ["1.2.3.78"]
    node.start()
    try:
        assert wait_for(lambda: pacs.count() == 1 and node.idle(), 60)
    finally:
        node.stop()
        pacs.close()
    assert pacs.datasets[0].StudyInstanceUID == "1.2.3.78"
    assert json.loads((work / "state" / "1.2.3.78.json").read_text())["sent"] == [pacs.datasets[0].SOPInstanceUID]
    # Sent as it was: not scored again, the SR not rewritten.
    assert node.counts["studies_scored"] == 0 and node.counts["unsent_studies"] == 0
    assert (work / "sr" / "1.2.3.78.sr.dcm").read_bytes() == sr_bytes and (work / "scores.csv").read_bytes() == csv_bytes


def test_a_state_written_by_the_previous_version_is_read_as_sent(ckpt, tmp_path, monkeypatch):
    """An upgrade must not score again, nor send again, what the previous version finished."""
    monkeypatch.setenv("FIBROSIS_SALT", "node-salt")
    work = tmp_path / "node"
    acknowledged(work, "1.2.3.80", 6)
    S.score(ckpt, work / "incoming", work / "scores.csv", progress=False, device="cpu", sr_out=work / "sr")
    (work / "state").mkdir()
    (work / "state" / "1.2.3.80.json").write_text(json.dumps(
        {"files": ["1.2.3.80.1.dcm"], "sent": True, "objects": ["1.2.3.80.sr.dcm"]}))
    node = Node(NodeConfig(ckpt, work, 0, destination=Destination("PACS", LOOPBACK, 1)))
    assert node.pending_on_startup() == [] and node.unsent_on_startup() == []
    state = json.loads((work / "state" / "1.2.3.80.json").read_text())
    assert state["sent"] == [pydicom.dcmread(work / "sr" / "1.2.3.80.sr.dcm").SOPInstanceUID]


class Refuser:
    """An SCP that refuses every association from the node, permanently, and notes when."""

    def __init__(self):
        from pynetdicom import AE, evt

        self.times: list[float] = []
        ae = AE(ae_title="PACS")
        ae.require_calling_aet = ["SOMEONE_ELSE"]
        ae.add_supported_context(COMPREHENSIVE_SR)
        self.server = ae.start_server((LOOPBACK, 0), block=False,
                                      evt_handlers=[(evt.EVT_REJECTED, lambda e: self.times.append(time.monotonic()))])
        self.port = self.server.server_address[1]

    def close(self):
        self.server.shutdown()


def test_a_refusing_destination_gets_backoff_and_a_cap_and_nothing_is_scored_twice(ckpt, tmp_path, monkeypatch,
                                                                                    caplog):
    monkeypatch.setenv("FIBROSIS_SALT", "node-salt")
    caplog.set_level(logging.INFO, logger="fibrosis")
    work = tmp_path / "node"
    acknowledged(work, "1.2.3.79", 5)
    pacs = Refuser()
    node = Node(NodeConfig(ckpt, work, 0, destination=Destination("PACS", LOOPBACK, pacs.port), idle_seconds=0,
                           engine="eager", device="cpu", workers=1, timeout=5, sc=True, retry_seconds=0.4,
                           retry_max_seconds=1.0, send_attempts=4))
    node.start()
    try:
        assert wait_for(lambda: json.loads((work / "state" / "1.2.3.79.json").read_text()).get("gave_up")
                        if (work / "state" / "1.2.3.79.json").is_file() else False, 30)
        time.sleep(1.5)  # and nothing after giving up
    finally:
        node.stop()
        pacs.close()
    assert len(pacs.times) == 4, pacs.times
    gaps = [b - a for a, b in zip(pacs.times, pacs.times[1:])]
    assert gaps[0] >= 0.35 and gaps[1] >= 0.75 and 0.95 <= gaps[2] < 2.0, gaps  # 0.4, 0.8, then the 1.0 cap
    batches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch: scoring")]
    assert len(batches) == 1 and node.counts["studies_scored"] == 1  # scored once, sent four times
    assert any(r.levelno == logging.ERROR and "giving up until the next start" in r.getMessage()
               and "rejected" in r.getMessage() for r in caplog.records)
    assert node.counts["unsent_studies"] == 1
    assert (work / "sr" / "1.2.3.79.sr.dcm").is_file() and (work / "sc" / "1.2.3.79.1.sc.dcm").is_file()


def _start_cli(ckpt: Path, work: Path, *extra: str) -> tuple[subprocess.Popen, int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FIBROSIS_SALT": "s"}
    proc = subprocess.Popen([sys.executable, "-m", "fibrosis.cli", "listen", "--run", str(ckpt),
                             "--workdir", str(work), "--port", "0", "--ae-title", "FIB", "--engine", "eager",
                             "--device", "cpu", *extra], stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "listening on" in line:
            return proc, int(line.split("listening on ")[1].split()[0].rstrip(";").rsplit(":", 1)[1]), lines
    proc.kill()
    raise AssertionError("node did not start: " + "".join(lines))


def _read_until(proc: subprocess.Popen, lines: list[str], text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            return False
        lines.append(line)
        if text in line:
            return True
    return False


def _send_study(port: int, folder: Path, n: int, study: str) -> None:
    files = [make_dicom(folder / f"{i}.dcm", to_stored(chest_phantom(600, 500, seed=i), 12), bits_stored=12,
                        study_uid=study, sop_uid=f"{study}.{i}") for i in range(n)]
    assoc = associate(port, "FIB", "ANY", contexts_of(files))
    assert assoc.is_established
    assert {assoc.send_c_store(f).Status for f in files} == {0x0000}
    assoc.release()


def test_sigterm_during_a_batch_lets_it_finish_and_exits_0(ckpt, tmp_path):
    work = tmp_path / "node"
    proc, port, lines = _start_cli(ckpt, work, "--idle", "0.2", "--workers", "1")
    try:
        _send_study(port, tmp_path, 4, "1.2.3.90")
        assert _read_until(proc, lines, "batch: scoring", 60), "".join(lines)
        proc.send_signal(signal.SIGTERM)  # while the batch is being scored
        assert proc.wait(timeout=120) == 0, "".join(lines) + proc.stderr.read()
        rest = proc.stderr.read()
        assert "terminate called" not in rest and "the batch being scored finishes first" in "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    state = json.loads((work / "state" / "1.2.3.90.json").read_text())  # the batch finished
    assert len(state["files"]) == 4 and state["objects"] == ["1.2.3.90.sr.dcm"]
    assert Node(NodeConfig(ckpt, work, 0)).pending_on_startup() == []


def test_a_second_sigterm_exits_at_once_and_the_study_is_scored_on_the_next_start(ckpt, tmp_path):
    work = tmp_path / "node"
    proc, port, lines = _start_cli(ckpt, work, "--idle", "0.2", "--workers", "1")
    try:
        _send_study(port, tmp_path, 4, "1.2.3.91")
        assert _read_until(proc, lines, "batch: scoring", 60), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert _read_until(proc, lines, "finishes first", 30), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert "terminate called" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not (work / "state" / "1.2.3.91.json").exists()
    assert Node(NodeConfig(ckpt, work, 0)).pending_on_startup() == ["1.2.3.91"]


def test_listen_cli_answers_echo_and_stops_cleanly_on_sigterm(ckpt, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "FIBROSIS_SALT": "s"}
    proc = subprocess.Popen([sys.executable, "-m", "fibrosis.cli", "listen", "--run", str(ckpt),
                             "--workdir", str(tmp_path / "node"), "--port", "0", "--ae-title", "FIB",
                             "--idle", "1", "--engine", "eager", "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "listening on" in line:
                port = int(line.split("listening on ")[1].split()[0].rstrip(";").rsplit(":", 1)[1])
        assert port, "node did not start"
        assoc = associate(port, "FIB", "ANY", [(VERIFICATION, ExplicitVRLittleEndian)])
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_listen_help_describes_every_option():
    import argparse

    from fibrosis.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    listen = sub.choices["listen"]
    options = [a for a in listen._actions if a.option_strings and a.dest != "help" and a.help != argparse.SUPPRESS]
    assert {a.dest for a in options} >= {"run", "workdir", "port", "ae_title", "idle", "allow_caller",
                                         "send_to", "sc", "host", "timeout"}
    assert all(a.help and len(a.help) > 15 for a in options), [a.dest for a in options if not a.help]


def test_destination_and_ae_titles_are_checked():
    assert Destination.parse("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    for bad in ("PACS@host", "@host:104", "A\\B@host:104", "TOO_LONG_AE_TITLE_X@h:104", "P@h:70000"):
        with pytest.raises(ValueError, match="AE@host:port"):
            Destination.parse(bad)
    with pytest.raises(ValueError, match="AE title"):
        NodeConfig(Path("m"), Path("w"), 104, ae_title="")
