"""DICOM header side of the pixel path: sniffing, parsing, manifest metadata, input policy.

Everything here runs on the header alone, *before* any pixel decoding, so that a
file that is malformed (error) or out of scope (excluded by policy) never costs
a decode -- and an absurd Rows x Columns is refused before a decoder can try to
allocate it. The pixel side lives in :mod:`fibrosis.data.pixels`.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from datetime import date
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fibrosis.config import IngestConfig
from fibrosis.data.coded import PLACEHOLDERS, SEXES, age_string_years, coded, quoted, uid
from fibrosis.data.records import ImageMeta, PatientId

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# DX / mammography / intra-oral "For Processing" classes hold raw detector data
# that no reader looks at; the model is trained on "For Presentation" images.
FOR_PROCESSING_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.3.1",
}
SOP_CLASS_MODALITY = {  # Modality is Type 1 in CR/DX, but ACR-NEMA-era files may lack it
    "1.2.840.10008.5.1.4.1.1.1": "CR", "1.2.840.10008.5.1.4.1.1.1.1": "DX",
}
HUMAN_SPECIES = {"", "HOMO SAPIENS", "HUMAN"}
# Series/image-level free text searched for policy terms. Study-level text is
# deliberately not searched: "CHEST PA AND LAT" describes the whole study, and
# its PA image is exactly what we want.
DESCRIPTION_TAGS = (
    ("SeriesDescription", "(0008,103E)"),
    ("ProtocolName", "(0018,1030)"),
    ("AcquisitionDeviceProcessingDescription", "(0018,1400)"),
    ("ImageComments", "(0020,4000)"),
)
CODE_SEQUENCES = (
    ("PerformedProtocolCodeSequence", "(0040,0260)"),
    ("AnatomicRegionSequence", "(0008,2218)"),
    ("ViewCodeSequence", "(0054,0220)"),
)


class InputError(Exception):
    """One input file cannot be used.

    ``kind`` is ``"error"`` (bad input: corrupt, truncated, unsupported) or
    ``"excluded"`` (a valid file that policy keeps out, e.g. a lateral view).
    """

    def __init__(self, path: str | Path, reason: str, transfer_syntax: str = "",
                 kind: Literal["error", "excluded"] = "error"):
        if kind not in ("error", "excluded"):
            raise ValueError(f"InputError kind {kind!r} not in ['error', 'excluded']")
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.transfer_syntax, self.kind = str(path), reason, transfer_syntax, kind

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str, str, str]]:
        # keep all fields across worker processes
        return (InputError, (self.path, self.reason, self.transfer_syntax, self.kind))


def sniff(head: bytes) -> str:
    """'dicom', 'png', 'jpeg', 'acr-nema' (no preamble, maybe DICOM) or 'unknown'."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 8:
        group = struct.unpack("<H", head[:2])[0]
        # A preamble-less file starts directly with its first element: group 0008
        # (ACR-NEMA / bare dataset) or 0002 (file meta written without preamble).
        if group in (0x0002, 0x0008):
            return "acr-nema"
    return "unknown"


INFLATE_CHUNK = 1 << 20  # output bytes per inflate step: the size check holds only this much


def check_inflated_size(data: bytes, path: str | Path, max_bytes: int) -> None:
    """Refuse a Deflated Explicit VR Little Endian file whose dataset inflates past
    ``max_bytes``, measured in bounded steps: pydicom inflates the whole dataset into
    memory in one call, and a few MB of zeros can inflate to many GB (a zip bomb)."""
    fp = io.BytesIO(data)
    try:
        # Where pydicom's own reader starts inflating: after preamble, File Meta and any
        # command set (pydicom.filereader.read_partial does the same three steps).
        pydicom.filereader.read_preamble(fp, True)
        meta = pydicom.filereader._read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        pydicom.filereader._read_command_set_elements(fp)
    except Exception:  # a malformed header: dcmread reports it with its reason
        return
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    stream = memoryview(data)[fp.tell():]
    try:
        # Input in small pieces too: unconsumed_tail is a copy of the input left over.
        for start in range(0, len(stream), INFLATE_CHUNK):
            pending: Any = stream[start:start + INFLATE_CHUNK]
            while True:  # until this piece is consumed and zlib holds no more output
                out = inflater.decompress(pending, INFLATE_CHUNK)
                total += len(out)
                if total > max_bytes:
                    raise InputError(
                        path, f"deflated dataset (transfer syntax {DeflatedExplicitVRLittleEndian}) inflates "
                              f"to more than {max_bytes >> 20} MiB from {len(data)} bytes; limit "
                              f"ingest.max_inflated_mb={max_bytes >> 20} (a zip bomb, or raise the limit)",
                        DeflatedExplicitVRLittleEndian)
                if inflater.eof:
                    return
                pending = inflater.unconsumed_tail
                if not pending and len(out) < INFLATE_CHUNK:
                    break
    except zlib.error:  # a corrupt stream: dcmread reports it
        return


def read_dataset(data: bytes, path: str | Path, fmt: str, max_inflated: int | None = None) -> tuple[Dataset, str]:
    """Parse a DICOM byte string; returns the dataset and its transfer syntax UID.
    ``max_inflated``: bytes a deflated dataset may inflate to (:func:`check_inflated_size`)."""
    if max_inflated is not None:
        check_inflated_size(data, path, max_inflated)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise InputError(path, f"unreadable DICOM header: {type(exc).__name__}: {_scrubbed(exc)}") from None
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "") if hasattr(ds, "file_meta") else ""
    if not ts:
        if fmt == "acr-nema" and "PixelData" not in ds and "Rows" not in ds:
            raise InputError(path, "not a DICOM, PNG or JPEG file (no 'DICM' marker at byte 128, "
                                   "no image elements when parsed as ACR-NEMA)")
        # No File Meta: the encoding pydicom detected while reading is the only
        # evidence; ACR-NEMA files are Implicit VR Little Endian in practice.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if little is False:
            raise InputError(path, "no File Meta and big-endian encoding; expected little endian")
        ts = ImplicitVRLittleEndian if implicit in (True, None) else ExplicitVRLittleEndian
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    if not UID(ts).is_transfer_syntax:
        raise InputError(path, f"(0002,0010) TransferSyntaxUID={shown(ts)} is not a transfer syntax; "
                               "expected a DICOM transfer syntax UID")
    _decode_elements(ds, path, ts)
    _check_single_integers(ds, path, ts)
    return ds, ts


KNOWN_VRS = frozenset(vr.value for vr in pydicom.valuerep.VR)
_PLAIN_VALUE = re.compile(r"[-+0-9.eE\\ ,\[\]]{0,64}")  # numbers, UIDs, lists of them: no words


def shown(value: Any) -> str:
    """``repr`` of a header value for a reason, if it is made of numbers (a count, a UID, a
    list of integers); else only its length. A corrupt length can make an element swallow the bytes after it, such
    as a patient's name, and reasons must not carry such text into the outputs."""
    text = str(value)
    return repr(text) if _PLAIN_VALUE.fullmatch(text) else f"<{len(text)} characters, not shown>"


_QUOTED = re.compile(r"b?'[^']*'" + r'|b?"[^"]*"')


def _scrubbed(exc: Exception) -> str:
    """First line of a parser's message with quoted values replaced by '…': pydicom quotes
    the raw bytes it choked on, which may be part of a name or a description."""
    lines = str(exc).strip().splitlines() or [""]
    return _QUOTED.sub("'…'", lines[0])[:200]


def _decode_elements(ds: Dataset, path: str | Path, ts: str) -> None:
    """Decode every element now, inside the header stage. pydicom decodes values lazily,
    on first access, so a corrupt length or value would otherwise raise wherever the
    value is first used (metadata, checks, decoder) instead of naming the element.
    The reason names tag, VR and length, not the value: it may be free text."""
    todo = [ds]
    while todo:
        current = todo.pop()
        for tag in list(current.keys()):
            try:
                elem = current[tag]
            except Exception as exc:  # pydicom raises many types for undecodable values
                raw = getattr(current, "_dict", {}).get(tag)  # as read: not decoded again
                vr = str(getattr(raw, "VR", None) or "")
                vr = vr if vr in KNOWN_VRS else "unknown"  # raw VR bytes may be text of a value
                length = getattr(raw, "length", "?")
                raise InputError(path, f"unreadable DICOM header: element {tag} "
                                       f"{pydicom.datadict.keyword_for_tag(tag) or 'private'} (VR {vr}, "
                                       f"{length} bytes) cannot be decoded ({type(exc).__name__}); "
                                       f"expected a valid {vr} value", ts) from None
            if elem.VR == "SQ" and elem.value:
                todo.extend(elem.value)


# Header values read as one integer each (Rows * Columns, bit depths, frames); a
# corrupt length or VM turns them into lists or text that int() cannot take.
SINGLE_INTEGERS = (
    ("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"), ("BitsAllocated", "(0028,0100)"),
    ("BitsStored", "(0028,0101)"), ("HighBit", "(0028,0102)"), ("PixelRepresentation", "(0028,0103)"),
    ("SamplesPerPixel", "(0028,0002)"), ("PlanarConfiguration", "(0028,0006)"), ("NumberOfFrames", "(0028,0008)"),
)


def _check_single_integers(ds: Dataset, path: str | Path, ts: str) -> None:
    for kw, tag in SINGLE_INTEGERS:
        value = ds.get(kw)
        if value is None or value == "":
            continue
        if isinstance(value, (pydicom.multival.MultiValue, list)):
            raise InputError(path, f"{tag} {kw} has {len(value)} values; expected one integer", ts)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"{tag} {kw}={shown(value)}; expected an integer", ts)


# (keyword, tag, bits per entry pydicom's lookup supports) of the LUTs the pixel path applies
LUT_SEQUENCES = (("ModalityLUTSequence", "(0028,3000)", (8, 16)),
                 ("VOILUTSequence", "(0028,3010)", (8, *range(10, 17))))


def check_luts(ds: Dataset, path: str | Path, ts: str) -> None:
    """Refuse a malformed Modality or VOI LUT (its first item, the one applied) before it
    is used: a descriptor that is not 3 integers, an unsupported entry size, missing or
    short LUT Data, or entries that do not fit the declared bits. pydicom's lookup code
    would fail on each with an unrelated error (struct, overflow, key)."""
    for kw, tag, depths in LUT_SEQUENCES:
        items = ds.get(kw)
        if not items:
            continue
        item, where = items[0], f"{tag} {kw} item 1"
        desc = item.get("LUTDescriptor")
        values = list(desc) if isinstance(desc, (pydicom.multival.MultiValue, list)) else [desc]
        if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise InputError(path, f"{where} (0028,3002) LUTDescriptor has {len(values)} value(s) "
                                   f"{shown(values[:3])}; expected 3 integers (entries, first mapped value, "
                                   "bits per entry)", ts)
        entries, bits = values[0] or 65536, values[2]
        if bits not in depths:
            raise InputError(path, f"{where} (0028,3002) LUTDescriptor bits per entry={bits}; expected one "
                                   f"of {list(depths)}", ts)
        data = item.get("LUTData")
        if data is None or (hasattr(data, "__len__") and len(data) == 0):
            raise InputError(path, f"{where}: missing (0028,3006) LUTData; expected {entries} entries", ts)
        if isinstance(data, bytes):  # OW: 16-bit words
            table = np.frombuffer(data[:len(data) // 2 * 2], "<u2" if UID(ts).is_little_endian else ">u2")
        else:
            table = np.asarray(list(data) if isinstance(data, (pydicom.multival.MultiValue, list)) else [data])
        # pydicom unpacks a Modality LUT's OW data to exactly `entries` words, a VOI LUT's to at least.
        exact = kw == "ModalityLUTSequence" and isinstance(data, bytes)
        if table.size < entries or (exact and table.size != entries):
            raise InputError(path, f"{where} (0028,3006) LUTData has {table.size} entries; expected "
                                   f"{entries} from (0028,3002) LUTDescriptor", ts)
        top = int(table[:entries].max())
        if top >= 1 << bits or int(table[:entries].min()) < 0:
            raise InputError(path, f"{where} (0028,3006) LUTData holds {top}; expected values that fit "
                                   f"the declared {bits} bits per entry", ts)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def parse_age(age: str, birth: str = "", study: str = "") -> str:
    """PatientAge '047Y' / '006M' / '010W' / '003D' -> years ('47', '0.5'); else from dates."""
    years = age_string_years(age)
    if years:
        return years
    if re.fullmatch(r"\d{8}", birth) and re.fullmatch(r"\d{8}", study):
        try:
            b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
            s = date(int(study[:4]), int(study[4:6]), int(study[6:]))
        except ValueError:
            return ""
        whole = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
        return str(whole) if 0 <= whole < 130 else ""
    return ""


def _spacing(ds: Dataset) -> str:
    """PixelSpacing, else ImagerPixelSpacing, as 'row\\col' mm; '' if absent or zero."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(kw)
        try:
            vals = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            vals = []
        if len(vals) == 2 and all(v > 0 for v in vals):
            return "\\".join(f"{v:g}" for v in vals)
    return ""


def vocabulary_extras(cfg: IngestConfig | None) -> dict[str, tuple[str, ...]]:
    """The terms the ingest config adds to a tag's DICOM vocabulary (:mod:`fibrosis.data.coded`): a
    site's own modality, body-part or view code must reach the policy check that names it."""
    if cfg is None:
        return {}
    return {"Modality": cfg.allowed_modalities, "ViewPosition": cfg.excluded_views,
            "BodyPartExamined": (*cfg.allowed_body_parts, *cfg.excluded_description_terms)}


def dicom_meta(ds: Dataset, ts: str, fmt: str, cfg: IngestConfig | None = None) -> ImageMeta:
    """Manifest fields from the header (names as in cache.MANIFEST_COLUMNS), and the raw
    PatientID as a :class:`PatientId` (hashed into the patient key, never written). Coded
    tags and names pass :func:`fibrosis.data.coded.coded` (a value that cannot be a code of its
    tag becomes a placeholder), UIDs :func:`~fibrosis.data.coded.uid`."""
    extra = vocabulary_extras(cfg)

    def code(keyword: str) -> str:
        return coded(_text(ds, keyword), keyword, extra.get(keyword, ()))

    sex = code("PatientSex")
    modality = code("Modality") or SOP_CLASS_MODALITY.get(_text(ds, "SOPClassUID"), "")
    return ImageMeta(
        study_uid=uid(_text(ds, "StudyInstanceUID")),
        series_uid=uid(_text(ds, "SeriesInstanceUID")),
        sop_uid=uid(_text(ds, "SOPInstanceUID")),
        view_position=code("ViewPosition"),
        body_part=code("BodyPartExamined"),
        modality=modality,
        manufacturer=code("Manufacturer"),
        model_name=code("ManufacturerModelName"),
        sex=sex if sex in SEXES else "",
        age=parse_age(_text(ds, "PatientAge"), _text(ds, "PatientBirthDate"),
                      _text(ds, "StudyDate") or _text(ds, "AcquisitionDate")),
        pixel_spacing=_spacing(ds),
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        transfer_syntax=ts,
        photometric=code("PhotometricInterpretation"),
        source_format="dicom" if fmt == "dicom" else "acr-nema",
        patient_id=PatientId(_text(ds, "PatientID")),
        study_month=_month(_text(ds, "StudyDate") or _text(ds, "AcquisitionDate")),
    )


def _month(date_text: str) -> str:
    """DICOM DA 'YYYYMMDD' -> 'YYYY-MM'; anything else -> ''."""
    m = re.fullmatch(r"((?:19|20)\d\d)(0[1-9]|1[0-2])\d\d", date_text.strip())
    return f"{m.group(1)}-{m.group(2)}" if m else ""


def check_header(ds: Dataset, meta: ImageMeta, path: str | Path, cfg: IngestConfig,
                 data_len: int) -> None:
    """Refuse malformed or unsupported pixel data before decoding (kind 'error')."""
    ts = meta.transfer_syntax

    def bad(reason: str) -> InputError:
        return InputError(path, reason, ts, "error")

    if _text(ds, "SOPClassUID") == DICOMDIR_SOP_CLASS:
        raise bad("DICOMDIR (Media Storage Directory Storage) is an index, not an image")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise bad("(7FE0,0008/0009) float pixel data; expected integer (7FE0,0010) PixelData")
        raise bad("missing (7FE0,0010) PixelData")
    photometric = meta.photometric
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise bad(f"(0028,0004) PhotometricInterpretation={quoted(photometric)}; "
                  "expected MONOCHROME1/MONOCHROME2")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise bad(f"(0028,0002) SamplesPerPixel={spp}; expected 1")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise bad(f"multi-frame: (0028,0008) NumberOfFrames={frames}; expected 1")
    rows, cols = meta.rows, meta.cols
    if rows <= 0 or cols <= 0:
        raise bad(f"(0028,0010) Rows={rows} x (0028,0011) Columns={cols}; expected positive sizes")
    if rows > cfg.max_rows or cols > cfg.max_cols:
        raise bad(f"absurd dimensions (0028,0010) Rows={rows} x (0028,0011) Columns={cols}; "
                  f"limit {cfg.max_rows} x {cfg.max_cols} (ingest.max_rows/max_cols)")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    stored = int(ds.get("BitsStored", bits) or bits)
    if bits not in (8, 16):
        raise bad(f"(0028,0100) BitsAllocated={bits}; expected 8 or 16")
    if not 1 <= stored <= bits:
        raise bad(f"(0028,0101) BitsStored={stored}; expected 1..BitsAllocated={bits}")
    if not UID(ts).is_compressed:
        expected = rows * cols * spp * bits // 8
        have = len(ds.PixelData) if ds.PixelData is not None else 0
        if have < expected:
            raise bad(f"truncated: (7FE0,0010) PixelData has {have} bytes; expected "
                      f"Rows*Columns*BitsAllocated/8 = {expected} (file is {data_len} bytes)")
        # Longer is as wrong as shorter: the decoder would read the first Rows*Columns
        # samples with the wrong row length (diagonal stripes) or a fraction of the image.
        # The only extra byte DICOM allows pads an odd length to even.
        if have not in (expected, expected + expected % 2):
            raise bad(f"(7FE0,0010) PixelData has {have} bytes; expected exactly (0028,0010) Rows={rows} x "
                      f"(0028,0011) Columns={cols} x (0028,0100) BitsAllocated={bits}/8 = {expected}"
                      f"{' (+1 padding byte)' if expected % 2 else ''}: the header's dimensions do not "
                      "describe the pixel data")


def _terms(text: str, terms: set[str]) -> list[str]:
    return sorted(set(re.split(r"[^A-Z0-9]+", text.upper())) & terms)


def _quote_terms(hit: list[str]) -> str:
    """"'HAND'" / "'HAND', 'WRIST'": the configured terms found, nothing else of the value."""
    return ", ".join(repr(t) for t in hit)


def check_policy(ds: Dataset | None, meta: ImageMeta, path: str | Path, cfg: IngestConfig) -> None:
    """Keep out valid files that are not frontal human chest radiographs (kind 'excluded').

    All failing rules are named in one reason so a reviewer sees the full picture.
    ``ds`` is None for PNG/JPEG exports: only view and size can be checked then.
    """
    reasons: list[str] = []
    if ds is not None:
        sop = _text(ds, "SOPClassUID")
        if sop in FOR_PROCESSING_SOP_CLASSES or _text(ds, "PresentationIntentType").upper() == "FOR PROCESSING":
            reasons.append("'For Processing' raw detector image (0008,0016)/(0008,0068); "
                           "expected a 'For Presentation' image")
        # Coded values are quoted only when they are codes (placeholders otherwise: a name typed
        # into BodyPartExamined must not reach rejects.csv or the log).
        if meta.modality not in cfg.allowed_modalities:
            reasons.append(f"(0008,0060) Modality={quoted(meta.modality)}; allowed {list(cfg.allowed_modalities)}")
        if meta.body_part not in cfg.allowed_body_parts:
            reasons.append(f"(0018,0015) BodyPartExamined={quoted(meta.body_part)}; "
                           f"allowed {list(cfg.allowed_body_parts)}")
        species = _text(ds, "PatientSpeciesDescription").upper()
        if species not in HUMAN_SPECIES:
            # Free text (LO), like the description tags below: never quoted.
            reasons.append("(0010,2201) PatientSpeciesDescription is not a human patient; "
                           f"allowed {sorted(HUMAN_SPECIES - {''})} or absent")
        terms = {t.upper() for t in cfg.excluded_description_terms}
        # View words in free text count only when ViewPosition is absent: a series
        # described "CHEST PA/LAT" may hold the PA image, and ViewPosition is per image.
        # A placeholder is no ViewPosition either: the value could not be read as a view.
        known_view = meta.view_position and meta.view_position not in PLACEHOLDERS
        view_terms = set() if known_view else {v.upper() for v in cfg.excluded_views}
        texts = [(tag, kw, _text(ds, kw)) for kw, tag in DESCRIPTION_TAGS]
        for kw, tag in CODE_SEQUENCES:
            for item in ds.get(kw) or []:
                texts.append((f"{tag}>(0008,0104)", f"{kw} CodeMeaning", _text(item, "CodeMeaning")))
        # These tags are free text that sites fill with names, MRNs and dates: a reason
        # (rejects.csv, scores, logs) names the tag and the matched term, never the value.
        for tag, kw, text in texts:
            hit = _terms(text, terms)
            if hit:
                reasons.append(f"{tag} {kw} contains excluded term{'s' * (len(hit) > 1)} "
                               f"{_quote_terms(hit)} (ingest.excluded_description_terms)")
            hit = _terms(text, view_terms)
            if hit:
                reasons.append(f"{tag} {kw} names an excluded view {_quote_terms(hit)} "
                               f"and (0018,5101) ViewPosition is {'not a view code' if meta.view_position else 'absent'}")
    if meta.view_position in cfg.excluded_views:
        reasons.append(f"(0018,5101) ViewPosition={meta.view_position!r} is an excluded view "
                       f"{list(cfg.excluded_views)}")
    side = min(meta.rows, meta.cols)
    if 0 < side < cfg.min_side:
        reasons.append(f"image {meta.rows}x{meta.cols} is smaller than ingest.min_side="
                       f"{cfg.min_side}: not a diagnostic radiograph")
    if reasons:
        raise InputError(path, "; ".join(reasons), meta.transfer_syntax, "excluded")


def voi_window(ds: Dataset) -> tuple[float, float, str] | None:
    """First (0028,1050) WindowCenter / (0028,1051) WindowWidth and VOILUTFunction, if usable."""
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is None or ww is None or wc == "" or ww == "":
        return None
    first: Callable[[Any], Any] = lambda v: v[0] if isinstance(v, pydicom.multival.MultiValue) else v  # noqa: E731
    try:
        center, width = float(first(wc)), float(first(ww))
    except (TypeError, ValueError):
        return None
    func = coded(_text(ds, "VOILUTFunction"), "VOILUTFunction") or "LINEAR"
    return (center, width, func) if width > 0 else None
