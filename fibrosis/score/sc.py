"""Grad-CAM overlays as DICOM Secondary Capture (``--sc-out``), in the source's study.

One RGB SC per frontal image scored: the model input (the square, resized image the
network saw, not the full-resolution radiograph) under a JET heat map of the
Grad-CAM for the fibrosis logit, enlarged to ``SC_SIZE`` pixels square so that a viewer
shows it at a readable size, with "RESEARCH OUTPUT - NOT A DIAGNOSIS" burned into the
pixels above and below the heat map (a screenshot or a print keeps it; BurnedInAnnotation
YES), and the source radiograph in Source Image Sequence. Built built with highdicom's ``SCImage.from_ref_dataset``
so the patient and study modules are the source's and a viewer files it beside the
radiograph. An SC already in the folder for the same source content and checkpoint
(its Derivation Description says which) is kept as it is, not computed again. Pixels are re-decoded with the same per-file function as scoring
(the scoring workers keep no images), so this costs one more decode per image.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis.io import atomic_write_bytes
from fibrosis.score.identity import MANUFACTURER, uid_for
from fibrosis.score.pixels import model_input, overlay
from fibrosis.data.records import Decoded
from fibrosis.words import plural

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "fibrosis Grad-CAM overlay (research, not a diagnosis)"
SC_SIZE = 1024  # rows = columns: the model input (e.g. 224 px) enlarged for reading
BURNED_IN = "RESEARCH OUTPUT - NOT A DIAGNOSIS"
_ORIENTATION = {"A", "P", "R", "L", "H", "F"}


def _orientation(hdr: Any) -> tuple[str, str]:
    """The source's (0020,0020) PatientOrientation when it has two valid values; else
    ("L", "F"), the usual display of a frontal chest radiograph (row towards the
    patient's left, column towards the feet). The overlay keeps the source's raster
    orientation, so the source's value describes it."""
    value = hdr.get("PatientOrientation")
    vals = [str(v) for v in value] if value is not None and not isinstance(value, str) else (
        str(value or "").split("\\") if value else [])
    if len(vals) == 2 and all(v and set(v) <= _ORIENTATION for v in vals):
        return vals[0], vals[1]
    return "L", "F"


def _derivation(model_id: str, sha256: str, content_hash: str) -> str:
    """What the SC was made from: the identity an existing file is checked against."""
    return (f"Grad-CAM overlay of fibrosis research model {model_id} (checkpoint sha256 {sha256}) on the "
            f"model input of the source image (content sha256 {content_hash}); not a diagnosis")


def burn_in(rgb: np.ndarray, lines: tuple[str, str]) -> np.ndarray:
    """``rgb`` with ``lines`` written in white on black bands at its top and bottom: the
    warning travels with the pixels wherever the image goes."""
    import cv2

    out = rgb.copy()
    h, w = out.shape[:2]
    scale = w / 900  # about 30 px high text at 1024 px
    thick = max(1, round(2 * scale))
    for text, top in zip(lines, (True, False)):
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        band = th + base + 2 * thick + 8
        y0 = 0 if top else h - band
        out[y0:y0 + band] = 0
        cv2.putText(out, text, (max(0, (w - tw) // 2), y0 + 4 + th), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thick, cv2.LINE_AA)
    return out


def write_scs(studies: list[Any], fz: Any, sha256: str, net: Any, sc_dir: Path) -> list[Path]:
    """One SC per (row, header) in each study's ``ok`` list; returns the files (also those
    already there for the same content and checkpoint, which are not computed again)."""
    import cv2
    import highdicom as hd
    import pydicom
    import torch
    from pydicom.dataset import Dataset

    from fibrosis.data.workers import process_file
    from fibrosis.model.cam import compute_cams

    sc_dir.mkdir(parents=True, exist_ok=True)
    dev = next(net.parameters()).device
    written: list[Path] = []
    kept = 0
    for s in studies:
        for number, (row, hdr) in enumerate(s.ok, start=1):
            target = sc_dir / f"{hdr.SOPInstanceUID}.sc.dcm"
            derivation = _derivation(fz.model_id, sha256, row["content_hash"])
            try:
                if pydicom.dcmread(target, stop_before_pixels=True).DerivationDescription == derivation:
                    written.append(target)
                    kept += 1
                    continue
            except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
                pass  # absent, unreadable or of other content: (re)made below
            res = process_file((row["path"], "", {}), fz.ingest)
            if not isinstance(res, Decoded) or res.content_hash != row["content_hash"]:
                logger.warning("SC: study %s: %s changed since it was scored; no overlay", s.study_uid,
                               row["path"])
                continue
            x = model_input(res.image, fz.ingest.cache_dtype, fz.preprocessing)[None]
            cam = compute_cams(net, torch.from_numpy(x).to(dev), net.cam_layer_name)[0]
            big = cv2.resize(x[0, 0], (SC_SIZE, SC_SIZE), interpolation=cv2.INTER_CUBIC)
            heat = cv2.resize(np.asarray(cam, np.float32), (SC_SIZE, SC_SIZE), interpolation=cv2.INTER_LINEAR)
            rgb = cv2.cvtColor(overlay(big, heat, fz.preprocessing), cv2.COLOR_BGR2RGB)
            rgb = burn_in(rgb, (BURNED_IN, f"Grad-CAM, fibrosis model {fz.model_id}, p = {row['probability_calibrated']}"))
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=hdr, pixel_array=np.ascontiguousarray(rgb), photometric_interpretation="RGB",
                bits_allocated=8, coordinate_system="PATIENT",
                series_instance_uid=uid_for("sc-series", sha256, s.study_uid), series_number=SC_SERIES_NUMBER,
                sop_instance_uid=hd.UID(), instance_number=number, manufacturer=MANUFACTURER,
                patient_orientation=_orientation(hdr), series_description=SC_SERIES_DESCRIPTION)
            sc.ImageComments = "Grad-CAM overlay of a research model: not a diagnosis"
            sc.BurnedInAnnotation = "YES"  # the warning is in the pixels, on purpose
            sc.DerivationDescription = derivation
            source = Dataset()
            source.ReferencedSOPClassUID = hdr.SOPClassUID
            source.ReferencedSOPInstanceUID = hdr.SOPInstanceUID
            sc.SourceImageSequence = [source]
            sc.ImageType = ["DERIVED", "SECONDARY"]
            if "Laterality" not in sc:  # Type 2C; dciodvfy wants it once BodyPartExamined is copied
                # None: present and empty. mypy infers str from highdicom's own assignment of it.
                sc.Laterality = None  # type: ignore[assignment]
            buf = io.BytesIO()
            sc.save_as(buf, enforce_file_format=True)
            atomic_write_bytes(target, buf.getvalue())
            written.append(target)
    logger.info("SC: %s -> %s (%d already there for the same content)", plural(len(written), "Grad-CAM overlay"), sc_dir,
                kept)
    return written
