"""The 16 real DICOMs of ../shared/data/dicom-robustness (skipped when absent).

Expected outcome of every file, with the reason it is right:
- human chest files decode lungs-dark / bone-bright;
- the FAKE file is the SIIM image with its header rewritten to MONOCHROME1 (pixels
  unchanged). Obeying the header -- what a DICOM reader must do -- inverts it, so it
  comes out lungs-bright. The polarity check (ingest.polarity_qa) finds it inverted: by
  default (auto) and with `invert` it is turned back (qa:polarity-inverted), `exclude`
  excludes it with the measured evidence, `keep` keeps it as the header says, noted
  (qa:polarity-suspect). Through ingest the MONO2 original is a duplicate of the FAKE
  file (same SOPInstanceUID, and the FAKE file sorts first) unless the FAKE is excluded;
- broken codestreams are errors naming the transfer syntax (the broken hip file is
  first excluded by policy: non-chest files are refused from the header, before any
  decode; with the policy relaxed it is an error like the other one);
- non-chest / non-human files are excluded by their header.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from fibrosis.io import read_csv
from fibrosis.config import IngestConfig
from fibrosis.data.ingest import ingest
from fibrosis.data.pixels import InputError, load_image, polarity_score

pytestmark = pytest.mark.shared

CHEST_OK = ["CR_chest_MONO1_10bit_noPreamble_ACRNEMA.dcm", "CR_chest_MONO1_J2K_lossy_15bit.dcm",
            "CR_chest_MONO2_JPEGbaseline_8bit_SIIM.dcm", "DX_chest_MONO1_J2K_lossless_PLUTinverse.dcm"]
FAKE = "CR_chest_FAKE_MONO1_JPEGbaseline_8bit_SIIM.dcm"
ERRORS = {"DX_chest_MONO1_J2K_lossless_PLUTinverse_BROKEN.dcm": "JPEG 2000 Image Compression (Lossless Only)"}
EXCLUDED = {
    "CR_hip_MONO2_JPEGlossless_SV1_nonchest.dcm": "BodyPartExamined='HIP'",
    "CR_hip_MONO2_JPEGextended_12bit_lossy_nonchest.dcm": "BodyPartExamined='HIP'",
    "CR_hip_MONO2_JPEGextended_12bit_lossy_fixed_nonchest.dcm": "BodyPartExamined='HIP'",
    "CR_extremity_MONO1_J2K_lossless_nonchest.dcm": "BodyPartExamined='EXTREMITY'",
    "CR_hand_MONO2_J2K_lossless_SOTinconsistent_nonchest.dcm": "BodyPartExamined='HAND'",
    "CR_dentalpano_MONO1_JPEGlossless_ModalityLUTSeq_nonchest.dcm": "excluded term 'TEETH'",
    "DX_veterinary_thorax_lateral_MONO1_PLUTinverse.dcm": "contains excluded term 'CANINE'",
    "CR_cspine_MONO1_16x16_pydicom_wheel.dcm": "BodyPartExamined='CSPINE'",
    "OT_testpattern_VOILUTSeq.dcm": "Modality='OT'",
    "OT_testpattern_ModalityLUTSeq.dcm": "Modality='OT'",
}
CFG = IngestConfig(image_size=256)


@pytest.fixture(scope="module")
def files(request):
    from helpers.paths import SHARED

    d = SHARED / "data" / "dicom-robustness" / "files"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


def test_the_table_covers_all_16_files(files):
    assert sorted(p.name for p in files.iterdir()) == sorted(CHEST_OK + [FAKE, *ERRORS, *EXCLUDED])


@pytest.mark.parametrize("name", CHEST_OK)
def test_chest_files_lungs_dark_bone_bright(files, name):
    res = load_image(files / name, CFG)
    assert polarity_score(res.image) > 0.1, res.steps
    assert not any(s.startswith("qa:") for s in res.steps)
    assert any(s.startswith("polarity:as-shown(score=+") for s in res.steps)
    assert res.image.min() >= 0 and res.image.max() <= 1 and res.image.std() > 0.1


def test_header_rewritten_to_monochrome1_is_turned_back_or_excluded_by_the_polarity_check(files):
    assert CFG.polarity_qa == "auto"  # the default: invert when confident
    real = load_image(files / "CR_chest_MONO2_JPEGbaseline_8bit_SIIM.dcm", CFG)
    back = load_image(files / FAKE, CFG)
    np.testing.assert_allclose(back.image, real.image, atol=1e-5)
    assert any(s.startswith("qa:polarity-inverted(score=-") for s in back.steps)
    with pytest.raises(InputError, match=r": polarity suspect \(inverted, score=-\d\.\d+: mediastinum-lungs=-0\.\d+.*"
                                         r"PhotometricInterpretation='MONOCHROME1', inverted for MONOCHROME1") as exc:
        load_image(files / FAKE, dataclasses.replace(CFG, polarity_qa="exclude"))
    assert exc.value.kind == "excluded"


def test_header_rewritten_to_monochrome1_kept_or_inverted_on_request(files):
    real = load_image(files / "CR_chest_MONO2_JPEGbaseline_8bit_SIIM.dcm", CFG)
    fake = load_image(files / FAKE, dataclasses.replace(CFG, polarity_qa="keep"))
    np.testing.assert_allclose(fake.image, 1 - real.image, atol=1e-6)
    assert "invert:MONOCHROME1" in fake.steps
    assert any(s.startswith("qa:polarity-suspect(score=-") for s in fake.steps)
    back = load_image(files / FAKE, dataclasses.replace(CFG, polarity_qa="invert"))
    np.testing.assert_allclose(back.image, real.image, atol=1e-5)
    assert any(s.startswith("qa:polarity-inverted(score=-") for s in back.steps)


def test_broken_codestreams_are_errors_naming_the_transfer_syntax(files):
    for name, syntax in ERRORS.items():
        with pytest.raises(InputError, match=re.escape(f"cannot decode pixel data ({syntax})")) as exc:
            load_image(files / name, CFG)
        assert exc.value.kind == "error" and name in str(exc.value)
    relaxed = dataclasses.replace(CFG, allowed_body_parts=CFG.allowed_body_parts + ("HIP",))
    with pytest.raises(InputError, match=r"cannot decode pixel data \(JPEG Extended") as exc:
        load_image(files / "CR_hip_MONO2_JPEGextended_12bit_lossy_nonchest.dcm", relaxed)
    assert exc.value.kind == "error"


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_non_chest_files_are_excluded_by_header(files, name):
    with pytest.raises(InputError, match=EXCLUDED[name]) as exc:
        load_image(files / name, CFG)
    assert exc.value.kind == "excluded"


def test_dental_modality_lut_sequence_decodes_on_integers(files):
    """pydicom fails applying this Modality LUT to floats; the LUT path keeps integers. (Not a
    chest: the chest polarity check has nothing to say about it, so it only notes it.)"""
    cfg = dataclasses.replace(CFG, excluded_description_terms=(), polarity_qa="keep")
    res = load_image(files / "CR_dentalpano_MONO1_JPEGlossless_ModalityLUTSeq_nonchest.dcm", cfg)
    assert "modality:lut-sequence" in res.steps and res.image.std() > 0.1


@pytest.mark.parametrize("size", [512, 256])
def test_j2k_reduced_decode_on_a_real_chest(files, size):
    cfg = dataclasses.replace(CFG, image_size=size)
    name = "DX_chest_MONO1_J2K_lossless_PLUTinverse.dcm"
    fast, full = load_image(files / name, cfg), load_image(files / name, dataclasses.replace(cfg, j2k_reduce=False))
    assert "reduce=" in fast.steps[0] and "reduce=" not in full.steps[0]
    diff = np.abs(fast.image - full.image)
    assert diff.mean() <= 0.005 and np.percentile(diff, 99) <= 0.04  # test_pixels.J2K_TOLERANCE


@pytest.mark.parametrize("policy", ["auto", "exclude", "keep"])
def test_ingest_accounts_for_all_16_files(files, tmp_path, policy):
    cfg = dataclasses.replace(CFG, polarity_qa=policy)
    summary = ingest([files], tmp_path / "c", cfg, workers=1, progress=False)
    rows = read_csv(tmp_path / "c" / "manifest.csv")
    rejects = {r["path"].rsplit("/", 1)[1]: r for r in read_csv(tmp_path / "c" / "rejects.csv")}
    names = sorted([r["path"].rsplit("/", 1)[1] for r in rows] + list(rejects))
    assert names == sorted(p.name for p in files.iterdir())
    # Exactly one of the SIIM pair is cached: the FAKE one unless the polarity check excludes it.
    siim = "CR_chest_MONO2_JPEGbaseline_8bit_SIIM.dcm"
    cached, dropped = (siim, FAKE) if policy == "exclude" else (FAKE, siim)
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == sorted([cached] + CHEST_OK[:2] + CHEST_OK[3:])
    assert rejects[dropped]["kind"] == ("excluded" if policy == "exclude" else "duplicate")
    qa_excluded = {FAKE} if policy == "exclude" else set()
    assert {n for n, r in rejects.items() if r["kind"] == "excluded"} == set(EXCLUDED) | qa_excluded
    assert {n for n, r in rejects.items() if r["kind"] == "error"} == set(ERRORS)
    assert all(r["reason"] for r in rejects.values())
    assert summary.exit_code == 0
    assert (summary.qa_excluded, summary.qa_flagged) == ((1, 0) if policy == "exclude" else (0, 1))
