"""DICOM Structured Report per scored study (``fibrosis score --sr-out``, ``fibrosis listen``).

One Comprehensive SR per study (a TID 1500 Measurement Report), built with highdicom from the rows of the scores CSV
and the headers of the study's source files (re-read here, pixel data skipped: the
scoring workers drop the dataset after decoding). The patient and study modules are
copied from the source images, so the identifiers stay inside the DICOM world; this
module never logs or raises with them (log lines name study UIDs, which the CSV
already holds).

The document is a TID 1500 Measurement Report, so software that reads coded findings
reads them as meant::

    CONTAINER  Imaging Measurement Report (DCM 126000)
      HAS CONCEPT MOD  Procedure reported = Plain chest X-ray (SCT 399208008)
      HAS OBS CONTEXT  observer = device (model id, checkpoint sha256 as serial number)
      CONTAINS  Image Library (every source image of the study)
      CONTAINS  Imaging Measurements
        Measurement Group  tracking id "study"          (aggregate over the frontal ok images)
        Measurement Group  tracking id "image <SOP UID>" (one per frontal image scored)
        Measurement Group  tracking id "not scored <SOP UID>" (one per excluded / failed image)
      CONTAINS  Qualitative Evaluations: comment (research output, not a diagnosis),
                software version, model id, checkpoint sha256, study aggregate

Each group carries its source image reference(s), the algorithm (name, version, and the
operating point and threshold as parameters) and one qualitative evaluation whose concept
is the finding itself: Fibrosis of lung (SCT 51615001) = Present (SCT 52101004), Absent
(SCT 272519000) at the frozen operating point, or Not evaluated (SCT 373121007) for an
image or a study that was not scored, whose group also gives the reason. A scored group
has the calibrated probability as a measurement; only that concept has no standard code
and uses the private scheme ``99FIBROSIS``.

Versions: ``<sr_dir>/<StudyInstanceUID>.sr.dcm`` is the study's current SR. Writing a
study whose content tree equals the current one's leaves that file untouched (same UID,
same bytes); different content gets a new SOP Instance UID, the next InstanceNumber in the
same series and a Predecessor Documents Sequence naming the SR it replaces. A PACS thus
never receives one UID with two contents, and a reader takes the highest InstanceNumber.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fibrosis import __version__
from fibrosis.io import atomic_write_bytes
from fibrosis.score import output as score_io
from fibrosis.score.identity import MANUFACTURER, uid_for
from fibrosis.score.sc import write_scs
from fibrosis.words import plural

if TYPE_CHECKING:  # pydicom loads only when an SR is written
    from pydicom.sr.coding import Code

logger = logging.getLogger(__name__)

SCHEME = "99FIBROSIS"  # private coding scheme: concepts no standard terminology names
DISCLAIMER = ("RESEARCH OUTPUT, NOT A DIAGNOSIS. Scores of a machine-learning model for pulmonary "
              "fibrosis on chest radiographs; not a medical device, not validated for clinical use. "
              "Do not use for patient care.")
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "fibrosis research scores (not a diagnosis)"
# Type 2 patient/study attributes highdicom copies from the first evidence dataset.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


def _codes() -> dict[str, Code]:
    from pydicom.sr.coding import Code

    return {
        "procedure": Code("399208008", "SCT", "Plain chest X-ray"),
        "comment": Code("121106", "DCM", "Comment"),
        "fibrosis": Code("51615001", "SCT", "Fibrosis of lung"),
        "present": Code("52101004", "SCT", "Present"),
        "absent": Code("272519000", "SCT", "Absent"),
        "not_evaluated": Code("373121007", "SCT", "Not evaluated"),
        "qualitative": Code("C0034375", "UMLS", "Qualitative Evaluations"),
        "probability": Code("PROB", SCHEME, "Calibrated probability of pulmonary fibrosis"),
        "reason": Code("REASON", SCHEME, "Reason not scored"),
        "aggregate": Code("AGGREGATE", SCHEME, "Study aggregate over frontal images"),
        "software": Code("SOFTWARE", SCHEME, "Software version"),
        "model_id": Code("MODELID", SCHEME, "Model identifier"),
        "sha256": Code("CKPTSHA256", SCHEME, "Checkpoint SHA-256"),
        "unit": Code("1", "UCUM", "no units"),
    }


# The value of the finding's qualitative evaluation: the one allowed set, read by
# tests/sr_reader.py and by any consumer of the SR.
FINDING_VALUES = {"present": ("SCT", "52101004"), "absent": ("SCT", "272519000"),
                  "not evaluated": ("SCT", "373121007")}


@dataclass(frozen=True)
class Observer:
    """Who made the observation: the model, as a device."""

    model_id: str
    checkpoint_sha256: str
    threshold_name: str
    threshold: float
    aggregate: str
    software_version: str = __version__


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
    study: score_io.StudyRow | None  # the .studies.csv row (aggregate), if any


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
    agg = {r.study_uid: r for r in score_io.study_rows(scores, aggregate)}
    for uid, s in by_study.items():
        s.study = agg.get(uid)
    return [by_study[k] for k in sorted(by_study)], orphans


def _group(tracking: str, tracking_uid: str, obs: Observer, refs: Iterable[Any], finding: str,
           prob: str = "", reason: str = "") -> Any:
    """One TID 1501 measurement group: the finding (present / absent / not evaluated) of
    the referenced images, the probability when scored, the reason when not."""
    import highdicom as hd

    c = _codes()
    value = {"present": c["present"], "absent": c["absent"], "not evaluated": c["not_evaluated"]}[finding]
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"fibrosis model {obs.model_id}", version=f"fibrosis {obs.software_version}",
        parameters=[f"operating point {obs.threshold_name}", f"threshold {obs.threshold:.10g}"])
    measurements = []
    if prob != "":
        measurements.append(hd.sr.Measurement(name=c["probability"], value=float(prob), unit=c["unit"]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking),
        algorithm_id=algorithm, measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(c["fibrosis"], value)],
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(h.SOPClassUID), str(h.SOPInstanceUID))
                       for h in refs])
    if reason:
        group[0].ContentSequence.append(hd.sr.TextContentItem(c["reason"], reason[:1024],
                                                              relationship_type="CONTAINS"))
    return group


def _decision(decision: str | int | None) -> str:
    return "present" if int(decision or 0) else "absent"


def build_sr(s: StudyRows, obs: Observer, *, sop_instance_uid: str | None = None, instance_number: int = 1,
             predecessor: Any | None = None) -> Any:
    """The SR of one study (TID 1500 in a Comprehensive SR); ``predecessor``: the dataset
    of the SR this one replaces (its UIDs go into Predecessor Documents Sequence)."""
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
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))
    study = s.study
    prob = study.probability_calibrated if study else ""
    key = (obs.checkpoint_sha256, s.study_uid)
    groups = [_group("study", uid_for("track", *key, "study"), obs, [h for _, h in s.ok],
                     _decision(study.decision_fibrosis) if study and prob != "" else "not evaluated", prob=prob,
                     reason="" if s.ok else "no frontal image of the study was scored")]
    for row, hdr in s.ok:
        groups.append(_group(f"image {hdr.SOPInstanceUID}", uid_for("track", *key, str(hdr.SOPInstanceUID)),
                             obs, [hdr], _decision(row["decision_fibrosis"]), prob=row["probability_calibrated"]))
    for row, hdr in s.not_scored:
        groups.append(_group(f"not scored {hdr.SOPInstanceUID}",
                             uid_for("track", *key, str(hdr.SOPInstanceUID)), obs, [hdr], "not evaluated",
                             reason=f"{row['status']}: {row['reason']}"))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=c["procedure"],
                                     imaging_measurements=groups)
    # TID 1600 by hand: highdicom's descriptors of a projection radiograph need
    # PatientOrientation and ImagerPixelSpacing, which many CR/DX exports lack, and the
    # entry descriptors are optional. Placed before Imaging Measurements (TID 1500 order).
    library = hd.sr.ContainerContentItem(hd.sr.CodedConcept("111028", "DCM", "Image Library"),
                                         relationship_type="CONTAINS")
    entries = hd.sr.ContainerContentItem(hd.sr.CodedConcept("126200", "DCM", "Image Library Group"),
                                         relationship_type="CONTAINS")
    entries.ContentSequence = hd.sr.ContentSequence([
        hd.sr.ImageContentItem(hd.sr.CodedConcept("260753009", "SCT", "Source"), str(h.SOPClassUID),
                               str(h.SOPInstanceUID), relationship_type="CONTAINS") for h in evidence])
    library.ContentSequence = hd.sr.ContentSequence([entries])
    root_items = report[0].ContentSequence
    root_items.insert(len(root_items) - 1, library)
    notes = hd.sr.ContainerContentItem(c["qualitative"], relationship_type="CONTAINS")
    notes.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(c["comment"], DISCLAIMER, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["software"], f"fibrosis {obs.software_version}", relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["model_id"], obs.model_id, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["sha256"], obs.checkpoint_sha256, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["aggregate"], obs.aggregate, relationship_type="CONTAINS"),
    ])
    report[0].ContentSequence.append(notes)
    sr = hd.sr.ComprehensiveSR(
        evidence=[first] + evidence[1:], content=report[0],
        series_instance_uid=uid_for("sr-series", obs.checkpoint_sha256, s.study_uid),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description=SR_SERIES_DESCRIPTION,
        previous_versions=[predecessor] if predecessor is not None else None)
    scheme = Dataset()  # declares the private scheme, so a reader can tell whose codes these are
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "fibrosis research-model concepts"
    scheme.CodingSchemeResponsibleOrganization = "fibrosis open-source project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SoftwareVersions = f"fibrosis {obs.software_version}"
    sr.ManufacturerModelName = f"fibrosis model {obs.model_id}"
    return sr


def content_digest(ds: Any) -> str:
    """What an SR says, without when it was written or which version it is: the content
    tree and the evidence, serialised (so a dataset read from disk and one just built
    compare alike)."""

    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    part = Dataset()
    for kw in ("ContentSequence", "CurrentRequestedProcedureEvidenceSequence", "ConceptNameCodeSequence",
               "SeriesInstanceUID", "StudyInstanceUID", "CompletionFlag", "VerificationFlag"):
        if kw in ds:
            setattr(part, kw, ds[kw].value)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, part)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def sr_path(sr_dir: Path, study_uid: str) -> Path:
    return sr_dir / f"{study_uid}.sr.dcm"


def _current(target: Path) -> Any | None:
    """The study's current SR in the folder, or None (absent or unreadable: then the new
    one starts a version chain of its own)."""
    import pydicom

    if not target.is_file():
        return None
    try:
        ds = pydicom.dcmread(target)
        str(ds.SOPInstanceUID), int(ds.InstanceNumber)
    except Exception:  # a damaged file is replaced, not trusted
        logger.warning("SR: %s is not a readable SR; writing a new one without predecessor", target)
        return None
    return ds


def write_srs(scores: Path, sr_dir: Path, obs: Observer, paths: set[str] | None = None) -> list[Path]:
    """Write one SR per DICOM study among ``paths``' rows of ``scores``, superseding the
    study's current SR in ``sr_dir`` when the content changed; returns the study files
    (also those left unchanged)."""

    import pydicom

    studies, orphans = collect(scores, paths, obs.aggregate)
    if orphans:
        logger.info("SR: %s with no readable DICOM header belong to no study; listed only in %s",
                    plural(orphans, "file"), scores)
    sr_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for s in studies:
        target = sr_path(sr_dir, s.study_uid)
        old = _current(target)
        sr = build_sr(s, obs)
        buf = io.BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        if old is not None:
            new_digest = content_digest(pydicom.dcmread(io.BytesIO(buf.getvalue())))
            if new_digest == content_digest(old):
                logger.info("SR: study %s unchanged; %s kept (instance %s)", s.study_uid, target,
                            old.InstanceNumber)
                written.append(target)
                continue
            same_series = str(old.SeriesInstanceUID) == str(sr.SeriesInstanceUID)
            sr = build_sr(s, obs, instance_number=int(old.InstanceNumber) + 1 if same_series else 1,
                          predecessor=old)
            buf = io.BytesIO()
            sr.save_as(buf, enforce_file_format=True)
        atomic_write_bytes(target, buf.getvalue())
        written.append(target)
        logger.info("SR: study %s: %s scored, %d not scored -> %s (instance %d%s)", s.study_uid,
                    plural(len(s.ok), "image"), len(s.not_scored), target, sr.InstanceNumber,
                    f", replaces {old.SOPInstanceUID}" if old is not None else "")
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
        studies, _ = collect(scores, paths, aggregate)
        files += write_scs(studies, fz, sha256, net, sc_dir)
    return [str(f) for f in files]
