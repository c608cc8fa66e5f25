"""`fibrosis listen`: a DICOM node that scores studies as a PACS sends them.

A pynetdicom C-STORE SCP (with C-ECHO). Each received instance is checked (it
decodes, it has the UIDs it needs, its SOP class is the one of its presentation
context), written atomically and fsync'ed into ``<workdir>/incoming/<StudyInstanceUID>/``
and only then acknowledged, so an acknowledged instance survives a crash. A
scheduler thread scores a study once no instance of it has arrived for
``idle_seconds``: it calls :func:`fibrosis.score.run.score` on the files of all
the studies that went idle together (same checkpoint contract and engine choice
as ``fibrosis score``; one checkpoint load per batch, not per study), appending to
``<workdir>/scores.csv`` and writing the SR (and SC) to ``<workdir>/sr`` (``sc``);
then it optionally sends them back with C-STORE. A study is done when
``<workdir>/state/<StudyInstanceUID>.json`` lists exactly its files (and, with a
destination, says they were sent): on start-up every study that is not done is
scored again (resume skips the rows already in the CSV).

Batches are scored one at a time, in the scheduler thread; receiving continues
meanwhile. Patient identifiers never reach the logs: they name study UIDs and peers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from fibrosis.data.dicom import shown
from fibrosis.io import atomic_write_bytes, csv_line

logger = logging.getLogger(__name__)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"  # accepted, then excluded by policy (listed in the SR)
STORAGE_CLASSES = (CR_STORAGE, DX_PRESENTATION, DX_PROCESSING)
VERIFICATION = "1.2.840.10008.1.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# What the pixel path decodes (pydicom + pylibjpeg/pyjpegls); filtered at start-up to the
# decoders actually installed. Big endian (retired) and HTJ2K are not offered.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
# C-STORE statuses (PS3.4 B.2.3)
SUCCESS, OUT_OF_RESOURCES, DATA_SET_MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC210
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE: 16 chars, no backslash, no control


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where the SR (and SC) are sent: ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        m = re.fullmatch(r"(.+)@(.+):(\d+)", text.strip())
        if not m or not _AE.fullmatch(m.group(1).strip()) or not 0 < int(m.group(3)) < 65536:
            raise ValueError(f"destination {text!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104 "
                             f"(AE title 1-16 printable characters, no backslash)")
        return cls(m.group(1).strip(), m.group(2), int(m.group(3)))


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    model: Path
    workdir: Path
    port: int
    ae_title: str = "FIBROSIS"
    host: str = "127.0.0.1"
    idle_seconds: float = 30.0
    allowed_callers: tuple[str, ...] = ()  # empty: any calling AE title
    destination: Destination | None = None
    sc: bool = False
    timeout: float = 30.0  # ACSE / DIMSE / network timeouts, both directions
    engine: str | None = None
    device: str | None = None
    workers: int | None = None
    batch_size: int | None = None
    salt_dir: Path | None = None

    def __post_init__(self) -> None:
        for title in (self.ae_title, *self.allowed_callers):
            if not _AE.fullmatch(title):
                raise ValueError(f"AE title {title!r}: expected 1-16 printable characters, no backslash")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port}: expected 0-65535 (0: any free port)")
        if self.idle_seconds < 0 or self.timeout <= 0:
            raise ValueError(f"idle_seconds={self.idle_seconds}, timeout={self.timeout}: expected >= 0 and > 0")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Node:
    """The SCP, its incoming folder and the scoring scheduler. ``start`` / ``stop``."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.incoming = cfg.workdir / "incoming"
        self.tmp = cfg.workdir / "tmp"  # outside incoming/: score must never see a partial file
        self.state = cfg.workdir / "state"
        self.scores = cfg.workdir / "scores.csv"
        self.sr_dir = cfg.workdir / "sr"
        self.sc_dir = cfg.workdir / "sc" if cfg.sc else None
        for d in (self.incoming, self.tmp, self.state):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # study UID -> monotonic time of its last instance
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = cfg.port
        self.counts = {"received": 0, "refused": 0, "studies_scored": 0, "sent": 0, "send_failed": 0}

    # ------------------------------------------------------------------ receiving

    def _ae(self) -> Any:
        from pydicom.pixels import get_decoder
        from pynetdicom import AE

        ae = AE(ae_title=self.cfg.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.cfg.timeout
        ae.connection_timeout = self.cfg.timeout
        ae.require_called_aet = True
        if self.cfg.allowed_callers:
            ae.require_calling_aet = list(self.cfg.allowed_callers)
        syntaxes = [ts for ts in TRANSFER_SYNTAXES if get_decoder(ts).is_available]
        for cls in STORAGE_CLASSES:
            ae.add_supported_context(cls, syntaxes)
        ae.add_supported_context(VERIFICATION)
        return ae

    def _check(self, event: Any) -> tuple[int, str, Any]:
        """(status, why, dataset): the received instance decodes and is what it claims."""
        try:
            ds = event.dataset
            for _ in ds:  # converts every raw element: a mangled one raises here, not in scoring
                pass
        except Exception as exc:  # any decoding failure of peer data
            return CANNOT_UNDERSTAND, f"dataset does not decode ({type(exc).__name__})", None
        cls = str(ds.get("SOPClassUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
        study = str(ds.get("StudyInstanceUID", "") or "")
        context = str(event.context.abstract_syntax)
        # Values are quoted only when they are numbers (shown): a peer may send a name in any tag.
        if cls != context:
            return DATA_SET_MISMATCH, (f"(0008,0016) SOPClassUID={shown(cls)}; expected {context} "
                                       "(the presentation context's SOP class)"), None
        for tag, value in (("(0008,0018) SOPInstanceUID", sop), ("(0020,000D) StudyInstanceUID", study)):
            if not (_UID.fullmatch(value) and len(value) <= 64):
                return CANNOT_UNDERSTAND, f"{tag}={shown(value)}; expected a DICOM UID", None
        if sop != str(event.request.AffectedSOPInstanceUID):
            return DATA_SET_MISMATCH, (f"(0008,0018) SOPInstanceUID={sop!r}; expected the request's "
                                       f"AffectedSOPInstanceUID {event.request.AffectedSOPInstanceUID}"), None
        if "PixelData" not in ds:
            return CANNOT_UNDERSTAND, "missing (7FE0,0010) PixelData", None
        return SUCCESS, "", ds

    def _on_store(self, event: Any) -> int:
        peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        try:
            status, why, ds = self._check(event)
            if status != SUCCESS:
                with self._lock:
                    self.counts["refused"] += 1
                logger.warning("C-STORE from %s refused (0x%04X): %s", peer, status, why)
                return status
            study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            folder = self.incoming / study
            folder.mkdir(exist_ok=True)
            tmp = self.tmp / f"{sop}.{threading.get_ident()}.part"
            with open(tmp, "wb") as fh:
                fh.write(event.encoded_dataset(include_meta=True))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / f"{sop}.dcm")  # same file system: atomic
            _fsync_dir(folder)
        except OSError as exc:  # disk full, permissions: the sender keeps its copy and may retry
            logger.error("C-STORE from %s: cannot store (%s)", peer, exc.strerror or exc)
            with self._lock:
                self.counts["refused"] += 1
            return OUT_OF_RESOURCES
        with self._lock:
            self._last[study] = time.monotonic()
            self.counts["received"] += 1
        self._wake.set()
        logger.debug("C-STORE from %s: study %s instance stored", peer, study)
        return SUCCESS

    # ------------------------------------------------------------------ state

    def _files(self, study: str) -> list[str]:
        return sorted(p.name for p in (self.incoming / study).iterdir() if p.is_file())

    def _done(self, study: str) -> bool:
        marker = self.state / f"{study}.json"
        try:
            rec = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return rec.get("files") == self._files(study) and (self.cfg.destination is None or rec.get("sent"))

    def pending_on_startup(self) -> list[str]:
        """Studies received but not (completely) scored / sent: a crash or stop in between."""
        for part in self.tmp.iterdir():  # never acknowledged: the sender still has them
            part.unlink(missing_ok=True)
        return sorted(d.name for d in self.incoming.iterdir() if d.is_dir() and not self._done(d.name))

    # ------------------------------------------------------------------ scoring

    def _score_batch(self, studies: list[str]) -> dict[str, bool]:
        """Score the files of ``studies`` in one :func:`score` call (one checkpoint load and
        engine check for all the studies that went idle together); returns study -> done."""
        from fibrosis.score.run import score

        files = {s: self._files(s) for s in studies}
        batch = self.state / "batch.csv"  # a CSV of paths is one of score's input forms
        atomic_write_bytes(batch, (csv_line(["path"]) + "".join(csv_line([self.incoming / s / f]) for s in studies
                                                                for f in files[s])).encode())
        t0 = time.perf_counter()
        summary = score(self.cfg.model, batch, self.scores, workers=self.cfg.workers,
                        batch_size=self.cfg.batch_size, engine=self.cfg.engine, progress=False,
                        salt_dir=self.cfg.salt_dir or self.cfg.workdir, device=self.cfg.device,
                        sr_out=self.sr_dir, sc_out=self.sc_dir)
        done = {}
        for study in studies:
            # SRs are named <study>.sr.dcm, SCs <source SOP UID>.sc.dcm (our files are <SOP UID>.dcm)
            mine = {f"{study}.sr.dcm"} | {f[:-len(".dcm")] + ".sc.dcm" for f in files[study]}
            objects = [f for f in summary.dicom_files if Path(f).name in mine]
            sent = self._send(study, objects) if self.cfg.destination else False
            atomic_write_bytes(self.state / f"{study}.json", json.dumps(
                {"files": files[study], "sent": sent, "objects": [Path(f).name for f in objects]},
                indent=1).encode())
            done[study] = self.cfg.destination is None or sent
            logger.info("study %s: %d instance(s) scored; %d DICOM object(s)%s", study, len(files[study]),
                        len(objects), "" if not self.cfg.destination else
                        (" sent" if sent else " NOT sent (retried after the idle time)"))
        with self._lock:
            self.counts["studies_scored"] += len(studies)
        logger.info("%d studie(s), %d file(s) scored in %.1f s (%s)", len(studies),
                    sum(map(len, files.values())), time.perf_counter() - t0, dict(summary.counts))
        return done

    def _send(self, study: str, files: list[str]) -> bool:
        from pynetdicom import AE
        from pydicom.uid import ExplicitVRLittleEndian

        dest = self.cfg.destination
        ae = AE(ae_title=self.cfg.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.cfg.timeout
        ae.connection_timeout = self.cfg.timeout
        for cls in (COMPREHENSIVE_SR, SECONDARY_CAPTURE):
            ae.add_requested_context(cls, ExplicitVRLittleEndian)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            logger.error("study %s: cannot associate with %s@%s:%d", study, dest.ae_title, dest.host, dest.port)
            self.counts["send_failed"] += len(files)
            return False
        ok = True
        try:
            for f in files:
                status = assoc.send_c_store(Path(f))
                code = getattr(status, "Status", None)
                if code != SUCCESS:
                    ok = False
                    self.counts["send_failed"] += 1
                    logger.error("study %s: %s refused %s (status %s)", study, dest.ae_title, Path(f).name,
                                 "none" if code is None else f"0x{code:04X}")
                else:
                    self.counts["sent"] += 1
        finally:
            assoc.release()
        return ok

    def _ready(self) -> tuple[list[str], float]:
        now = time.monotonic()
        with self._lock:
            ready = sorted(s for s, t in self._last.items() if now - t >= self.cfg.idle_seconds)
            waits = [self.cfg.idle_seconds - (now - t) for s, t in self._last.items() if s not in ready]
        return ready, min(waits, default=3600.0)

    def _scheduler(self) -> None:
        while not self._stopping.is_set():
            ready, wait = self._ready()
            if not ready:
                self._wake.wait(timeout=max(0.05, min(wait, 1.0)))
                self._wake.clear()
                continue
            started = time.monotonic()
            try:
                done = self._score_batch(ready)
            except Exception:  # a batch must not stop the node; its files stay in incoming/
                logger.exception("scoring %d studie(s) failed; their files stay in %s and are scored "
                                 "again on the next start", len(ready), self.incoming)
                done = dict.fromkeys(ready, True)  # no retry loop on a persistent failure
            with self._lock:
                for study, ok in done.items():
                    if not ok:  # send failed: try again after another idle period
                        self._last[study] = time.monotonic()
                    elif self._last.get(study, 0.0) <= started:  # nothing new arrived meanwhile
                        self._last.pop(study, None)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Bind, queue what a previous run left unscored, start serving and scoring."""
        from pynetdicom import evt

        pending = self.pending_on_startup()
        if pending:
            logger.info("start-up: %d studie(s) received earlier but not scored; scoring them", len(pending))
        with self._lock:
            for study in pending:
                self._last[study] = float("-inf")
        ae = self._ae()
        handlers = [(evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_REJECTED, lambda e: logger.warning("association from %s rejected",
                                                                e.assoc.requestor.address)),
                    (evt.EVT_ABORTED, lambda e: logger.warning("association from %s aborted",
                                                               e.assoc.requestor.address))]
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._scheduler, name="fibrosis-node-scheduler", daemon=True)
        self._thread.start()
        logger.info("listening on %s:%d as %s; incoming %s; scoring a study after %.0f s idle%s",
                    self.cfg.host, self.port, self.cfg.ae_title, self.incoming, self.cfg.idle_seconds,
                    f"; results to {self.cfg.destination.ae_title}@{self.cfg.destination.host}:"
                    f"{self.cfg.destination.port}" if self.cfg.destination else "")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting, let the study being scored finish (up to ``timeout``), return.
        Unscored studies stay in incoming/ and are scored on the next start."""
        self._stopping.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("scoring still running after %.0f s; stopping anyway (resumed on next start)",
                               timeout)
        logger.info("stopped: %s", self.counts)

    def idle(self) -> bool:
        """Nothing received is waiting to be scored."""
        with self._lock:
            return not self._last


def listen(cfg: NodeConfig, stop: threading.Event) -> dict[str, int]:
    """Serve until ``stop`` is set (the CLI sets it on SIGTERM / SIGINT); returns the counts."""
    node = Node(cfg)
    node.start()
    try:
        stop.wait()
    finally:
        node.stop()
    return node.counts
