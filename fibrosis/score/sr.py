"""DICOM Structured Report per scored study (``fibrosis score --sr-out``, ``fibrosis listen``).

One Comprehensive SR per study, built with highdicom from the rows of the scores CSV
and the headers of the study's source files (re-read here, pixel data skipped: the
scoring workers drop the dataset after decoding). The patient and study modules are
copied from the source images, so the identifiers stay inside the DICOM world; this
module never logs or raises with them (log lines name study UIDs, which the CSV
already holds).

Content tree (concept names: DCM / SCT / LOINC where a code exists, else the private
scheme ``99FIBROSIS``)::

    CONTAINER  Diagnostic imaging report (LN 18748-4)
      HAS OBS CONTEXT  observer = device (model id, checkpoint sha256 as serial number)
      CONTAINS TEXT    Comment: research output, not a diagnosis
      CONTAINS TEXT    software version / model id / checkpoint sha256
      CONTAINS CONTAINER  Study result      (aggregate over the frontal ok images)
      CONTAINS CONTAINER  Image result      (one per frontal image scored)
      CONTAINS CONTAINER  Image not scored  (one per excluded or failed image, with its reason)

A result container holds: NUM calibrated probability, CODE decision at the frozen
operating point (SCT Present / Absent), TEXT operating point name, NUM its threshold,
CODE finding (SCT 51615001 fibrosis of lung) and IMAGE references to the source
SOP instances. SOP and Series Instance UIDs are derived from the checkpoint hash and
the study's content, so re-writing an unchanged study gives the same object.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fibrosis import __version__
from fibrosis.io import atomic_write_bytes
from fibrosis.score import output as score_io

logger = logging.getLogger(__name__)

SCHEME = "99FIBROSIS"  # private coding scheme: concepts no standard terminology names
MANUFACTURER = "fibrosis (open-source research software)"
DISCLAIMER = ("RESEARCH OUTPUT, NOT A DIAGNOSIS. Scores of a machine-learning model for pulmonary "
              "fibrosis on chest radiographs; not a medical device, not validated for clinical use. "
              "Do not use for patient care.")
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "fibrosis research scores (not a diagnosis)"
# Type 2 patient/study attributes highdicom copies from the first evidence dataset.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


def _codes() -> dict[str, Any]:
    from pydicom.sr.coding import Code

    return {
        "title": Code("18748-4", "LN", "Diagnostic imaging report"),
        "comment": Code("121106", "DCM", "Comment"),
        "finding": Code("121071", "DCM", "Finding"),
        "fibrosis": Code("51615001", "SCT", "Fibrosis of lung"),
        "present": Code("52101004", "SCT", "Present"),
        "absent": Code("2667000", "SCT", "Absent"),
        "source": Code("121112", "DCM", "Source of Measurement"),
        "probability": Code("PROB", SCHEME, "Calibrated probability of pulmonary fibrosis"),
        "decision": Code("DECISION", SCHEME, "Finding at frozen operating point"),
        "op_name": Code("OPNAME", SCHEME, "Operating point name"),
        "op_value": Code("OPVALUE", SCHEME, "Operating point threshold"),
        "aggregate": Code("AGGREGATE", SCHEME, "Study aggregate over frontal images"),
        "study": Code("STUDY", SCHEME, "Study result"),
        "image": Code("IMAGE", SCHEME, "Image result"),
        "not_scored": Code("NOTSCORED", SCHEME, "Image not scored"),
        "reason": Code("REASON", SCHEME, "Reason not scored"),
        "software": Code("SOFTWARE", SCHEME, "Software version"),
        "model_id": Code("MODELID", SCHEME, "Model identifier"),
        "sha256": Code("CKPTSHA256", SCHEME, "Checkpoint SHA-256"),
        "unit": Code("1", "UCUM", "no units"),
    }


@dataclass(frozen=True)
class Observer:
    """Who made the observation: the model, as a device."""

    model_id: str
    checkpoint_sha256: str
    threshold_name: str
    threshold: float
    aggregate: str
    software_version: str = __version__


def uid_for(*parts: str) -> str:
    """A UID derived from ``parts``: same inputs, same UID. A name-based (version 5)
    UUID under the 2.25 root (PS3.5 B.2), so no organisation root is needed."""
    import uuid

    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'fibrosis:' + chr(0).join(parts)).int}"


def read_header(path: str | Path) -> Any | None:
    """The source's header without pixel data, or None when it is not readable DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    except Exception:  # any unreadable header: the caller reports the file by path
        return None
    return ds


def _is_dicom_uid(uid: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid or "")) and len(uid) <= 64


@dataclass
class StudyRows:
    study_uid: str
    ok: list[tuple[dict[str, str], Any]]  # (row, header) of frontal ok images
    not_scored: list[tuple[dict[str, str], Any]]  # (row, header) of excluded / failed images
    study: dict[str, Any] | None  # the .studies.csv row (aggregate), if any


def collect(scores: Path, paths: set[str] | None, aggregate: str) -> tuple[list[StudyRows], int]:
    """Group the CSV rows of ``paths`` (default: all) by DICOM study; returns the studies
    and the number of rows that belong to no DICOM study (unreadable / non-DICOM files)."""
    by_study: dict[str, StudyRows] = {}
    orphans = 0
    for row in score_io.iter_rows(scores):
        if paths is not None and row["path"] not in paths:
            continue
        hdr = read_header(row["path"])
        study_uid = str(hdr.StudyInstanceUID) if hdr is not None else ""
        if hdr is None or not _is_dicom_uid(study_uid):
            orphans += 1
            continue
        s = by_study.setdefault(study_uid, StudyRows(study_uid, [], [], None))
        if row["status"] == "ok":
            if row["view_position"] in score_io.FRONTAL_VIEWS:
                s.ok.append((row, hdr))
        else:
            s.not_scored.append((row, hdr))
    agg = {r["study_uid"]: r for r in score_io.study_rows(scores, aggregate)}
    for uid, s in by_study.items():
        s.study = agg.get(uid)
    return [by_study[k] for k in sorted(by_study)], orphans


def _result_items(prob: str, decision: str, obs: Observer, refs: Iterable[Any], concept: Any) -> Any:
    import highdicom as hd

    c = _codes()
    items: list[Any] = []
    if prob != "":
        items += [
            hd.sr.NumContentItem(c["probability"], float(prob), c["unit"], relationship_type="CONTAINS"),
            hd.sr.CodeContentItem(c["decision"], c["present"] if int(decision) else c["absent"],
                                  relationship_type="CONTAINS"),
        ]
    items += [
        hd.sr.TextContentItem(c["op_name"], obs.threshold_name, relationship_type="CONTAINS"),
        hd.sr.NumContentItem(c["op_value"], obs.threshold, c["unit"], relationship_type="CONTAINS"),
        hd.sr.CodeContentItem(c["finding"], c["fibrosis"], relationship_type="CONTAINS"),
    ]
    for ds in refs:
        items.append(hd.sr.ImageContentItem(c["source"], str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                            relationship_type="CONTAINS"))
    container = hd.sr.ContainerContentItem(concept, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_sr(s: StudyRows, obs: Observer) -> Any:
    """The Comprehensive SR of one study."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    c = _codes()
    evidence = [h for _, h in s.ok] + [h for _, h in s.not_scored]
    first = Dataset()  # patient/study modules come from here; Type 2 may be absent in the source
    first.update(evidence[0])
    for kw in _TYPE2:
        if kw not in first:
            setattr(first, kw, None)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uid_for("device", obs.checkpoint_sha256), name=f"fibrosis model {obs.model_id}",
        manufacturer_name=MANUFACTURER, model_name=obs.model_id, serial_number=obs.checkpoint_sha256)
    observer = hd.sr.ObserverContext(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
                                     observer_identifying_attributes=device)
    items: list[Any] = list(observer)
    items += [
        hd.sr.TextContentItem(c["comment"], DISCLAIMER, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["software"], f"fibrosis {obs.software_version}", relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["model_id"], obs.model_id, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["sha256"], obs.checkpoint_sha256, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["aggregate"], obs.aggregate, relationship_type="CONTAINS"),
    ]
    study = s.study or {}
    items.append(_result_items(str(study.get("probability", "")), str(study.get("decision", "")), obs,
                               [h for _, h in s.ok], c["study"]))
    for row, hdr in s.ok:
        items.append(_result_items(row["probability"], row["decision"], obs, [hdr], c["image"]))
    for row, hdr in s.not_scored:
        box = hd.sr.ContainerContentItem(c["not_scored"], relationship_type="CONTAINS")
        box.ContentSequence = hd.sr.ContentSequence([
            hd.sr.TextContentItem(c["reason"], row["status"][:1024], relationship_type="CONTAINS"),
            hd.sr.ImageContentItem(c["source"], str(hdr.SOPClassUID), str(hdr.SOPInstanceUID),
                                   relationship_type="CONTAINS"),
        ])
        items.append(box)
    root = hd.sr.ContainerContentItem(c["title"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    content_key = "|".join(f"{r['path']}:{r['status']}:{r.get('probability', '')}"
                           for r, _ in s.ok + s.not_scored)
    sr = hd.sr.ComprehensiveSR(
        evidence=[first] + evidence[1:], content=root,
        series_instance_uid=uid_for("sr-series", obs.checkpoint_sha256, s.study_uid),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid_for("sr", obs.checkpoint_sha256, s.study_uid, content_key),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description=SR_SERIES_DESCRIPTION)
    scheme = Dataset()  # declares the private scheme, so a reader can tell whose codes these are
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "fibrosis research-model concepts"
    scheme.CodingSchemeResponsibleOrganization = "fibrosis open-source project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SoftwareVersions = f"fibrosis {obs.software_version}"
    sr.ManufacturerModelName = f"fibrosis model {obs.model_id}"
    return sr


def sr_path(sr_dir: Path, study_uid: str) -> Path:
    return sr_dir / f"{study_uid}.sr.dcm"


def write_srs(scores: Path, sr_dir: Path, obs: Observer, paths: set[str] | None = None) -> list[Path]:
    """Write one SR per DICOM study among ``paths``' rows of ``scores``; returns the files."""
    import io

    studies, orphans = collect(scores, paths, obs.aggregate)
    if orphans:
        logger.info("SR: %d file(s) with no readable DICOM header belong to no study; listed only in %s",
                    orphans, scores)
    sr_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for s in studies:
        sr = build_sr(s, obs)
        buf = io.BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        target = sr_path(sr_dir, s.study_uid)
        atomic_write_bytes(target, buf.getvalue())
        written.append(target)
        logger.info("SR: study %s: %d image(s) scored, %d not scored -> %s", s.study_uid, len(s.ok),
                    len(s.not_scored), target)
    return written



def write_dicom_outputs(scores: Path, paths: set[str], fz: Any, sha256: str, aggregate: str, net: Any,
                        sr_dir: Path | None, sc_dir: Path | None) -> list[str]:
    """`score`'s hook: SRs (and Grad-CAM SCs) for the studies of ``paths``; returns the files.
    ``fz`` is :class:`fibrosis.score.run.Frozen`."""
    obs = Observer(fz.model_id, sha256, fz.threshold_name, fz.threshold, aggregate)
    files: list[Path] = []
    if sr_dir is not None:
        files += write_srs(scores, sr_dir, obs, paths)
    if sc_dir is not None:
        from fibrosis.score.sc import write_scs

        studies, _ = collect(scores, paths, aggregate)
        files += write_scs(studies, fz, sha256, net, sc_dir)
    return [str(f) for f in files]
