"""Studies from a DICOMweb server, and results back to it (``--dicomweb``).

QIDO-RS finds the studies (by StudyInstanceUID, or by modality in study and a study date
range), QIDO-RS lists their CR/DX instances, and WADO-RS retrieves each one, in the
transfer syntax it is stored in, into ``<folder>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
(written atomically: a file there is complete). The folder is then an ordinary input of
``score`` or ``ingest``, so a re-run retrieves only what is not there yet, and scoring
resumes as it does for any folder. Instances of other SOP classes (the SRs and Secondary
Captures this tool stored, a report, a CT) are never retrieved. STOW-RS sends the SR/SC
back; the SOP Instance UIDs the server accepted are kept in a record file (the CLI's is
``<folder>.stowed.txt``, beside the folder, which is read as input) so an unchanged
object is not sent twice (an SR that changed has a new UID: see ``sr``).

Authentication comes from the environment or a file, never from the command line (where
``ps`` and shell history would show it): ``FIBROSIS_DICOMWEB_AUTH`` or the file given,
holding one line ``bearer TOKEN`` or ``basic USER:PASSWORD``. Nothing here runs unless
the user names a server: the tool makes no network call of its own.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

from fibrosis.io import atomic_write_bytes
from fibrosis.words import plural

logger = logging.getLogger(__name__)

AUTH_ENV = "FIBROSIS_DICOMWEB_AUTH"
# What is retrieved: the SOP classes the node accepts too (CR, DX for presentation and processing).
IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1")
MODALITIES = ("CR", "DX")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DATE = re.compile(r"(\d{8})?-?(\d{8})?")


class DicomWebError(ValueError):
    """The server, the query or the credentials cannot be used as given (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Query:
    """Which studies: explicit StudyInstanceUIDs, else modality in study and study date."""

    url: str
    study_uids: tuple[str, ...] = ()
    modalities: tuple[str, ...] = MODALITIES
    study_date: str = ""  # YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^\s/]+", self.url):
            raise DicomWebError(f"--dicomweb {self.url!r}: expected an http(s) URL of the DICOMweb root, "
                                "e.g. https://pacs.example.org/dicom-web")
        for uid in self.study_uids:
            if not (_UID.fullmatch(uid) and len(uid) <= 64):
                raise DicomWebError(f"--study {uid!r}: expected a StudyInstanceUID (digits and dots, <= 64)")
        for m in self.modalities:
            if m not in MODALITIES:
                raise DicomWebError(f"--modality {m!r}: expected one of {list(MODALITIES)}")
        dates = _DATE.fullmatch(self.study_date)
        if self.study_date and (not dates or not (dates.group(1) or dates.group(2))):
            raise DicomWebError(f"--study-date {self.study_date!r}: expected YYYYMMDD or a range "
                                "YYYYMMDD-YYYYMMDD (either end may be left open)")


@dataclasses.dataclass
class Retrieved:
    studies: int = 0
    retrieved: int = 0  # instances fetched now
    present: int = 0  # already in the folder from an earlier run
    skipped: int = 0  # instances of other SOP classes (SR, SC, ...)
    failed: int = 0  # could not be retrieved or written

    def __str__(self) -> str:
        return (f"DICOMweb: {plural(self.studies, 'study')}: {plural(self.retrieved, 'instance')} retrieved, {self.present} "
                f"already there, {self.skipped} not CR/DX (not retrieved), {self.failed} failed")


def read_auth(auth_file: Path | None) -> tuple[str, str] | None:
    """(scheme, credentials) from ``auth_file`` or $FIBROSIS_DICOMWEB_AUTH; None: no auth."""
    if auth_file is not None:
        try:
            text, where = auth_file.read_text().strip(), str(auth_file)
        except OSError as exc:
            raise DicomWebError(f"--dicomweb-auth-file {auth_file}: cannot read ({exc.strerror or exc})") from None
    else:
        text, where = os.environ.get(AUTH_ENV, "").strip(), f"${AUTH_ENV}"
        if not text:
            return None
    scheme, _, cred = text.partition(" ")
    scheme, cred = scheme.lower(), cred.strip()
    if scheme not in ("bearer", "basic") or not cred or "\n" in cred or (scheme == "basic" and ":" not in cred):
        # Never echo the value: it is a secret.
        raise DicomWebError(f"{where}: expected one line 'bearer TOKEN' or 'basic USER:PASSWORD'")
    return scheme, cred


def client(url: str, auth_file: Path | None = None, timeout: float = 60.0) -> Any:
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.trust_env = False  # no proxy or .netrc from the environment: only what was asked for
    auth = read_auth(auth_file)
    if auth is not None:
        scheme, cred = auth
        if scheme == "basic":
            user, _, password = cred.partition(":")  # read_auth checked the ":"
            session.auth = (user, password)
        else:
            session.headers["Authorization"] = f"Bearer {cred}"
    return DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)


def _call(what: str, url: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn``, with an HTTP or connection failure as one line naming the server and the call."""
    import requests

    try:
        return fn(*args, **kw)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        hint = f" (credentials: ${AUTH_ENV} or --dicomweb-auth-file)" if code in (401, 403) else ""
        raise DicomWebError(f"DICOMweb {url}: {what} failed with HTTP {code}{hint}") from None
    except requests.RequestException as exc:
        raise DicomWebError(f"DICOMweb {url}: {what} failed ({type(exc).__name__}: {str(exc)[:200]})") from None


PAGE = 100  # QIDO-RS results per request


# QIDO-RS results stay the server's DICOM JSON (tag -> {"vr", "Value"}): read at this edge by
# _value only, never passed on.
def _search(what: str, url: str, fn: Any, **kw: Any) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, page by page (limit/offset): dicomweb-client's own
    get_remaining keeps asking a server that answers an exhausted search with an empty 200."""
    out: list[dict[str, Any]] = []
    while True:
        page = _call(what, url, fn, limit=PAGE, offset=len(out), **kw) or []
        out += page
        if len(page) < PAGE:
            return out


def _value(item: dict[str, Any], tag: str) -> str:
    vals = item.get(tag, {}).get("Value") or [""]
    return str(vals[0])


def find_studies(c: Any, q: Query) -> list[str]:
    """QIDO-RS: the StudyInstanceUIDs the query names or matches, sorted."""
    if q.study_uids:
        return sorted(set(q.study_uids))
    found: set[str] = set()
    for modality in q.modalities:  # one query per modality: comma lists are not understood everywhere
        filters = {"ModalitiesInStudy": modality}
        if q.study_date:
            filters["StudyDate"] = q.study_date
        for item in _search("QIDO-RS study search", q.url, c.search_for_studies, search_filters=filters,
                            fields=["StudyInstanceUID"]):
            uid = _value(item, "0020000D")
            if _UID.fullmatch(uid):
                found.add(uid)
    return sorted(found)


def retrieve(q: Query, folder: Path, auth_file: Path | None = None) -> Retrieved:
    """Retrieve the CR/DX instances of the query's studies into ``folder`` (see module doc)."""
    c = client(q.url, auth_file)
    studies = find_studies(c, q)
    out = Retrieved(studies=len(studies))
    folder.mkdir(parents=True, exist_ok=True)
    if not studies:
        logger.warning("DICOMweb %s: no study matches the query", q.url)
    for study in studies:
        instances = _search("QIDO-RS instance search", q.url, c.search_for_instances, study_instance_uid=study,
                            fields=["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
        for item in instances:
            series, sop, cls = (_value(item, t) for t in ("0020000E", "00080018", "00080016"))
            if cls not in IMAGE_CLASSES:
                out.skipped += 1
                continue
            if not (_UID.fullmatch(series) and _UID.fullmatch(sop)):
                logger.error("DICOMweb %s: study %s lists an instance with malformed UIDs; not retrieved", q.url,
                             study)
                out.failed += 1
                continue
            target = folder / study / f"{sop}.dcm"
            if target.is_file():
                out.present += 1
                continue
            try:
                # "*": the instance as stored (a server may otherwise decompress it)
                ds = _call("WADO-RS retrieve", q.url, c.retrieve_instance, study, series, sop,
                           media_types=(("application/dicom", "*"),))
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                target.parent.mkdir(exist_ok=True)
                atomic_write_bytes(target, buf.getvalue())
                out.retrieved += 1
            except (DicomWebError, OSError, ValueError) as exc:
                logger.error("study %s instance %s: not retrieved (%s)", study, sop, str(exc)[:300])
                out.failed += 1
    logger.info("%s -> %s", out, folder)
    return out


def store(url: str, files: list[str], record: Path, auth_file: Path | None = None) -> tuple[int, int, int]:
    """STOW-RS the ``files`` whose SOP Instance UID is not in ``record`` (one UID a line, the
    ones the server accepted before); returns (stored, already, failed)."""
    import pydicom

    done = set(record.read_text().split()) if record.is_file() else set()
    c = client(url, auth_file)
    stored = already = failed = 0
    for f in files:
        ds = pydicom.dcmread(f)
        uid = str(ds.SOPInstanceUID)
        if uid in done:
            already += 1
            continue
        try:
            rsp = _call("STOW-RS", url, c.store_instances, [ds])
        except DicomWebError as exc:
            logger.error("%s: not stored (%s)", Path(f).name, exc)
            failed += 1
            continue
        if rsp is not None and "FailedSOPSequence" in rsp and len(rsp.FailedSOPSequence):
            reason = rsp.FailedSOPSequence[0].get("FailureReason", "?")
            logger.error("%s: the server refused it (FailureReason %s)", Path(f).name, reason)
            failed += 1
            continue
        done.add(uid)
        stored += 1
        atomic_write_bytes(record, ("\n".join(sorted(done)) + "\n").encode())
    logger.info("STOW-RS %s: %s stored, %d stored by an earlier run, %d failed", url, plural(stored, "object"), already,
                failed)
    return stored, already, failed
