"""Coded header values (fibrosis.data.coded): a name or record number typed into a coded tag is never
quoted (rejects, score status, log) nor copied (manifest, scores, side file)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.config import IngestConfig
from fibrosis.data.coded import INVALID, OTHER, WITHHELD, age_years, coded, quoted, uid
from fibrosis.data.ingest import ingest
from fibrosis.io import read_csv

NAME, MRN = "DOE^JOHN", "84736251"
PHI = f"{NAME} MRN {MRN}"  # 21 characters: longer than any CS value


@pytest.mark.parametrize("keyword, value, expected", [
    ("ViewPosition", "pa", "PA"), ("ViewPosition", "PA ", "PA"), ("ViewPosition", "", ""),
    ("ViewPosition", PHI, INVALID), ("ViewPosition", "DOE JOHN", OTHER),  # a valid CS, but no view
    ("ViewPosition", '=HYPERLINK("x")', INVALID), ("ViewPosition", "PA\\LL", INVALID),
    ("Modality", "CR", "CR"), ("Modality", "CT", "CT"), ("Modality", "SMITH", OTHER),
    ("BodyPartExamined", "KNEE", "KNEE"), ("BodyPartExamined", "JANE DOE", OTHER),
    ("BodyPartExamined", "A" * 17, INVALID),
    ("PhotometricInterpretation", "MONOCHROME2", "MONOCHROME2"), ("PhotometricInterpretation", "DOE", OTHER),
    ("Manufacturer", "GE Healthcare", "GE Healthcare"), ("Manufacturer", "=cmd|' /C calc'!A0", "=cmd|' /C calc'!A0"),
    ("Manufacturer", PHI, WITHHELD), ("Manufacturer", "Jane Doe 12345", WITHHELD),
    ("Manufacturer", "doe@example.org", WITHHELD), ("ManufacturerModelName", "FCR 5000", "FCR 5000"),
    ("Manufacturer", "x" * 65, INVALID), ("Manufacturer", "a\\b", INVALID),
    ("ManufacturerModelName", "Definium 8000", "Definium 8000"),
])
def test_coded_values_against_their_vr_and_vocabulary(keyword, value, expected):
    assert coded(value, keyword) == expected


def test_config_terms_extend_a_vocabulary_and_quoting_never_shows_a_placeholders_value():
    assert coded("lat", "ViewPosition") == OTHER and coded("lat", "ViewPosition", ("LAT",)) == "LAT"
    assert quoted("PA") == "'PA'"
    assert quoted(INVALID) == "<invalid> (not a valid CS value; not shown)"
    assert uid("1.2.840.10008.1.2.1") == "1.2.840.10008.1.2.1" and uid(f"1.2.{NAME}") == "" and uid("1." * 40) == ""
    assert [age_years(a) for a in ("61", "0.5", "061Y", "006M", "-2+3", "=1+2", "200", "")] == \
        ["61", "0.5", "61", "0.50", "", "", "", ""]


def _phi_files(root: Path) -> dict[str, Path]:
    """One chest DICOM per coded tag holding a name and MRN (and one with all of them)."""
    px = to_stored(chest_phantom(80, 64), 12)
    tags = {"BodyPartExamined": {"body_part": PHI}, "Modality": {"modality": PHI},
            "PhotometricInterpretation": {"photometric": PHI}, "ViewPosition": {"view": PHI},
            "Manufacturer": {"Manufacturer": PHI}, "ManufacturerModelName": {"ManufacturerModelName": PHI},
            "short": {"body_part": "DOE JOHN", "view": "SMITH"}}  # well-formed CS, not a term of the tag
    root.mkdir()
    return {tag: make_dicom(root / f"{tag}.dcm", px, bits_stored=12, patient_name=NAME, **kw) for tag, kw in tags.items()}


def test_a_name_in_a_coded_tag_reaches_no_output_and_no_log(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    files = _phi_files(tmp_path / "in")
    caplog.clear()  # pydicom's own warnings while the test wrote the files
    cache = tmp_path / "c"
    ingest([tmp_path / "in"], cache, IngestConfig(image_size=64, min_side=1), workers=1, progress=False)
    text = "".join(p.read_text(errors="replace") for p in cache.rglob("*.csv")) + caplog.text
    for secret in ("DOE", "JOHN", MRN, "SMITH"):
        assert secret not in text, secret
    rejects = {Path(r.split(",", 1)[0]).stem: r for r in (cache / "rejects.csv").read_text().splitlines()[1:]}
    assert "(0018,0015) BodyPartExamined=<invalid> (not a valid CS value; not shown)" in rejects["BodyPartExamined"]
    assert "(0008,0060) Modality=<invalid> (not a valid CS value; not shown)" in rejects["Modality"]
    assert "(0028,0004) PhotometricInterpretation=<invalid> (not a valid CS value; not shown)" in \
        rejects["PhotometricInterpretation"]
    assert "BodyPartExamined=<other> (not a term of the tag's vocabulary; not shown)" in rejects["short"]
    manifest = (cache / "manifest.csv").read_text()
    # a view that is no view code, a manufacturer that looks like a person: placeholders in the manifest
    assert re.search(r"ViewPosition\.dcm,.*,<invalid>,CHEST,DX,TestVendor,", manifest)
    assert re.search(r"Manufacturer\.dcm,.*,PA,CHEST,DX,<withheld>,", manifest)
    assert set(files) == {*rejects, *(Path(line.split(",", 1)[0]).stem for line in manifest.splitlines()[1:])}


def test_nor_any_score_file_or_the_score_log(tmp_path, caplog, monkeypatch):
    from helpers.checkpoints import make_checkpoint
    from fibrosis.score.run import score

    monkeypatch.setenv("FIBROSIS_SALT", "test-salt")
    _phi_files(tmp_path / "in")
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", IngestConfig(image_size=32, min_side=1))
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "scores.csv"
    summary = score(ckpt.parent, tmp_path / "in", out, device="cpu", progress=False)
    assert summary.counts["ok"] == 3 and summary.counts["excluded"] + summary.counts["error"] == 4
    text = "".join(p.read_text() for p in tmp_path.glob("scores*.csv")) + caplog.text
    for secret in ("DOE", "JOHN", MRN, "SMITH"):
        assert secret not in text, secret
    assert any(r["status"] == "excluded" and r["reason"].startswith("(0008,0060) Modality=<invalid> (not a valid CS "
                                                                    "value; not shown)") for r in read_csv(out))
