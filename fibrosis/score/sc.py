"""Grad-CAM overlays as DICOM Secondary Capture (``--sc-out``), in the source's study.

One RGB SC per frontal image scored: the model input (the square, resized image the
network saw, not the full-resolution radiograph) under a JET heat map of the
Grad-CAM for the fibrosis logit, built with highdicom's ``SCImage.from_ref_dataset``
so the patient and study modules are the source's and a viewer files it beside the
radiograph. Pixels are re-decoded with the same per-file function as scoring
(the scoring workers keep no images), so this costs one more decode per image.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fibrosis.io import atomic_write_bytes

logger = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "fibrosis Grad-CAM overlay (research, not a diagnosis)"
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


def write_scs(studies: list[Any], fz: Any, sha256: str, net: Any, sc_dir: Path) -> list[Path]:
    """One SC per (row, header) in each study's ``ok`` list; returns the files written."""
    import cv2
    import highdicom as hd
    import torch

    from fibrosis.data.records import Decoded
    from fibrosis.data.workers import process_file
    from fibrosis.model.cam import compute_cams
    from fibrosis.score.run import model_input, overlay
    from fibrosis.score.sr import MANUFACTURER, uid_for

    sc_dir.mkdir(parents=True, exist_ok=True)
    dev = next(net.parameters()).device
    written: list[Path] = []
    for s in studies:
        for number, (row, hdr) in enumerate(s.ok, start=1):
            res = process_file((row["path"], "", {}), fz.ingest)
            if not isinstance(res, Decoded) or res.content_hash != row["content_hash"]:
                logger.warning("SC: study %s: %s changed since it was scored; no overlay", s.study_uid,
                               row["path"])
                continue
            x = model_input(res.image, fz.ingest.cache_dtype, fz.preprocessing)[None]
            cam = compute_cams(net, torch.from_numpy(x).to(dev), net.cam_layer_name)[0]
            rgb = cv2.cvtColor(overlay(x[0, 0], cam, fz.preprocessing), cv2.COLOR_BGR2RGB)
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=hdr, pixel_array=np.ascontiguousarray(rgb), photometric_interpretation="RGB",
                bits_allocated=8, coordinate_system="PATIENT",
                series_instance_uid=uid_for("sc-series", sha256, s.study_uid), series_number=SC_SERIES_NUMBER,
                sop_instance_uid=uid_for("sc", sha256, str(hdr.SOPInstanceUID), row["content_hash"]),
                instance_number=number, manufacturer=MANUFACTURER, patient_orientation=_orientation(hdr),
                series_description=SC_SERIES_DESCRIPTION)
            sc.ImageComments = "Grad-CAM overlay of a research model: not a diagnosis"
            sc.BurnedInAnnotation = "NO"
            if "Laterality" not in sc:  # Type 2C; dciodvfy wants it once BodyPartExamined is copied
                sc.Laterality = None
            buf = io.BytesIO()
            sc.save_as(buf, enforce_file_format=True)
            target = sc_dir / f"{hdr.SOPInstanceUID}.sc.dcm"
            atomic_write_bytes(target, buf.getvalue())
            written.append(target)
    logger.info("SC: %d Grad-CAM overlay(s) -> %s", len(written), sc_dir)
    return written
