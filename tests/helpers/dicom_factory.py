"""Tiny DICOM/PNG files for tests, written with pydicom (importable by any test module).

``chest_phantom`` draws a frontal-chest-like display image (dark lungs, bright
mediastinum/spine column, soft-tissue body, dark air outside), so tests can
check orientation the same way as on real radiographs. ``make_dicom`` writes it
(or any array) with the header features each pixel-pipeline branch needs.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (JPEG2000, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless,
                         generate_uid)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def chest_phantom(rows: int = 320, cols: int = 288, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """Display image in [0, 1]: lungs ~0.2, body ~0.55, central column ~0.85, air ~0.05."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    yn, xn = y / rows, x / cols
    img = np.full((rows, cols), 0.05)
    body = ((xn - 0.5) / 0.45) ** 2 + ((yn - 0.55) / 0.5) ** 2 < 1
    img[body] = 0.55
    for cx in (0.27, 0.73):
        lung = ((xn - cx) / 0.16) ** 2 + ((yn - 0.45) / 0.25) ** 2 < 1
        img[lung] = 0.2 + 0.05 * np.sin(40 * yn[lung]) * np.sin(40 * xn[lung])  # rib-like texture
    img[(np.abs(xn - 0.5) < 0.06) & (yn > 0.1)] = 0.85
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(rows, cols) / 300)  # anatomy has no razor edges
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 1)


def to_stored(display: np.ndarray, bits: int = 12, monochrome1: bool = False) -> np.ndarray:
    top = (1 << bits) - 1
    stored = np.rint(display * top).astype(np.uint16 if bits > 8 else np.uint8)
    return (top - stored).astype(stored.dtype) if monochrome1 else stored


def make_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                 modality: str = "DX", body_part: str | None = "CHEST", view: str | None = "PA",
                 patient_id: str | None = "PAT-001", patient_name: str = "Doe^Jane",
                 study_uid: str | None = None, sop_uid: str | None = None, signed: bool = False,
                 **attrs: Any) -> Dataset:
    """An uncompressed (Explicit VR LE) dataset; ``attrs`` are set as DICOM keywords."""
    pixels = np.ascontiguousarray(pixels)
    bits = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE if modality == "DX" else CR_STORAGE
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientSex = "F"
    ds.PatientAge = "061Y"
    ds.Manufacturer = "TestVendor"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def lut_item(descriptor: list[int], data: list[int], **attrs: Any) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new(0x00283006, "OW", np.asarray(data, "<u2").tobytes())  # LUTData, as scanners write it
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def save(ds: Dataset, path: str | Path, syntax: str = "explicit", *, preamble: bool = True) -> Path:
    """Write ``ds`` with one of: explicit, implicit, deflate, rle, j2k, j2k-lossy, jpeg-baseline.
    ``preamble=False`` writes a bare ACR-NEMA-style dataset (no preamble, no File Meta)."""
    path = Path(path)
    ds = ds.copy()
    if syntax == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    elif syntax == "j2k":
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    elif syntax == "j2k-lossy":
        ds.compress(JPEG2000, j2k_cr=[20], use_mct=False, generate_instance_uid=False)
    elif syntax == "jpeg-baseline":
        arr = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
        buf = io.BytesIO()
        Image.fromarray(arr, "L").save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif syntax in ("implicit", "deflate"):
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if syntax == "implicit"
                                          else DeflatedExplicitVRLittleEndian)
    elif syntax != "explicit":
        raise ValueError(f"syntax {syntax!r} not in explicit, implicit, deflate, rle, j2k, j2k-lossy, "
                         "jpeg-baseline")
    if not preamble:
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        return path
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicom(path: str | Path, pixels: np.ndarray, syntax: str = "explicit", *, preamble: bool = True,
               **kwargs: Any) -> Path:
    return save(make_dataset(pixels, **kwargs), path, syntax, preamble=preamble)


def make_png(path: str | Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return Path(path)


def truncate(path: str | Path, keep: float) -> Path:
    """Cut a file to the first ``keep`` fraction of its bytes (a transfer that died)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_deflate_bomb(path: str | Path, pixels: np.ndarray, padding: int, **kwargs: Any) -> Path:
    """A valid Deflated Explicit VR Little Endian DICOM whose dataset ends with ``padding`` zero
    bytes in a private element after the pixel data: about 1 KB on disk per MB inflated, written
    in 1 MiB steps (the test process never holds the inflated dataset)."""
    if padding % 2:
        raise ValueError(f"padding={padding}; expected an even number of bytes (OB)")
    ds = make_dataset(pixels, **kwargs)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    creator = b"ZIPBOMB "  # (7FE1,0010) private creator, then (7FE1,1000) OB of zeros
    body.write(struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator)
    body.write(struct.pack("<HH2sHI", 0x7FE1, 0x1000, b"OB", 0, padding))
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    with open(path, "wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + meta.getvalue() + deflate.compress(body.getvalue()))
        for _ in range(padding // len(chunk)):
            fh.write(deflate.compress(chunk))
        fh.write(deflate.compress(bytes(padding % len(chunk))) + deflate.flush())
    return Path(path)
