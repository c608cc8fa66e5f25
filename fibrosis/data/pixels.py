"""The one pixel function: any supported input file -> float32 [0, 1] square image.

Ingest and batch scoring both call :func:`load_image`, so a model never sees
pixels prepared differently from the ones it was trained on.

Pipeline (each applied step is recorded in ``PixelResult.steps``)::

    decode (JPEG 2000 at a reduced resolution level when that is enough)
      -> Modality LUT (ModalityLUTSequence, or RescaleSlope/Intercept)
      -> VOI (VOILUTSequence, or WindowCenter/Width with VOILUTFunction; a robust
         percentile window when none is given or the given one does not fit the data)
      -> invert once for MONOCHROME1 and/or PresentationLUTShape INVERSE
      -> aspect-preserving resize (area interpolation) and centred zero padding

Modality and VOI are evaluated once per *distinct stored value* into a lookup
table and then applied with one gather. That is exact (stored values are
integers), keeps integer inputs integer where pydicom's LUT code requires it,
and costs one pass over the pixels instead of several float passes.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi

from fibrosis.config import IngestConfig
from fibrosis.data.coded import quoted
from fibrosis.data.dicom import (InputError, check_header, check_luts, check_policy, dicom_meta, read_dataset,
                                 sniff, voi_window)
from fibrosis.data.j2k import J2K_OVERSAMPLE, decode_reduced
from fibrosis.data.polarity import (ANALYSIS_SIDE, AS_SHOWN_FROM, CUE_WEIGHTS, INVERTED_TO, MIN_KEPT, UNIFORM_SPREAD,
                                    check_polarity, mediastinum_lungs)
from fibrosis.data.records import ImageMeta, PatientId
from fibrosis.io import not_regular

__all__ = ["InputError", "PixelResult", "load_image", "load_bytes", "read_input", "preprocessing_signature"]

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # bump when pixels change for the same input and settings
J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
MAX_LUT_SPAN = 1 << 20
HISTOGRAM_PIXELS = 1 << 20  # distinct-value range above which a LUT would not pay off
# A window is trusted when the data's robust range covers at least this share of
# it; below that it lies outside the stored values or is far too wide, and
# applying it would give a blank or flat grey image.
WINDOW_MIN_COVERAGE = 0.10
# The reason of a file the polarity check excludes (fibrosis.data.polarity; ingest.polarity_qa)
# starts with this (scores.csv: "excluded: polarity suspect (...)"); reports and scores count on it.
POLARITY_EXCLUDED = "polarity suspect"
# What ingest.polarity_qa does with each verdict of the check: keep, note (kept with a qa: step),
# invert (with a qa: step) or exclude. An image shown as it should be is always kept.
PolarityAction = Literal["keep", "note", "invert", "exclude"]
POLARITY_ACTIONS: dict[str, dict[str, PolarityAction]] = {
    "auto": {"as-shown": "keep", "unsure": "exclude", "inverted": "invert"},
    "exclude": {"as-shown": "keep", "unsure": "exclude", "inverted": "exclude"},
    "invert": {"as-shown": "keep", "unsure": "note", "inverted": "invert"},
    "keep": {"as-shown": "keep", "unsure": "note", "inverted": "note"},
}
QA_NOTES = {"unsure": "polarity-unsure", "inverted": "polarity-suspect"}  # qa: flag of a noted verdict


def excluded_flag(reason: str) -> str:
    """The qa flag of a file the polarity check excluded (its reject reason), else ''."""
    if not reason.startswith(POLARITY_EXCLUDED):
        return ""
    verdict = reason[len(POLARITY_EXCLUDED):].lstrip(" (").split(",", 1)[0]
    return QA_NOTES.get(verdict, "polarity-suspect")

MIB = 1 << 20
SNIFF_BYTES = 132  # preamble + 'DICM': enough to tell DICOM, PNG, JPEG and the rest apart
HASH_CHUNK = 1 << 20
NOT_AN_IMAGE = ("not a DICOM, PNG or JPEG file (no 'DICM' marker at byte 128, "
                "no PNG/JPEG signature, no DICOM group 0002/0008 at byte 0)")
# (function on an integer domain array -> modality values, step label, the tags that define it)
Modality = tuple[Callable[[np.ndarray], np.ndarray], str, str]


@dataclass
class PixelResult:
    image: np.ndarray  # float32 (S, S) in [0, 1], lungs dark / bone bright
    meta: ImageMeta  # manifest fields, and the raw PatientID that is never written
    steps: list[str] = field(default_factory=list)


def preprocessing_signature(cfg: IngestConfig) -> dict[str, Any]:
    """Settings that change cached pixels; a cache refuses to mix two signatures."""
    sig = {"pipeline_version": PIPELINE_VERSION, "image_size": cfg.image_size,
           "voi_percentiles": list(cfg.voi_percentiles), "j2k_reduce": cfg.j2k_reduce,
           "j2k_oversample": J2K_OVERSAMPLE,
           "window_min_coverage": WINDOW_MIN_COVERAGE, "resize": "INTER_AREA down / INTER_LINEAR up"}
    # auto / exclude / invert change which images are cached, or their pixels; `keep` is what
    # caches built before the setting existed did, so it leaves their signature as it was.
    if cfg.polarity_qa != "keep":
        sig.update(polarity_qa=cfg.polarity_qa, polarity_check={
            "weights": CUE_WEIGHTS, "as_shown_from": AS_SHOWN_FROM, "inverted_to": INVERTED_TO,
            "analysis_side": ANALYSIS_SIDE, "uniform_spread": UNIFORM_SPREAD, "min_kept": MIN_KEPT})
    return sig


def load_image(path: str | Path, cfg: IngestConfig, hints: dict[str, Any] | None = None) -> PixelResult:
    """Read, check, decode and preprocess one file. Raises :class:`InputError`.

    ``hints`` fill metadata a PNG/JPEG export cannot carry (``patient_id``,
    ``age``, ``sex``, ``view`` from a labels CSV); DICOM header values win.
    """
    data, _ = read_input(path, cfg)
    if data is None:
        raise InputError(path, NOT_AN_IMAGE)
    return load_bytes(data, path, cfg, hints)


def read_input(path: str | Path, cfg: IngestConfig) -> tuple[bytes | None, str]:
    """(bytes, sha256 hex) of one input file, read under limits that bound a worker's memory.

    Raises :class:`InputError` without reading a byte for a path that is not a regular
    file (a FIFO would block forever, ``/dev/zero`` never ends) or is larger than
    ``ingest.max_file_mb``. The first bytes are sniffed before the rest is read: a file
    that is no image is only streamed through the hash (its content hash still tells a
    resumed run whether it changed) and ``None`` comes back instead of its bytes.
    """
    limit = cfg.max_file_mb * MIB

    def refuse(reason: str) -> InputError:
        return InputError(path, reason)

    try:
        why = not_regular(os.stat(path).st_mode)  # stat first: a FIFO is never even opened
        if why:
            raise refuse(why)
        # O_NONBLOCK: if the path became a FIFO after stat(), open() must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror or exc}") from None
    with open(fd, "rb", buffering=0) as fh:
        try:
            st = os.fstat(fd)
            why = not_regular(st.st_mode)
            if why:
                raise refuse(why)
            if st.st_size > limit:
                raise refuse(f"file is {st.st_size} bytes ({st.st_size / MIB:.0f} MiB); limit "
                             f"ingest.max_file_mb={cfg.max_file_mb} MiB: refused unread")
            head = fh.read(SNIFF_BYTES)
            if sniff(head) == "unknown":
                digest, total = hashlib.sha256(head), len(head)
                while total <= limit and (block := fh.read(HASH_CHUNK)):
                    digest.update(block)
                    total += len(block)
                data = None
            else:
                fh.seek(0)
                data = fh.read(min(st.st_size, limit) + 1)  # one allocation; +1 sees a file that grew
                while len(data) <= limit and (more := fh.read(limit + 1 - len(data))):
                    data += more  # a short read (network file systems)
                total = len(data)
                digest = hashlib.sha256(data)
        except OSError as exc:
            raise refuse(f"cannot read file: {exc.strerror or exc}") from None
    if total > limit:
        raise refuse(f"file grew past ingest.max_file_mb={cfg.max_file_mb} MiB while being read")
    return data, digest.hexdigest()


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom logs its own tracebacks and warnings for bad files; each such file
    already becomes one reject row with the reason, so silence the duplicate noise."""
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def load_bytes(data: bytes, path: str | Path, cfg: IngestConfig,
               hints: dict[str, Any] | None = None) -> PixelResult:
    """:func:`load_image` on bytes already read (ingest hashes the same bytes)."""
    fmt = sniff(data[:SNIFF_BYTES])
    if fmt in ("png", "jpeg"):
        return _load_raster(data, path, fmt, cfg, hints or {})
    if fmt == "unknown":
        raise InputError(path, NOT_AN_IMAGE)
    with _quiet_pydicom():
        ds, ts = read_dataset(data, path, fmt, cfg.max_inflated_mb * MIB)
        meta = _apply_hints(dicom_meta(ds, ts, fmt, cfg), hints or {})
        check_header(ds, meta, path, cfg, len(data))
        check_luts(ds, path, ts)
        check_policy(ds, meta, path, cfg)
        stored, steps = _decode_dicom(ds, ts, path, cfg)
    modality = _modality(ds, path, ts)
    invert, why = _inversion(ds, meta.photometric)
    img, lut_steps = _display(stored, modality, _voi_spec(ds), invert, cfg, path, ts)
    steps += lut_steps + ([f"invert:{why}"] if invert else [])
    return _finish(img, meta, steps, cfg, path, ts)


# ---------------------------------------------------------------- decode


def _decode_dicom(ds: Dataset, ts: str, path: str | Path, cfg: IngestConfig) -> tuple[np.ndarray, list[str]]:
    steps: list[str] = []
    if cfg.j2k_reduce and ts in J2K_SYNTAXES:
        try:
            arr, r = decode_reduced(ds, max(ds.Rows, ds.Columns), cfg.image_size)
            if arr is not None:
                return arr, [f"decode:jpeg2000 reduce={r} (Pillow) {ds.Rows}x{ds.Columns}->"
                             f"{arr.shape[0]}x{arr.shape[1]}"]
        except Exception as exc:  # any Pillow failure: the full decoder decides
            logger.debug("%s: Pillow J2K reduced decode failed (%s); full decode", path, exc)
            steps.append("decode:jpeg2000 reduced decode failed, full decode")
    try:
        arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # also a Rust decoder's PanicException, which is no Exception
        msg = str(exc).strip().splitlines()
        detail = " | ".join(line.strip() for line in msg[:3]) if msg else type(exc).__name__
        raise InputError(path, f"cannot decode pixel data ({_ts_name(ts)}): {detail}", ts, "error") from None
    if arr.ndim != 2 or arr.shape != (ds.Rows, ds.Columns):
        raise InputError(path, f"decoded shape {arr.shape}; expected (Rows, Columns) = "
                               f"({ds.Rows}, {ds.Columns})", ts, "error")
    return arr, steps + [f"decode:{_ts_name(ts)}"]


def _ts_name(ts: str) -> str:
    from pydicom.uid import UID

    return UID(ts).name if ts else "unknown transfer syntax"


# ---------------------------------------------------------------- LUT stage


def _modality(ds: Dataset, path: str | Path, ts: str) -> Modality:
    """(function on an integer domain array -> modality values, step label, the tags
    that define it, for error messages)."""
    if "ModalityLUTSequence" in ds and ds.ModalityLUTSequence:
        # pydicom's LUT lookup needs integer input: the domain array is integer.
        desc = list(ds.ModalityLUTSequence[0].get("LUTDescriptor") or [])
        return ((lambda dom: apply_modality_lut(dom, ds).astype(np.float64)), "modality:lut-sequence",
                f"(0028,3000) ModalityLUTSequence with (0028,3002) LUTDescriptor={desc}")
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None or intercept is not None:
        try:
            s = float(slope) if slope not in (None, "") else 1.0
            b = float(intercept) if intercept not in (None, "") else 0.0
        except (TypeError, ValueError):
            raise InputError(path, f"(0028,1053) RescaleSlope={slope!r}, (0028,1052) RescaleIntercept="
                                   f"{intercept!r}; expected decimal numbers", ts, "error") from None
        if (s, b) != (1.0, 0.0):
            return ((lambda dom: dom * s + b), f"modality:rescale(slope={s:g},intercept={b:g})",
                    f"(0028,1053) RescaleSlope={s:g}, (0028,1052) RescaleIntercept={b:g}")
    return (lambda dom: dom.astype(np.float64)), "", "stored values"


def _voi_spec(ds: Dataset) -> tuple[Any, ...] | None:
    if "VOILUTSequence" in ds and ds.VOILUTSequence:
        return ("lut", ds)
    window = voi_window(ds)
    return ("window",) + window if window else None


def _inversion(ds: Dataset, photometric: str) -> tuple[bool, str]:
    """Invert exactly once. In DX, MONOCHROME1 *requires* PresentationLUTShape INVERSE:
    both describe the same inversion, so they must not cancel or apply twice."""
    plut = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    causes = ([photometric] if photometric == "MONOCHROME1" else []) + (
        ["PresentationLUTShape INVERSE"] if plut == "INVERSE" else [])
    return bool(causes), "+".join(causes)


def _window(values: np.ndarray, center: float, width: float, func: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3, output scaled to [0, 1]."""
    if func == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if func == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR needs width >= 1; a 1-wide window is a threshold
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, qs: tuple[float, float]) -> list[float]:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(counts[order])
    total = cum[-1]
    return [float(values[order][min(np.searchsorted(cum, q / 100.0 * total, side="left"), len(cum) - 1)])
            for q in qs]


def _display(stored: np.ndarray, modality: Modality, voi: tuple[Any, ...] | None, invert: bool,
             cfg: IngestConfig, path: str | Path, ts: str) -> tuple[np.ndarray, list[str]]:
    """Stored integers -> float32 display image in [0, 1] through one lookup table."""
    if not np.issubdtype(stored.dtype, np.integer):
        raise InputError(path, f"decoded dtype {stored.dtype}; expected integer samples", ts, "error")
    lo, hi = int(stored.min()), int(stored.max())
    if hi == lo:
        raise InputError(path, f"blank image: every pixel has stored value {lo}", ts, "error")
    if hi - lo >= MAX_LUT_SPAN:
        raise InputError(path, f"stored values span {lo}..{hi}; expected at most {MAX_LUT_SPAN} levels",
                         ts, "error")
    # Non-negative LUT indices: unsigned data index the LUT directly (domain 0..hi,
    # no copy); signed data are shifted by -lo.
    if stored.dtype.kind == "u":
        offset, lo = stored, 0
    else:
        offset = (stored.astype(np.int64) - lo).astype(np.uint16 if hi - lo < 65536 else np.uint32)
    # Percentiles and window coverage come from a histogram; above ~1 Mpx a regular
    # subsample gives the same percentiles to well under one grey level, 10x faster.
    step = max(1, int((stored.size / HISTOGRAM_PIXELS) ** 0.5))
    counts = np.bincount(offset[::step, ::step].ravel(), minlength=hi - lo + 1)
    domain = np.arange(lo, hi + 1, dtype=np.int64)
    mod_fn, mod_step, mod_tags = modality
    dom_typed = domain.astype(stored.dtype) if stored.dtype.itemsize <= 2 else domain
    with np.errstate(over="ignore", invalid="ignore"):  # judged just below, with the tag named
        values = mod_fn(dom_typed)
    steps = [mod_step] if mod_step else []
    present = counts > 0
    _check_modality_values(values, counts, lo, mod_tags, path, ts)
    p_lo, p_hi = _weighted_percentiles(values[present], counts[present], cfg.voi_percentiles)
    if p_hi <= p_lo:  # mostly one value (e.g. a large flat background): use the full range
        p_lo, p_hi = float(values[present].min()), float(values[present].max())
    lut: np.ndarray | None = None
    if voi is not None and voi[0] == "lut":
        ds = voi[1]
        item = ds.VOILUTSequence[0]
        first, n = int(item.LUTDescriptor[1]), int(item.LUTDescriptor[0]) or 65536
        full = apply_voi(np.arange(first, first + n, dtype=np.int64), ds).astype(np.float64)
        out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
        # Normalise by the LUT's own output range: descriptors often misstate the
        # bit depth of LUT Data (e.g. 16 declared, 12 used).
        span = full.max() - full.min()
        lut = (out - full.min()) / span if span > 0 else None
        if lut is not None and np.ptp(lut[present]) <= 0:
            # Like a window outside the data: the LUT maps every stored value to one grey.
            steps.append(f"voi:lut-sequence({n} entries) maps all data to one value")
            lut = None
        elif lut is not None:
            steps.append(f"voi:lut-sequence({n} entries)")
    elif voi is not None:
        _, center, width, func = voi
        overlap = min(center + width / 2, p_hi) - max(center - width / 2, p_lo)
        if overlap / width >= WINDOW_MIN_COVERAGE:
            if func not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                steps.append(f"voi:unknown VOILUTFunction {quoted(func)} treated as LINEAR")
                func = "LINEAR"
            lut = _window(values, center, width, func)
            steps.append(f"voi:window(center={center:g},width={width:g},{func})")
        else:
            steps.append(f"voi:window(center={center:g},width={width:g}) does not fit data "
                         f"[{p_lo:g},{p_hi:g}]")
    if lut is None:
        lut = np.clip((values - p_lo) / (p_hi - p_lo), 0.0, 1.0)
        steps.append(f"voi:percentile({cfg.voi_percentiles[0]:g},{cfg.voi_percentiles[1]:g})"
                     f"=[{p_lo:g},{p_hi:g}]")
    if invert:
        lut = 1.0 - lut
    shown = lut[present]
    # The Modality values passed _check_modality_values; a VOI stage can still map them all
    # to one grey (e.g. a VOI LUT whose entries all lie below the data). A NaN would be
    # cast to 0 in the cache and a constant image trains as a blank one: refuse both.
    finite = bool(np.isfinite(shown).all())
    if not finite or shown.max() <= shown.min():
        raise InputError(path, f"display image is {'constant' if finite else 'not finite'} after "
                               f"{' -> '.join(steps)}; expected a finite, non-constant image",
                         ts, "error")
    return np.take(lut.astype(np.float32), offset), steps


def _check_modality_values(values: np.ndarray, counts: np.ndarray, lo: int, tags: str,
                           path: str | Path, ts: str) -> None:
    """Refuse a Modality LUT that yields NaN/inf or one value for every stored value:
    either would become an all-zero or blank cache image that trains and scores silently."""
    present = np.flatnonzero(counts)
    got = values[present]
    bad = ~np.isfinite(got)
    if bad.any():
        first = int(present[np.argmax(bad)])
        raise InputError(path, f"{tags} gives {values[first]:g} for stored value {lo + first} "
                               f"({int(bad.sum())} of {len(got)} distinct stored values non-finite); "
                               "expected finite modality values", ts, "error")
    if got.max() == got.min():
        raise InputError(path, f"{tags} maps every stored value ({lo + int(present[0])}.."
                               f"{lo + int(present[-1])}) to {got[0]:g}: a constant image; expected "
                               "distinct modality values", ts, "error")


# ---------------------------------------------------------------- raster exports, resize


def _load_raster(data: bytes, path: str | Path, fmt: str, cfg: IngestConfig,
                 hints: dict[str, Any]) -> PixelResult:
    ts = fmt
    try:
        im = Image.open(io.BytesIO(data))
        cols, rows = im.size
    except Exception as exc:
        raise InputError(path, f"unreadable {fmt.upper()}: {exc}", ts) from None
    if rows > cfg.max_rows or cols > cfg.max_cols:
        raise InputError(path, f"absurd dimensions {rows}x{cols}; limit {cfg.max_rows}x{cfg.max_cols}", ts)
    meta = _apply_hints(ImageMeta(rows=rows, cols=cols, transfer_syntax=ts, photometric="MONOCHROME2",
                                  source_format=fmt), hints)
    check_policy(None, meta, path, cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        raise InputError(path, f"cannot decode {fmt.upper()}: {exc}", ts) from None
    if im.mode in ("P", "PA", "1", "CMYK"):
        raise InputError(path, f"{fmt.upper()} mode {im.mode!r}; expected greyscale", ts)
    if arr.ndim == 3:  # RGB(A)/LA exports of greyscale radiographs: channels must agree
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        if np.any(colour != colour[..., :1]):
            raise InputError(path, f"colour {fmt.upper()} (mode {im.mode!r}); expected greyscale", ts)
        arr = colour[..., 0]
    if arr.dtype.kind not in "ui":
        raise InputError(path, f"{fmt.upper()} sample type {arr.dtype}; expected integers", ts)
    img, steps = _display(np.ascontiguousarray(arr), (lambda d: d.astype(np.float64), "", "stored values"),
                          None, False, cfg, path, ts)
    return _finish(img, meta, [f"decode:{fmt} mode {im.mode}"] + steps, cfg, path, ts)


def _apply_hints(meta: ImageMeta, hints: dict[str, Any]) -> ImageMeta:
    """Fill gaps from a labels CSV row; values the file itself carries win."""
    if not meta.patient_id and str(hints.get("patient_id", "") or "").strip():
        meta = meta.replace(patient_id=PatientId(hints["patient_id"]))
    for key, hint in (("age", "age"), ("sex", "sex"), ("view_position", "view")):
        value = str(hints.get(hint, "") or "").strip()
        if value and not getattr(meta, key):
            meta = meta.replace(**{key: value.upper() if key in ("sex", "view_position") else value})
    return meta


def _geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(new height, new width, top, left) of the aspect-preserving fit into size x size."""
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return nh, nw, (size - nh) // 2, (size - nw) // 2


def fit_square(img: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """Aspect-preserving resize of the long side to ``size`` and centred zero padding.

    Downscaling halves the image with exact 2x2 means while it stays >= 2x the
    target, then area-resamples the rest: the same shape as the JPEG 2000 path
    (wavelet levels down to >= 2x, then area) and 3x faster than one area resize
    of a full detector image (mean difference 0.0003, under one grey level).
    """
    h, w = img.shape
    nh, nw, top, left = _geometry(h, w, size)
    src, halvings = img, 0
    while max(src.shape) // 2 >= 2 * size and min(src.shape) >= 4:
        hh, ww = src.shape[0] // 2 * 2, src.shape[1] // 2 * 2  # odd edge row/col dropped
        src = cv2.resize(src[:hh, :ww], (ww // 2, hh // 2), interpolation=cv2.INTER_AREA)
        halvings += 1
    # Area averaging for downscaling (no aliasing of fine reticular texture);
    # INTER_AREA degenerates to bilinear when enlarging, so say so explicitly.
    up = nh > h or nw > w
    small = src if src.shape == (nh, nw) else cv2.resize(
        src, (nw, nh), interpolation=cv2.INTER_LINEAR if up else cv2.INTER_AREA)
    out = np.zeros((size, size), np.float32)
    out[top:top + nh, left:left + nw] = np.clip(small, 0.0, 1.0)
    how = "linear" if up else ("none" if (nh, nw) == (h, w) else "area")
    pyramid = f" (2x2 mean x{halvings})" if halvings else ""
    return out, f"resize:{how}{pyramid} {h}x{w}->{nh}x{nw} pad:{size}x{size}@({top},{left})"


def polarity_score(img: np.ndarray) -> float:
    """The mediastinum-lungs cue of :mod:`fibrosis.data.polarity` on ``img`` as given: positive
    for a frontal chest shown lungs-dark / bone-bright. One cue of three; the verdict is
    :func:`fibrosis.data.polarity.check_polarity`'s."""
    return mediastinum_lungs(img)


def _finish(img: np.ndarray, meta: ImageMeta, steps: list[str], cfg: IngestConfig,
            path: str | Path, ts: str) -> PixelResult:
    out, step = fit_square(img, cfg.image_size)
    h, w = img.shape
    nh, nw, top, left = _geometry(h, w, cfg.image_size)
    content = out[top:top + nh, left:left + nw]  # a view: the padding stays 0 whatever happens
    check = check_polarity(content)
    action = POLARITY_ACTIONS[cfg.polarity_qa][check.verdict]
    qa = [f"polarity:{check.verdict}({check.evidence()})"]  # every image's verdict, in its manifest steps
    if action == "exclude":
        inverted = [s.split(":", 1)[1] for s in steps if s.startswith("invert:")]
        shown = f"inverted for {inverted[0]}" if inverted else "shown as stored"
        why = ("looks inverted: the lungs brighter than the mediastinum and the air above the shoulders, "
               "the band under the lungs darker than them" if check.verdict == "inverted" else
               f"cannot tell whether it is shown inverted (score between {INVERTED_TO:g} and {AS_SHOWN_FROM:g})")
        # An image shown inverted would train and score as a different picture.
        raise InputError(path, f"{POLARITY_EXCLUDED} ({check.verdict}, {check.evidence()}; {why}; header "
                               f"(0028,0004) PhotometricInterpretation={quoted(meta.photometric)}, {shown}; "
                               f"ingest.polarity_qa={cfg.polarity_qa}: keep or invert to use it)", ts, "excluded")
    if action == "invert":
        # Resizing is linear, so inverting after it equals inverting before it.
        content[...] = 1.0 - content
        qa.append(f"qa:polarity-inverted({check.evidence()})")
    elif action == "note":
        qa.append(f"qa:{QA_NOTES[check.verdict]}({check.evidence()})")
    return PixelResult(image=out, meta=meta, steps=steps + qa + [step])


def qa_flags(steps: Sequence[str] | str) -> str:
    """'polarity-suspect' / 'polarity-unsure' / 'polarity-inverted' (';'-joined) from a result's
    ``qa:`` steps (a list, or the manifest's '|'-joined string); '' when there are none."""
    items = steps.split("|") if isinstance(steps, str) else steps
    return ";".join(s[3:].split("(", 1)[0] for s in items if s.startswith("qa:"))
