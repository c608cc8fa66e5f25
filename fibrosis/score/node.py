"""`fibrosis listen`: a DICOM node that scores studies as a PACS sends them.

A pynetdicom C-STORE SCP (with C-ECHO). Each received instance is checked (the data
set decodes, it has the UIDs it needs, its SOP class is the one of its presentation
context, and its pixel data decode through the scoring pixel function, in a worker
process so that a decoder crash cannot take the node down), written atomically and
fsync'ed into ``<workdir>/incoming/<StudyInstanceUID>/`` and only then acknowledged,
so an acknowledged instance survives a crash; one whose pixel data do not decode is
refused with 0xC210 and never reaches scoring. A scheduler thread scores a study once
no instance of it has arrived for ``idle_seconds``: it calls
:func:`fibrosis.score.run.score` on the files of all the studies that went idle
together (same checkpoint contract and engine choice as ``fibrosis score``), appending
to ``<workdir>/scores.csv`` and writing the SR (and SC) to ``<workdir>/sr`` (``sc``).

Sending is separate from scoring. ``<workdir>/state/<StudyInstanceUID>.json`` records
the files a study was scored with, its DICOM objects and the SOP Instance UIDs already
sent. Objects not yet sent go to the destination with C-STORE; a failure is retried
with exponential backoff (``retry_seconds``, doubled each time up to ``retry_max_seconds``)
up to ``send_attempts`` times, then the node gives up until its next start; a retry
sends the files already written and never scores again. An object already sent is not
sent again: a study re-scored because an image arrived late sends its new SR (which
names the old one as predecessor) and the new image's SC only. On start-up a study
whose files differ from its state is scored; one scored but not completely sent is
sent.

Batches are scored one at a time, in the scheduler thread; receiving continues
meanwhile. Stopping lets the batch being scored finish (however long it takes).
Logging: one INFO line per association (peer, AE titles, accepted with counts or
refused with the reason), one DEBUG line per received instance, a WARNING per
refused instance and per batch with failed files. Patient identifiers never reach
the logs: they name study UIDs, AE titles and peers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from fibrosis import artefacts
from fibrosis.data.dicom import shown
from fibrosis.io import atomic_write_bytes, csv_line, write_json
from fibrosis.data.records import Rejected
from fibrosis.config import config_from_dict
from fibrosis.words import plural

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
    retry_seconds: float = 30.0  # first wait after a failed send; doubled after each failure
    retry_max_seconds: float = 3600.0  # the longest wait between two attempts
    send_attempts: int = 10  # then the node gives up on the study until its next start
    check_workers: int = 2  # processes that decode received pixel data before acknowledging

    def __post_init__(self) -> None:
        for title in (self.ae_title, *self.allowed_callers):
            if not _AE.fullmatch(title):
                raise ValueError(f"AE title {title!r}: expected 1-16 printable characters, no backslash")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port}: expected 0-65535 (0: any free port)")
        if self.idle_seconds < 0 or self.timeout <= 0:
            raise ValueError(f"idle_seconds={self.idle_seconds}, timeout={self.timeout}: expected >= 0 and > 0")
        if not (0 < self.retry_seconds <= self.retry_max_seconds and math.isfinite(self.retry_max_seconds)):
            raise ValueError(f"retry_seconds={self.retry_seconds}, retry_max_seconds={self.retry_max_seconds}: "
                             "expected 0 < first wait <= longest wait, both finite")
        if self.send_attempts < 1 or self.check_workers < 1:
            raise ValueError(f"send_attempts={self.send_attempts}, check_workers={self.check_workers}: "
                             "expected >= 1")

    def retry_wait(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones."""
        return min(self.retry_max_seconds, self.retry_seconds * 2.0 ** (failures - 1))


@dataclasses.dataclass
class StudyState:
    """``state/<StudyInstanceUID>.json``: what a study was scored with and what was sent."""

    files: list[str]  # the incoming file names the study was scored with
    objects: list[str]  # its DICOM objects (file names in sr/ and sc/)
    uids: list[str] = dataclasses.field(default_factory=list)  # their SOP Instance UIDs, same order
    sent: list[str] = dataclasses.field(default_factory=list)  # SOP Instance UIDs acknowledged by the destination
    failures: int = 0  # failed attempts since the study was scored
    gave_up: bool = False
    all_sent: bool = False  # read from an earlier version's state ("sent": true): every object was sent

    @classmethod
    def read(cls, path: Path) -> "StudyState | None":
        try:
            rec = json.loads(path.read_text())
            sent = rec.get("sent", [])
            return cls(list(rec["files"]), list(rec.get("objects", [])), list(rec.get("uids", [])),
                       [] if isinstance(sent, bool) else list(sent), int(rec.get("failures", 0)),
                       bool(rec.get("gave_up", False)), all_sent=sent is True)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: the study is scored again

    def write(self, path: Path) -> None:
        rec = dataclasses.asdict(self)
        del rec["all_sent"]  # resolved into ``sent`` before anything is written
        write_json(path, rec)


def _init_checker() -> None:
    """Pixel-check worker: one thread (a process per worker already), and killed by the
    kernel when its parent (the fork server) dies."""
    import cv2

    from fibrosis.data.workers import die_with_parent

    cv2.setNumThreads(1)
    die_with_parent()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Node:
    """The SCP, its incoming folder and the scoring / sending scheduler. ``start`` / ``stop``."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.incoming = cfg.workdir / "incoming"
        self.tmp = cfg.workdir / "tmp"  # outside incoming/: score must never see a partial file
        self.state = cfg.workdir / "state"
        self.scores = cfg.workdir / artefacts.SCORES
        self.sr_dir = cfg.workdir / "sr"
        self.sc_dir = cfg.workdir / "sc" if cfg.sc else None
        for d in (self.incoming, self.tmp, self.state):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # study UID -> monotonic time of its last instance: to score
        self._send_due: dict[str, float] = {}  # study UID -> monotonic time of its next send attempt
        self._assocs: dict[int, dict[str, int]] = {}  # id(association) -> counts, for its log line
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._busy = threading.Event()  # a batch is being scored
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._ingest: Any = None  # the checkpoint's ingest settings: the pixel check is scoring's
        self.port = cfg.port
        self.counts = {"received": 0, "refused": 0, "studies_scored": 0, "batches_failed": 0, "sent": 0,
                       "send_failed": 0}

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
        """(status, why, dataset): the received data set decodes and is what it claims."""
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

    def _checker(self) -> Any:
        """The pixel-check process pool (fork server, like scoring's decode workers)."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with self._pool_lock:
            if self._pool is None:
                ctx = mp.get_context("forkserver") if "forkserver" in mp.get_all_start_methods() \
                    else mp.get_context("spawn")
                if ctx.get_start_method() == "forkserver":
                    ctx.set_forkserver_preload(["fibrosis.data.workers"])
                self._pool = ProcessPoolExecutor(self.cfg.check_workers, mp_context=ctx, initializer=_init_checker)
            return self._pool

    def _pixels_decode(self, path: Path) -> str:
        """'' when the stored file's pixel data decode as scoring will decode them, else why
        not. Policy exclusions (a lateral, for processing) are not refused: the SR lists them.
        A worker that dies is replaced and the file tried once more on its own, so a decoder
        crash on another association's file does not refuse this one."""
        from concurrent.futures.process import BrokenProcessPool

        from fibrosis.data.workers import process_file

        for _attempt in (1, 2):
            pool = self._checker()
            try:
                res = pool.submit(process_file, (str(path), "", {}), self._ingest).result()
                break
            except BrokenProcessPool:
                with self._pool_lock:  # the next call gets a fresh pool
                    if self._pool is pool:
                        self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
        else:
            return "the pixel decoder crashed (native fault) twice; pixel data probably corrupt"
        if isinstance(res, Rejected) and res.kind == "error":
            return " ".join(str(res.reason).split())[:300]
        return ""

    def _peer(self, assoc: Any) -> str:
        rq = assoc.requestor
        return f"{str(rq.ae_title).strip()}@{rq.address}:{rq.port}"

    def _on_store(self, event: Any) -> int:
        peer = self._peer(event.assoc)
        counts = self._assocs.setdefault(id(event.assoc), {"stored": 0, "refused": 0})
        status, why, ds, tmp = SUCCESS, "", None, None
        try:
            status, why, ds = self._check(event)
            if status == SUCCESS:
                study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
                tmp = self.tmp / f"{sop}.{threading.get_ident()}.part"
                with open(tmp, "wb") as fh:
                    fh.write(event.encoded_dataset(include_meta=True))
                    fh.flush()
                    os.fsync(fh.fileno())
                why = self._pixels_decode(tmp)
                if why:
                    status = CANNOT_UNDERSTAND
                else:
                    folder = self.incoming / study
                    folder.mkdir(exist_ok=True)
                    os.replace(tmp, folder / f"{sop}.dcm")  # same file system: atomic
                    tmp = None
                    _fsync_dir(folder)
        except OSError as exc:  # disk full, permissions: the sender keeps its copy and may retry
            status, why = OUT_OF_RESOURCES, f"cannot store ({exc.strerror or exc})"
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        with self._lock:
            if status != SUCCESS:
                self.counts["refused"] += 1
                counts["refused"] += 1
            else:
                self._last[study] = time.monotonic()
                self.counts["received"] += 1
                counts["stored"] += 1
        if status != SUCCESS:
            logger.warning("C-STORE from %s refused (0x%04X): %s", peer, status, why)
            return status
        self._wake.set()
        logger.debug("C-STORE from %s: study %s instance %s stored", peer, study, sop)
        return SUCCESS

    def _why_refused(self, assoc: Any) -> str:
        rq = assoc.requestor
        calling = str(rq.ae_title).strip()
        called = str(getattr(rq.primitive, "called_ae_title", "") or "").strip()
        if self.cfg.allowed_callers and calling not in self.cfg.allowed_callers:
            return f"calling AE title {calling!r} not allowed (allowed: {', '.join(self.cfg.allowed_callers)})"
        if called and called != self.cfg.ae_title:
            return f"called AE title {called!r}; this node is {self.cfg.ae_title!r}"
        return "too many associations at once"

    def _on_rejected(self, event: Any) -> None:
        logger.info("association from %s refused: %s", self._peer(event.assoc), self._why_refused(event.assoc))

    def _on_accepted(self, event: Any) -> None:
        self._assocs[id(event.assoc)] = {"stored": 0, "refused": 0}

    def _on_closed(self, event: Any, how: str) -> None:
        assoc = event.assoc
        counts = self._assocs.pop(id(assoc), None)
        if counts is None:  # refused, already logged
            return
        if not assoc.accepted_contexts:
            offered = sorted({str(c.abstract_syntax) for c in assoc.rejected_contexts})
            logger.info("association from %s to %s refused: no acceptable presentation context (offered: %s)",
                        self._peer(assoc), self.cfg.ae_title, ", ".join(offered[:8]) or "none")
            return
        logger.info("association from %s to %s accepted: %s stored, %d refused; %s",
                    self._peer(assoc), self.cfg.ae_title, plural(counts["stored"], "instance"), counts["refused"], how)

    # ------------------------------------------------------------------ state

    def _files(self, study: str) -> list[str]:
        return sorted(p.name for p in (self.incoming / study).iterdir() if p.is_file())

    def _state(self, study: str) -> StudyState | None:
        st = StudyState.read(self.state / f"{study}.json")
        if st is not None and st.all_sent:  # an earlier version's record: name what was sent
            st.all_sent = False
            st.uids = [uid for _, uid in self._unsent(st)]
            st.sent = [uid for uid in st.uids if uid]
            st.write(self.state / f"{study}.json")
        return st

    def _unsent(self, st: StudyState) -> list[tuple[Path, str]]:
        """(file, SOP Instance UID) of the study's objects the destination has not acknowledged."""
        import pydicom

        out = []
        known = st.uids if len(st.uids) == len(st.objects) else [""] * len(st.objects)
        for name, uid in zip(st.objects, known):
            path = (self.sc_dir or self.cfg.workdir / "sc") / name if name.endswith(".sc.dcm") else self.sr_dir / name
            try:  # the UIDs recorded at scoring save a read of every object at each start
                uid = uid if uid and path.is_file() else str(
                    pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except Exception:  # removed or damaged by hand: the study is scored again
                logger.warning("%s: missing or unreadable; the study is scored again", path)
                return [(path, "")]
            if uid not in st.sent:
                out.append((path, uid))
        return out

    def pending_on_startup(self) -> list[str]:
        """Studies received but not scored with the files they have now: a crash or stop in between."""
        for part in self.tmp.iterdir():  # never acknowledged: the sender still has them
            part.unlink(missing_ok=True)
        todo = []
        for d in sorted(self.incoming.iterdir()):
            st = self._state(d.name) if d.is_dir() else None
            if d.is_dir() and (st is None or st.files != self._files(d.name)
                               or any(not uid for _, uid in self._unsent(st))):
                todo.append(d.name)
        return todo

    def unsent_on_startup(self) -> list[str]:
        """Studies scored whose objects were not all sent: sent again, not scored again."""
        if self.cfg.destination is None:
            return []
        todo = []
        for d in sorted(self.incoming.iterdir()):
            st = self._state(d.name) if d.is_dir() else None
            if st is not None and st.files == self._files(d.name):
                unsent = self._unsent(st)
                if unsent and all(uid for _, uid in unsent):
                    todo.append(d.name)
        return todo

    # ------------------------------------------------------------------ scoring

    def _score_batch(self, studies: list[str]) -> None:
        """Score the files of ``studies`` in one :func:`score` call (one checkpoint load and
        engine check for all the studies that went idle together) and record each study's
        objects; sending is the scheduler's next step."""
        from fibrosis.score.run import score

        files = {s: self._files(s) for s in studies}
        n_files = sum(map(len, files.values()))
        logger.info("batch: scoring %s, %s", plural(len(studies), "study"), plural(n_files, "file"))
        batch = self.state / "batch.csv"  # a CSV of paths is one of score's input forms
        atomic_write_bytes(batch, (csv_line(["path"]) + "".join(csv_line([self.incoming / s / f]) for s in studies
                                                                for f in files[s])).encode())
        t0 = time.perf_counter()
        summary = score(self.cfg.model, batch, self.scores, workers=self.cfg.workers,
                        batch_size=self.cfg.batch_size, engine=self.cfg.engine, progress=False,
                        salt_dir=self.cfg.salt_dir or self.cfg.workdir, device=self.cfg.device,
                        sr_out=self.sr_dir, sc_out=self.sc_dir)
        for study in studies:
            # SRs are named <study>.sr.dcm, SCs <source SOP UID>.sc.dcm (our files are <SOP UID>.dcm)
            mine = {f"{study}.sr.dcm"} | {f[:-len(".dcm")] + ".sc.dcm" for f in files[study]}
            objects = [Path(f).name for f in summary.dicom_files if Path(f).name in mine]
            old = self._state(study)
            st = StudyState(files[study], objects, sent=old.sent if old else [])
            st.uids = [uid for _, uid in self._unsent(dataclasses.replace(st, sent=[]))]  # read once, here
            st.write(self.state / f"{study}.json")
            logger.info("study %s: %s scored; %s, %d not sent yet", study,
                        plural(len(files[study]), "instance"), plural(len(objects), "DICOM object"), len(self._unsent(st)) if self.cfg.destination else 0)
            if self.cfg.destination is not None:
                with self._lock:
                    self._send_due[study] = 0.0  # now
        with self._lock:
            self.counts["studies_scored"] += len(studies)
        c = summary.counts
        logger.info("batch: %s, %s scored in %.1f s: ok %d, excluded %d, error %d",
                    plural(len(studies), "study"), plural(n_files, "file"), time.perf_counter() - t0, c["ok"], c["excluded"], c["error"])
        if c["error"]:
            logger.warning("batch: %s could not be scored (status 'error' in %s; listed as not "
                           "evaluated in the SR)", plural(c["error"], "file"), self.scores)

    # ------------------------------------------------------------------ sending

    def _send(self, study: str) -> None:
        """One attempt to send the study's unsent objects; on failure, the next attempt is
        scheduled with backoff, or the node gives up on the study after ``send_attempts``."""
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import AE

        dest = self.cfg.destination
        st = self._state(study)
        if dest is None or st is None:
            return
        todo = self._unsent(st)
        if not todo:
            return
        ae = AE(ae_title=self.cfg.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.cfg.timeout
        ae.connection_timeout = self.cfg.timeout
        for cls in (COMPREHENSIVE_SR, SECONDARY_CAPTURE):
            ae.add_requested_context(cls, ExplicitVRLittleEndian)
        where = f"{dest.ae_title}@{dest.host}:{dest.port}"
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        failed: list[str] = []
        if not assoc.is_established:
            rsp = getattr(assoc.acceptor, "primitive", None) if assoc.is_rejected else None
            why = (f"association rejected ({rsp.result_str}, {rsp.source_str}: {rsp.reason_str})" if rsp is not None
                   and hasattr(rsp, "reason_str") else "association rejected" if assoc.is_rejected
                   else "no association (connection refused, timed out or aborted)")
            failed = [why]
        else:
            try:
                for path, uid in todo:
                    status = assoc.send_c_store(path)
                    code = getattr(status, "Status", None)
                    if code in (SUCCESS, 0xB000, 0xB007, 0xB006):  # success, or success with a warning
                        st.sent.append(uid)
                        self.counts["sent"] += 1
                    else:
                        failed.append(f"{path.name}: status {'none' if code is None else f'0x{code:04X}'}")
            finally:
                assoc.release()
        if failed:
            self.counts["send_failed"] += 1
            st.failures += 1
            if st.failures >= self.cfg.send_attempts:
                st.gave_up = True
                logger.error("study %s: %s did not take %s after %s (%s); giving up until "
                             "the next start (the objects stay in %s)", study, where,
                             plural(len([u for _, u in todo if u not in st.sent]), "object"), plural(st.failures, "attempt"), "; ".join(failed)[:300],
                             self.cfg.workdir)
            else:
                wait = self.cfg.retry_wait(st.failures)
                with self._lock:
                    self._send_due[study] = time.monotonic() + wait
                logger.error("study %s: sending to %s failed (attempt %d of %d: %s); next attempt in %.0f s, "
                             "without scoring again", study, where, st.failures, self.cfg.send_attempts,
                             "; ".join(failed)[:300], wait)
        else:
            st.failures, st.gave_up = 0, False
            logger.info("study %s: %s sent to %s", study, plural(len(todo), "object"), where)
        st.write(self.state / f"{study}.json")

    # ------------------------------------------------------------------ scheduling

    def _ready(self) -> tuple[list[str], list[str], float]:
        """(studies to score, studies to send, seconds until something is due)."""
        now = time.monotonic()
        with self._lock:
            ready = sorted(s for s, t in self._last.items() if now - t >= self.cfg.idle_seconds)
            sends = sorted(s for s, t in self._send_due.items() if t <= now and s not in self._last)
            waits = [self.cfg.idle_seconds - (now - t) for s, t in self._last.items() if s not in ready]
            waits += [t - now for s, t in self._send_due.items() if s not in sends]
        return ready, sends, min(waits, default=3600.0)

    def _scheduler(self) -> None:
        while not self._stopping.is_set():
            ready, sends, wait = self._ready()
            if ready:
                started = time.monotonic()
                self._busy.set()
                try:
                    self._score_batch(ready)
                except Exception:  # a batch must not stop the node; its files stay in incoming/
                    logger.exception("scoring %s failed; their files stay in %s and are scored "
                                     "again on the next start", plural(len(ready), "study"), self.incoming)
                    with self._lock:
                        self.counts["batches_failed"] += 1
                finally:
                    self._busy.clear()
                with self._lock:
                    for study in ready:  # no retry loop on a persistent failure: the next start retries
                        if self._last.get(study, 0.0) <= started:  # nothing new arrived meanwhile
                            self._last.pop(study, None)
                ready, sends, wait = self._ready()
            for study in sends:
                with self._lock:
                    self._send_due.pop(study, None)
                try:
                    self._send(study)
                except Exception:  # an unexpected failure of one study's send must not stop the node
                    logger.exception("study %s: sending failed; sent again on the next start", study)
            if not ready and not sends:
                self._wake.wait(timeout=max(0.05, min(wait, 1.0)))
                self._wake.clear()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Check the model, bind, queue what a previous run left unscored or unsent, start
        serving and scoring."""
        from pynetdicom import evt

        from fibrosis.model.checkpoint import load_checkpoint
        from fibrosis.score.run import frozen_settings, resolve_checkpoint

        path = resolve_checkpoint(self.cfg.model)
        ckpt = load_checkpoint(path)
        frozen_settings(ckpt, path, "")  # refuses an unevaluated checkpoint now, not at the first batch
        self._ingest = config_from_dict(ckpt.config).ingest
        del ckpt
        # Started here, by the thread that runs the node: the fork server dies with the thread
        # that started it (PR_SET_PDEATHSIG), and an association's thread ends with the association.
        self._checker().submit(os.getpid).result()
        pending = self.pending_on_startup()
        unsent = self.unsent_on_startup()
        if pending or unsent:
            logger.info("start-up: %s received earlier and not scored (scoring them), %d scored and "
                        "not completely sent (sending them)", plural(len(pending), "study"), len(unsent))
        for study in unsent:  # a new start gets the full number of attempts again
            st = self._state(study)
            if st is not None and (st.failures or st.gave_up):
                st.failures, st.gave_up = 0, False
                st.write(self.state / f"{study}.json")
        with self._lock:
            for study in pending:
                self._last[study] = float("-inf")
            for study in unsent:
                self._send_due[study] = 0.0
        ae = self._ae()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_RELEASED, lambda e: self._on_closed(e, "released")),
                    (evt.EVT_ABORTED, lambda e: self._on_closed(e, "aborted"))]
        self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._scheduler, name="fibrosis-node-scheduler", daemon=True)
        self._thread.start()
        dest = self.cfg.destination
        logger.info("listening on %s:%d as %s; incoming %s; scoring a study after %.0f s idle%s",
                    self.cfg.host, self.port, self.cfg.ae_title, self.incoming, self.cfg.idle_seconds,
                    f"; results to {dest.ae_title}@{dest.host}:{dest.port}" if dest else "")

    def stop(self) -> None:
        """Stop accepting, let the batch being scored finish however long it takes, return.
        Studies not yet scored stay in incoming/ and unsent results in sr/ (sc/): the next
        start takes them up."""
        self._stopping.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            if self._busy.is_set():
                logger.info("stopping: the batch being scored finishes first (a second SIGTERM or Ctrl-C "
                            "exits now; the next start scores it again)")
            while self._thread.is_alive():
                self._thread.join(0.5)
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        self.counts["unsent_studies"] = len(self.unsent_on_startup()) if self.cfg.destination else 0
        logger.info("stopped: %s", self.counts)

    def busy(self) -> bool:
        """A batch is being scored now."""
        return self._busy.is_set()

    def idle(self) -> bool:
        """Nothing received is waiting to be scored, and no send is waiting for its next attempt."""
        with self._lock:
            return not self._last and not self._send_due and not self._busy.is_set()


def listen(cfg: NodeConfig, stop: threading.Event) -> dict[str, int]:
    """Serve until ``stop`` is set (the CLI sets it on SIGTERM / SIGINT); returns the counts."""
    node = Node(cfg)
    node.start()
    try:
        stop.wait()
    finally:
        node.stop()
    return node.counts
