"""Checks of the committed demo data set ``data/demo`` (written by scripts/make_demo_data.py).

Most tests need only the committed files. Those marked ``shared`` also compare the demo with
its NIH source in ../shared (pixels, metadata, byte-identical regeneration) and skip cleanly
when ../shared is absent. The reference presentation here uses pydicom's own modality/VOI LUT
functions, independently of the generator's check, so the two implementations cross-check.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID
from helpers.paths import REPO

DEMO = REPO / "data" / "demo"
SAMPLE = REPO.parent / "shared" / "data" / "nih-cxr14-sample"
N_TRAIN, N_TRAIN_POS = 150, 32
DX_FOR_PRESENTATION, CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1"
SYNTAXES = {"1.2.840.10008.1.2.4.90": "j2k", "1.2.840.10008.1.2.5": "rle", "1.2.840.10008.1.2.1": "evle"}
needs_shared = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"{SAMPLE} absent")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def presented(ds: Dataset) -> np.ndarray:
    """Display image in [0, 1] via pydicom's LUT functions (bright = dense, as read)."""
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds:
        # apply_voi_lut maps to the rescaled range of BitsStored; normalise that range to [0, 1].
        lo, hi = intercept, (2 ** ds.BitsStored - 1) * slope + intercept
        y = (apply_voi_lut(x, ds) - lo) / (hi - lo)
    else:
        y = (x - x.min()) / (x.max() - x.min())
    return 1.0 - y if ds.PhotometricInterpretation == "MONOCHROME1" else y


def mediastinum_brighter(img: np.ndarray) -> bool:
    """Crude polarity check: at mid height, the central band (mediastinum, spine) is brighter
    than the lateral bands (lung fields) on a correctly displayed frontal chest radiograph."""
    n = img.shape[1]
    mid = img[int(0.31 * n): int(0.66 * n)]
    centre = mid[:, int(0.42 * n): int(0.58 * n)].mean()
    lungs = (mid[:, int(0.16 * n): int(0.35 * n)].mean() + mid[:, int(0.65 * n): int(0.84 * n)].mean()) / 2
    return bool(centre > lungs)


@pytest.fixture(scope="module")
def labels() -> list[dict[str, str]]:
    return read_csv(DEMO / "labels.csv")


@pytest.fixture(scope="module")
def train() -> dict[str, Dataset]:
    return {p.name: dcmread(p) for p in sorted((DEMO / "images").glob("*.dcm"))}


@pytest.fixture(scope="module")
def expected() -> list[dict[str, str]]:
    return read_csv(DEMO / "score_expected.csv")


@pytest.fixture(scope="module")
def score_ok(expected) -> dict[str, Dataset]:
    return {r["image"]: dcmread(DEMO / "score" / r["image"]) for r in expected if r["expected"] == "ok"}


def test_labels_join_images_by_file_name(labels):
    with open(DEMO / "labels.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["image", "fibrosis", "finding_labels"]
    names = [r["image"] for r in labels]
    assert len(names) == len(set(names)) == N_TRAIN
    assert set(names) == {p.name for p in (DEMO / "images").iterdir()}
    for r in labels:
        assert r["fibrosis"] == ("1" if "Fibrosis" in r["finding_labels"].split("|") else "0"), r
    assert sum(r["fibrosis"] == "1" for r in labels) == N_TRAIN_POS


def test_headers_are_valid_and_carry_nih_metadata(train, score_ok):
    sop_uids = []
    for name, ds in {**train, **score_ok}.items():
        with open(ds.filename, "rb") as fh:
            assert fh.read(132)[128:] == b"DICM", name
        meta = ds.file_meta
        assert meta.TransferSyntaxUID in SYNTAXES, name
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID, name
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, name
        assert (ds.Modality, ds.SOPClassUID) in (("DX", DX_FOR_PRESENTATION), ("CR", CR_IMAGE)), name
        # DX For Presentation needs a window and a presentation LUT shape matching the photometric
        assert ("WindowCenter" in ds) == (ds.Modality == "DX"), name
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            want = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
            assert ds.PresentationLUTShape == want, name
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            uid = UID(ds[kw].value)
            assert uid.is_valid and uid.startswith("2.25."), (name, kw, uid)
            assert int(uid[5:]) < 2**128, (name, kw, "2.25 UIDs must hold a 128-bit UUID")
        sop_uids.append(ds.SOPInstanceUID)
        assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (256, 256, 1), name
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2"), name
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) in ((8, 8, 7), (16, 12, 11)), name
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP"), name
        assert ds.Manufacturer == "NIH ChestX-ray14 (re-encoded)", name
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge) and ds.PatientSex in ("M", "F"), name
        assert re.fullmatch(r"[1-9]\d*", ds.PatientID), name
    assert len(sop_uids) == len(set(sop_uids))
    assert len({ds.StudyInstanceUID for ds in train.values()}) == len(train)
    assert len({ds.PatientID for ds in train.values()}) == len(train)  # one image per patient


def test_no_names_or_dates(train, score_ok):
    for name, ds in {**train, **score_ok}.items():
        assert str(ds.PatientName) in ("", "ANON"), name
        for elem in ds.iterall():
            if elem.VR in ("PN", "DA", "DT", "TM"):
                assert elem.value in ("", None), (name, elem)
        assert ds.PatientIdentityRemoved == "YES", name


def test_encoding_mix_is_rich_and_not_confounded_with_label(train, labels):
    label = {r["image"]: r["fibrosis"] == "1" for r in labels}
    groups: dict[tuple[str, object], list[bool]] = defaultdict(list)
    for name, ds in train.items():
        rescaled = float(ds.get("RescaleSlope", 1)) != 1 or float(ds.get("RescaleIntercept", 0)) != 0
        for key in (("syntax", SYNTAXES[ds.file_meta.TransferSyntaxUID]),
                    ("photometric", ds.PhotometricInterpretation), ("bits", ds.BitsStored),
                    ("window", "WindowCenter" in ds), ("12-bit rescaled+window",
                                                       ds.BitsStored == 12 and rescaled and "WindowCenter" in ds)):
            groups[key].append(label[name])
    size = {k: len(v) for k, v in groups.items()}
    assert size[("syntax", "j2k")] > N_TRAIN // 2
    assert min(size[("syntax", "rle")], size[("syntax", "evle")], size[("window", False)]) >= 5
    assert size[("photometric", "MONOCHROME1")] >= 10 and size[("12-bit rescaled+window", True)] >= 10
    for key, members in groups.items():  # every encoding holds both classes near the 21% prevalence
        assert 0.1 <= np.mean(members) <= 0.4, (key, sum(members), len(members))


def test_pixels_decode_and_display_with_correct_polarity(train, score_ok):
    polarity: dict[str, list[bool]] = defaultdict(list)
    for name, ds in {**train, **score_ok}.items():
        arr = ds.pixel_array
        assert arr.shape == (256, 256) and arr.dtype == (np.uint8 if ds.BitsAllocated == 8 else np.uint16), name
        assert int(arr.max()) < 2**ds.BitsStored, name
        img = presented(ds)
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05, name
        polarity[ds.PhotometricInterpretation].append(mediastinum_brighter(img))
    # A reader that skips MONOCHROME1 inversion fails almost every MONOCHROME1 file here.
    for photometric, ok in polarity.items():
        assert np.mean(ok) >= 0.9, (photometric, sum(ok), len(ok))


def test_score_folder_lists_every_file_and_its_outcome(expected, score_ok, train):
    assert {r["image"] for r in expected} == {p.name for p in (DEMO / "score").iterdir()}
    errors = {r["image"]: r for r in expected if r["expected"] == "error"}
    assert len(errors) == 2 and set(r["expected"] for r in expected) == {"ok", "error"}
    with pytest.raises(InvalidDicomError):
        dcmread(DEMO / "score" / "not_a_dicom.dcm")
    (truncated,) = [n for n in errors if n != "not_a_dicom.dcm"]
    ds = dcmread(DEMO / "score" / truncated)  # the header survives the truncation ...
    assert ds.StudyInstanceUID.startswith("2.25.")
    with pytest.raises(ValueError, match="less than expected"):  # ... the pixels do not
        _ = ds.pixel_array
    studies = defaultdict(list)
    for ds in score_ok.values():
        studies[ds.StudyInstanceUID].append(ds)
    assert 8 <= len(studies) <= 12 and sum(len(v) == 2 for v in studies.values()) >= 2
    for members in studies.values():
        assert len({d.PatientID for d in members}) == 1
    assert not {d.PatientID for d in score_ok.values()} & {d.PatientID for d in train.values()}
    assert {r["fibrosis"] for r in expected if r["expected"] == "ok"} == {"0", "1"}


def test_two_instance_score_studies_display_the_same_radiograph(score_ok):
    """Each 2-instance study stores one radiograph in two encodings (one MONOCHROME1 or
    window-less); correctly displayed, the two must agree."""
    studies = defaultdict(list)
    for ds in score_ok.values():
        studies[ds.StudyInstanceUID].append(ds)
    pairs = [v for v in studies.values() if len(v) == 2]
    assert any(d.PhotometricInterpretation == "MONOCHROME1" for p in pairs for d in p)
    for a, b in pairs:
        x, y = presented(a), presented(b)
        if "WindowCenter" in a and "WindowCenter" in b:
            assert np.abs(x - y).max() <= 0.5 / 255 + 1e-9, (a.filename, b.filename)
        else:
            assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.9999, (a.filename, b.filename)


def test_source_md_attribution_and_prevalence():
    text = (DEMO / "SOURCE.md").read_text()
    for needle in ("NIH Clinical Center", "ChestX-ray14", "Wang X.", "CVPR 2017", "reproduce-chexnet",
                   "Data_Entry_2017_v2020.csv", f"{N_TRAIN_POS} / {N_TRAIN}",
                   f"{100 * N_TRAIN_POS / N_TRAIN:.1f}%", "1.5%", "make_demo_data.py"):
        assert needle in text, needle


def test_checksums_cover_and_match_every_file():
    listed = {}
    for line in (DEMO / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    present = {p.relative_to(DEMO).as_posix() for p in DEMO.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == present
    for rel, digest in listed.items():
        assert hashlib.sha256((DEMO / rel).read_bytes()).hexdigest() == digest, rel
    assert sum((DEMO / rel).stat().st_size for rel in present) < 8_000_000


@pytest.mark.slow
def test_demo_files_go_through_the_pipeline_reader(train, expected):
    """fibrosis.data.pixels.load_image (what ingest and scoring use) must display every demo file
    as the pydicom reference does, and turn both bad score files into per-file errors."""
    pixels = pytest.importorskip("fibrosis.data.pixels")
    from fibrosis.config import IngestConfig

    cfg = IngestConfig(image_size=256)  # the demo's native size: no resampling in the comparison
    ok = [DEMO / "images" / n for n in train] + [DEMO / "score" / r["image"] for r in expected
                                                  if r["expected"] == "ok"]
    for path in ok:
        ds = dcmread(path)
        got, want = pixels.load_image(path, cfg).image, presented(ds)
        assert got.shape == (256, 256), path
        if "WindowCenter" in ds:
            assert np.abs(got - want).max() < 1e-5, path
        else:  # the reader's fallback is a percentile window, the reference min-max
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999, path
    for r in expected:
        if r["expected"] == "error":
            with pytest.raises(pixels.InputError) as info:
                pixels.load_image(DEMO / "score" / r["image"], cfg)
            assert info.value.kind == "error" and r["image"] in str(info.value)


# ---------------------------------------------------------------- against the NIH source


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared
@needs_shared
def test_pixels_and_metadata_match_the_nih_source(train, score_ok, labels):
    import cv2

    sample = {r["image"]: r for r in read_csv(SAMPLE / "labels.csv")}
    demo_label = {r["image"]: r for r in labels}
    for name, ds in {**train, **score_ok}.items():
        src = re.match(r"NIH ChestX-ray14 (\S+\.png):", ds.DerivationDescription).group(1)
        row = sample[src]
        assert (ds.PatientID, ds.PatientSex, int(ds.PatientAge[:3]), ds.ViewPosition) == (
            row["patient_id"], row["sex"], int(row["age"]), row["view"]), name
        if name in demo_label:
            assert demo_label[name]["fibrosis"] == row["fibrosis"] and src[:-4] == name[:-4]
        png = cv2.imread(str(SAMPLE / "images" / src), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        want = cv2.resize(png, (256, 256), interpolation=cv2.INTER_AREA) / 255.0
        got = presented(ds)
        if "WindowCenter" in ds:  # 8-bit files hold the rounded area mean, 12-bit ones the exact one
            tol = 0.5 / 255 + 1e-9 if ds.BitsStored == 8 else 1e-9
            assert np.abs(got - want).max() <= tol, name
        else:  # no window: display is min-max, so only a linear match can be asked for
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9999, name


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_regeneration_is_byte_identical(tmp_path):
    _load_generator().make_demo(SAMPLE, tmp_path)
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DEMO).as_posix() for p in DEMO.rglob("*") if p.is_file())
    assert made == committed
    differ = [rel for rel in made if (tmp_path / rel).read_bytes() != (DEMO / rel).read_bytes()]
    assert not differ, f"regenerated files differ from the committed ones: {differ[:5]}"
