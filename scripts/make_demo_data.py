"""Regenerate the bundled demo data set (``data/demo``) from the NIH ChestX-ray14 sample.

    .venv/bin/python scripts/make_demo_data.py [--source ../shared/data/nih-cxr14-sample] [--out data/demo]

What it writes (byte-stable: same inputs and package versions give the same bytes):

    images/<nih stem>.dcm   150 training studies (all but 4 of the sample's Fibrosis positives,
                            enriched) wrapped as DICOM with a deliberate mix of encodings
    labels.csv              image,fibrosis,finding_labels  (joined by file name)
    score/*.dcm             10 further studies (some with 2 instances) + 2 deliberately bad files
    score_expected.csv      what the batch-scoring step should make of each score/ file
    SOURCE.md               attribution, licence, derivation, enrichment, encoding tables
    SHA256SUMS              checksums of everything above (checked by tests/data/test_demo_data.py)

Why the encodings are mixed: a reader that ignores MONOCHROME1, RescaleSlope/Intercept or
the VOI window still "works" on plain 8-bit files, so the demo must contain the hard cases.
The mix is assigned in fixed proportions *within* each label so that the encoding cannot
leak the label to a model.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

logger = logging.getLogger("make_demo_data")

REPO = Path(__file__).resolve().parents[1]
SEED = 20240611
SIZE = 256  # 512 px sample -> 256 px: an exact 2x2 area mean
N_TRAIN_NEG = 118
N_SCORE_POS = 4  # positives held out of the training set so that scoring has some to flag
N_SCORE_NEG = 7  # 6 scorable studies + the source of the truncated file
DEMO_UID_SALT = "fibrosis-demo-v1"
# pydicom 3.0.2's generate_uid(prefix=None, entropy_srcs=...) ignores entropy_srcs and returns
# a random UUID UID, so deterministic 2.25 UIDs are built here from name-based (SHA-1) UUIDs,
# as PS3.5 B.2 allows; sha-512 entropy under another prefix would give a non-UUID 2.25 value.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "fibrosis/data/demo")
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
MANUFACTURER = "NIH ChestX-ray14 (re-encoded)"
# 12-bit files store q = 4 * area mean (an exact integer, 0..1020) as 512 + q, with
# RescaleSlope 2 / Intercept -1024, so modality values are 2q (0..2040) and the window
# [0, 2040] maps them linearly back to the source grey levels. A reader that skips the
# rescale, the window or the MONOCHROME1 inversion gets a measurably different image.
Q_OFFSET, SLOPE, INTERCEPT = 512, 2, -1024
SYNTAX = {"j2k": JPEG2000Lossless, "rle": RLELossless, "evle": ExplicitVRLittleEndian}


@dataclass(frozen=True)
class Encoding:
    syntax: str  # j2k | rle | evle
    photometric: str  # MONOCHROME1 | MONOCHROME2
    bits: int  # 8 | 12 (12 stored in 16 allocated)
    window: bool  # DX For Presentation with a VOI window; False: CR without one

    @property
    def label(self) -> str:
        return f"{self.syntax}/{self.photometric}/{self.bits}-bit/{'window' if self.window else 'no-window'}"


def E(syntax: str, mono: int, bits: int, window: bool) -> Encoding:
    return Encoding(syntax, f"MONOCHROME{mono}", bits, window)


# (encoding, negatives, positives) for the 150 training studies; positives ~21% of each row.
TRAIN_PROFILES: tuple[tuple[Encoding, int, int], ...] = (
    (E("j2k", 2, 8, True), 64, 17),
    (E("j2k", 2, 12, True), 12, 3),
    (E("j2k", 1, 8, True), 8, 2),
    (E("j2k", 1, 12, True), 4, 1),
    (E("j2k", 2, 8, False), 4, 1),
    (E("rle", 2, 8, True), 7, 2),
    (E("rle", 1, 12, True), 4, 1),
    (E("rle", 2, 12, False), 3, 1),
    (E("evle", 2, 8, True), 7, 2),
    (E("evle", 2, 12, True), 3, 1),
    (E("evle", 1, 8, False), 2, 1),
)
# Score studies: ("pos"|"neg", encodings of its instances). The sample holds one radiograph
# per patient, so a 2-instance study stores the same radiograph twice in different
# encodings (as when a study is re-sent); its two scores should agree.
SCORE_STUDIES: tuple[tuple[str, tuple[Encoding, ...]], ...] = (
    ("pos", (E("j2k", 2, 8, True),)),
    ("pos", (E("j2k", 2, 8, True), E("rle", 1, 12, True))),
    ("pos", (E("evle", 2, 12, True),)),
    ("pos", (E("j2k", 1, 8, True),)),
    ("neg", (E("j2k", 2, 8, True), E("j2k", 2, 12, False))),
    ("neg", (E("rle", 2, 8, True),)),
    ("neg", (E("j2k", 2, 12, True),)),
    ("neg", (E("evle", 2, 8, False),)),
    ("neg", (E("j2k", 2, 8, True), E("evle", 1, 8, True))),
    ("neg", (E("j2k", 1, 12, True),)),
)
TRUNCATED_ENCODING = E("evle", 2, 8, True)
NOT_DICOM_TEXT = (
    "This is not a DICOM file. It is a plain-text file with a .dcm name, placed in the\n"
    "fibrosis demo scoring folder on purpose: batch scoring must report it as a per-file\n"
    "error row and carry on with the other files.\n"
)


# ---------------------------------------------------------------- selection


def read_labels(source: Path) -> list[dict[str, str]]:
    with open(source / "labels.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["image"])
    for r in rows:
        if r["fibrosis"] not in ("0", "1"):
            raise ValueError(f"{source / 'labels.csv'}: {r['image']}: fibrosis={r['fibrosis']!r}; expected 0/1")
    return rows


def _proportional(counts: dict[tuple[str, str], int], total: int) -> dict[tuple[str, str], int]:
    """Largest-remainder allocation of ``total`` across strata in proportion to ``counts``."""
    n = sum(counts.values())
    exact = {k: total * c / n for k, c in counts.items()}
    alloc = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (alloc[k] - exact[k], k))[: total - sum(alloc.values())]:
        alloc[k] += 1
    return alloc


def select(rows: list[dict[str, str]], rng: np.random.Generator) -> tuple[list, list, list]:
    """Split the sample into (train positives+negatives, score positives, score negatives).

    Training negatives are stratified by view x sex so the demo keeps the sample's mix.
    """
    pos = [r for r in rows if r["fibrosis"] == "1"]
    neg = [r for r in rows if r["fibrosis"] == "0"]
    pos = [pos[i] for i in rng.permutation(len(pos))]
    score_pos, train_pos = pos[:N_SCORE_POS], pos[N_SCORE_POS:]
    strata: dict[tuple[str, str], list] = {}
    for r in neg:
        strata.setdefault((r["view"], r["sex"]), []).append(r)
    alloc = _proportional({k: len(v) for k, v in strata.items()}, N_TRAIN_NEG)
    train_neg, rest = [], []
    for key in sorted(strata):
        members = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        train_neg += members[: alloc[key]]
        rest += members[alloc[key]:]
    rest.sort(key=lambda r: r["image"])
    score_neg = [rest[i] for i in rng.permutation(len(rest))[:N_SCORE_NEG]]
    train = sorted(train_pos + train_neg, key=lambda r: r["image"])
    return train, score_pos, score_neg


def assign_encodings(train: list[dict[str, str]], rng: np.random.Generator) -> list[Encoding]:
    """One encoding per training row, in the TRAIN_PROFILES counts within each label."""
    out: dict[str, Encoding] = {}
    for label, col in (("0", 1), ("1", 2)):
        members = [r["image"] for r in train if r["fibrosis"] == label]
        pool = [p[0] for p in TRAIN_PROFILES for _ in range(p[col])]
        if len(pool) != len(members):
            raise ValueError(f"TRAIN_PROFILES give {len(pool)} encodings for {len(members)} fibrosis={label} rows")
        for i, name in zip(rng.permutation(len(members)), members):
            out[name] = pool[i]
    return [out[r["image"]] for r in train]


# ---------------------------------------------------------------- pixels and DICOM


def downsample(png: Path) -> np.ndarray:
    """Area-downsample the 512 px PNG to SIZE; returns q = 4 * mean grey level (exact integers)."""
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.ndim != 2 or img.shape != (2 * SIZE, 2 * SIZE):
        raise ValueError(f"{png}: expected a {2 * SIZE}x{2 * SIZE} 8-bit grayscale PNG")
    # cv2.INTER_AREA at exactly 2x is the 2x2 mean; summing directly keeps it exact.
    return img.astype(np.int32).reshape(SIZE, 2, SIZE, 2).sum(axis=(1, 3))


def stored_pixels(q: np.ndarray, enc: Encoding) -> np.ndarray:
    if enc.bits == 8:
        v = (q + 2) // 4  # round half up, integer-exact
        return (255 - v if enc.photometric == "MONOCHROME1" else v).astype(np.uint8)
    v = 1020 - q if enc.photometric == "MONOCHROME1" else q
    return (Q_OFFSET + v).astype(np.uint16)


def present(ds: Dataset) -> np.ndarray:
    """Reference presentation in [0, 1]: rescale, linear VOI window (PS3.3 C.11.2.1.2.1)
    or min-max when there is none, then MONOCHROME1 inversion."""
    x = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    if "WindowCenter" in ds:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    else:
        y = (x - x.min()) / (x.max() - x.min())
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


def demo_uid(*parts: str) -> str:
    """Deterministic ``2.25.<uuid>`` UID derived from the NIH file name and a role."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '|'.join((DEMO_UID_SALT, *parts))).int}"


IMPLEMENTATION_UID = demo_uid("implementation")


def build_dataset(row: dict[str, str], enc: Encoding, q: np.ndarray, instance: int, role: str) -> Dataset:
    name = row["image"]
    sop = demo_uid(role, name, "instance", str(instance))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION if enc.window else CR_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "FIBROSIS_DEMO_1"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop
    # Type 2 study attributes left empty: the NIH release carries no real dates or accessions.
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", ""
    ds.Modality = "DX" if enc.window else "CR"
    ds.Manufacturer = MANUFACTURER
    ds.SeriesDescription = "Chest frontal (NIH ChestX-ray14)"  # neutral: ingest policy scans this text
    ds.DerivationDescription = (
        f"NIH ChestX-ray14 {name}: 512 px PNG area-downsampled to {SIZE} px, re-encoded as {enc.label}"
    )
    ds.PatientName = ""
    ds.PatientID = row["patient_id"]  # NIH's public pseudonymous id
    ds.PatientBirthDate = ""
    ds.PatientSex = row["sex"]
    ds.PatientAge = f"{int(row['age']):03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "NIH ChestX-ray14 release: pseudonymous id, no names or dates"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = row["view"]
    ds.StudyInstanceUID = demo_uid(role, name, "study")
    ds.SeriesInstanceUID = demo_uid(role, name, "series", str(instance))
    ds.StudyID = ""
    ds.SeriesNumber = instance
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # conventional display: patient's left to the right
    if enc.window:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1 if enc.photometric == "MONOCHROME1" else -1
        ds.PresentationLUTShape = "INVERSE" if enc.photometric == "MONOCHROME1" else "IDENTITY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.Rows, ds.Columns = q.shape
    ds.BitsAllocated = 8 if enc.bits == 8 else 16
    ds.BitsStored = enc.bits
    ds.HighBit = enc.bits - 1
    ds.PixelRepresentation = 0
    if enc.bits == 12 or enc.window:  # DX requires a rescale; 8-bit CR files carry none
        ds.RescaleIntercept, ds.RescaleSlope = (INTERCEPT, SLOPE) if enc.bits == 12 else (0, 1)
        ds.RescaleType = "US"
    if enc.window:
        lo, hi = (0, 2 * 1020) if enc.bits == 12 else (0, 255)
        ds.WindowCenter = (lo + hi) / 2 + 0.5
        ds.WindowWidth = hi - lo + 1
        ds.WindowCenterWidthExplanation = "FULL RANGE"
    ds.LossyImageCompression = "00"
    arr = stored_pixels(q, enc)
    ds.PixelData = arr.tobytes()
    if enc.syntax != "evle":
        ds.compress(SYNTAX[enc.syntax], arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    return ds


def write_checked(ds: Dataset, q: np.ndarray, path: Path) -> None:
    """Write, read back, decode and compare with the intended image; raise on any mismatch."""
    ds.save_as(path, enforce_file_format=True)
    back = dcmread(path)
    got = present(back) * 255.0
    want = q / 4.0
    if "WindowCenter" in back:
        tol = 0.5 + 1e-9 if back.BitsStored == 8 else 1e-9
        err = float(np.abs(got - want).max())
    else:
        tol, err = 1e-4, 1.0 - float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
    if err > tol:
        raise RuntimeError(f"{path}: decoded pixels differ from the source (error {err:.3g} > {tol})")


# ---------------------------------------------------------------- driver


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def make_demo(source: Path, out: Path) -> dict[str, object]:
    """Generate the whole demo set into ``out``; returns the counts SOURCE.md reports."""
    rows = read_labels(source)
    rng = np.random.default_rng(SEED)
    train, score_pos, score_neg = select(rows, rng)
    encodings = assign_encodings(train, rng)
    for sub in ("images", "score"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("*.dcm"):
            old.unlink()
    for row, enc in zip(train, encodings):
        q = downsample(source / "images" / row["image"])
        write_checked(build_dataset(row, enc, q, 1, "train"), q, out / "images" / f"{Path(row['image']).stem}.dcm")
    _write_csv(out / "labels.csv", ["image", "fibrosis", "finding_labels"],
               [[f"{Path(r['image']).stem}.dcm", r["fibrosis"], r["finding_labels"]] for r in train])

    expected: list[list[str]] = []
    pos_iter, neg_iter = iter(score_pos), iter(score_neg)
    for kind, encs in SCORE_STUDIES:
        row = next(pos_iter if kind == "pos" else neg_iter)
        q, stem = downsample(source / "images" / row["image"]), Path(row["image"]).stem
        for k, enc in enumerate(encs, start=1):
            fname = f"{stem}_{k}.dcm" if len(encs) > 1 else f"{stem}.dcm"
            write_checked(build_dataset(row, enc, q, k, "score"), q, out / "score" / fname)
            expected.append([fname, stem, row["fibrosis"], row["finding_labels"], "ok", enc.label])
    row = next(neg_iter)
    q, stem = downsample(source / "images" / row["image"]), Path(row["image"]).stem
    whole = out / "score" / f"{stem}_truncated.dcm"
    write_checked(build_dataset(row, TRUNCATED_ENCODING, q, 1, "score"), q, whole)
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) * 3 // 5])  # an interrupted transfer: header intact, pixels cut
    expected.append([whole.name, stem, row["fibrosis"], row["finding_labels"], "error",
                     f"truncated after {len(data) * 3 // 5} of {len(data)} bytes (PixelData incomplete)"])
    (out / "score" / "not_a_dicom.dcm").write_text(NOT_DICOM_TEXT)
    expected.append(["not_a_dicom.dcm", "", "", "", "error", "plain text named .dcm"])
    _write_csv(out / "score_expected.csv",
               ["image", "source_image", "fibrosis", "finding_labels", "expected", "note"], expected)

    counts = {
        "n_train": len(train), "n_train_pos": sum(r["fibrosis"] == "1" for r in train),
        "n_sample": len(rows), "n_sample_pos": sum(r["fibrosis"] == "1" for r in rows),
        "train_views": {v: sum(r["view"] == v for r in train) for v in ("PA", "AP")},
        "train_sex": {s: sum(r["sex"] == s for r in train) for s in ("F", "M")},
        "score_files": len(expected),
    }
    (out / "SOURCE.md").write_text(render_source_md(counts, expected))
    # Byte-exact checkouts everywhere (no CRLF conversion), so SHA256SUMS holds on Windows too.
    (out / ".gitattributes").write_text("* -text\n")
    write_checksums(out)
    return counts


def render_source_md(counts: dict, expected: list[list[str]]) -> str:
    import importlib.metadata as md

    enc_rows = ["| encoding (syntax/photometric/bits/window) | negatives | positives |", "|---|---|---|"]
    enc_rows += [f"| {e.label} | {n} | {p} |" for e, n, p in TRAIN_PROFILES]
    enc_rows.append(f"| total | {sum(n for _, n, _ in TRAIN_PROFILES)} | {sum(p for _, _, p in TRAIN_PROFILES)} |")
    score_rows = ["| file | source image | fibrosis | expected | note |", "|---|---|---|---|---|"]
    score_rows += [f"| {f} | {src} | {fib} | {exp} | {note} |" for f, src, fib, _, exp, note in expected]
    versions = ", ".join(f"{p} {md.version(p)}" for p in
                         ("pydicom", "pylibjpeg-openjpeg", "pylibjpeg-rle", "numpy", "opencv-python-headless"))
    n_train, n_pos, n_sample, n_sample_pos = (counts[k] for k in ("n_train", "n_train_pos", "n_sample", "n_sample_pos"))
    template = (Path(__file__).with_name("demo_source_template.md")).read_text()
    return template.format(
        n_train=n_train, n_train_pos=n_pos, n_train_neg=n_train - n_pos, prev_demo=100 * n_pos / n_train,
        n_sample=n_sample, n_sample_pos=n_sample_pos, n_sample_neg=n_sample - n_sample_pos,
        prev_sample=100 * n_sample_pos / n_sample, enrich=(n_pos / n_train) / (1686 / 112120),
        n_score_pos=N_SCORE_POS, n_score_neg=N_SCORE_NEG, seed=SEED, size=SIZE, per_split=0.2 * n_pos,
        views=", ".join(f"{k} {v}" for k, v in counts["train_views"].items()),
        sexes=", ".join(f"{k} {v}" for k, v in counts["train_sex"].items()),
        manufacturer=MANUFACTURER, encoding_table="\n".join(enc_rows), score_studies=len(SCORE_STUDIES),
        score_table="\n".join(score_rows), versions=versions,
    )


def write_checksums(out: Path) -> None:
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out).as_posix()}\n" for p in files]
    (out / "SHA256SUMS").write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "nih-cxr14-sample")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "demo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = make_demo(args.source, args.out)
    logger.info("wrote %s: %s", args.out, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
