"""ingest.polarity_qa: the polarity check (fibrosis.data.polarity) and what each policy does with it."""
from __future__ import annotations

import dataclasses
import typing

import cv2
import numpy as np
import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, make_png, to_stored
from fibrosis.config import IngestConfig, PolarityQA
from fibrosis.data.ingest import ingest
from fibrosis.data.pixels import POLARITY_ACTIONS, InputError, excluded_flag, load_image
from fibrosis.data.polarity import AS_SHOWN_FROM, INVERTED_TO, Verdict, check_polarity, cues
from fibrosis.io import read_csv

CFG = IngestConfig(image_size=64, min_side=1)  # polarity_qa: the default (auto)


def _chest(rows: int = 80, cols: int = 64) -> np.ndarray:
    return to_stored(chest_phantom(rows, cols), 12)


def _inverted_export(tmp_path):
    """MONOCHROME2 header, stored values inverted (lungs bright): a real-world DX export bug."""
    ok = make_dicom(tmp_path / "ok.dcm", _chest(), bits_stored=12)
    bad = make_dicom(tmp_path / "inv.dcm", to_stored(chest_phantom(80, 64), 12, monochrome1=True), bits_stored=12)
    return ok, bad


def test_every_policy_says_what_it_does_with_every_verdict():
    assert set(POLARITY_ACTIONS) == set(typing.get_args(PolarityQA)) and CFG.polarity_qa == "auto"
    for actions in POLARITY_ACTIONS.values():
        assert set(actions) == set(typing.get_args(Verdict)) and actions["as-shown"] == "keep"
    assert POLARITY_ACTIONS["auto"] == {"as-shown": "keep", "unsure": "exclude", "inverted": "invert"}


def test_an_image_and_its_inversion_get_opposite_scores():
    img = chest_phantom(120, 100, seed=3)
    a, b = check_polarity(img), check_polarity(1 - img)
    assert a.verdict == "as-shown" and b.verdict == "inverted"
    assert b.score == pytest.approx(-a.score, abs=1e-4)
    assert all(cues(1 - img)[k] == pytest.approx(-v, abs=1e-5) for k, v in cues(img).items())


def test_uniform_edge_bands_do_not_count():
    """A film padded with black bands (scanned, cropped exports) measures like the film itself:
    the band under the lungs would otherwise be black padding, and read as an inverted abdomen."""
    img = chest_phantom(200, 160, seed=4)
    padded = np.zeros((300, 260), np.float32)
    padded[20:220, 50:210] = img
    assert check_polarity(padded).score == pytest.approx(check_polarity(img).score, abs=0.6)
    assert check_polarity(padded).verdict == "as-shown"


def test_a_flat_image_is_unsure_not_inverted():
    flat = np.full((64, 64), 0.5, np.float32) + np.random.default_rng(0).normal(0, 0.01, (64, 64)).astype(np.float32)
    check = check_polarity(flat)
    assert check.verdict == "unsure" or abs(check.score) < abs(INVERTED_TO)
    assert INVERTED_TO < AS_SHOWN_FROM


def test_inverted_export_is_inverted_back_by_default_with_the_evidence(tmp_path):
    ok, bad = _inverted_export(tmp_path)
    ref = load_image(ok, CFG)
    assert [s for s in ref.steps if s.startswith(("polarity:", "qa:"))] == [
        next(s for s in ref.steps if s.startswith("polarity:as-shown(score=+"))]  # a verdict, no QA note
    fixed = load_image(bad, CFG)
    assert any(s.startswith("polarity:inverted(score=-") for s in fixed.steps)
    assert any(s.startswith("qa:polarity-inverted(score=-") and "mediastinum-lungs=-0." in s for s in fixed.steps)
    np.testing.assert_allclose(fixed.image, ref.image, atol=2e-3)
    assert fixed.image[:, :4].max() == 0 and fixed.image[:, -4:].max() == 0  # the padding stays black


def test_exclude_keep_and_invert_on_request(tmp_path):
    ok, bad = _inverted_export(tmp_path)
    with pytest.raises(InputError, match=r": polarity suspect \(inverted, score=-\d+\.\d+: mediastinum-lungs=-0\.\d+, "
                                         r"corners-image=\+0\.\d+, below-lungs=-0\.\d+; looks inverted.*"
                                         r"PhotometricInterpretation='MONOCHROME2', shown as stored; "
                                         r"ingest.polarity_qa=exclude") as exc:
        load_image(bad, dataclasses.replace(CFG, polarity_qa="exclude"))
    assert exc.value.kind == "excluded" and excluded_flag(exc.value.reason) == "polarity-suspect"
    kept = load_image(bad, dataclasses.replace(CFG, polarity_qa="keep"))
    assert any(s.startswith("qa:polarity-suspect(score=-") for s in kept.steps)
    assert check_polarity(kept.image[:, 12:-12]).verdict == "inverted"  # kept as shown
    back = load_image(bad, dataclasses.replace(CFG, polarity_qa="invert"))
    np.testing.assert_allclose(back.image, load_image(ok, CFG).image, atol=2e-3)


def test_an_unsure_image_is_excluded_by_default_and_noted_by_keep(tmp_path):
    # Half of a film shown as stored, half inverted: no cue agrees with the others.
    img = chest_phantom(96, 96, seed=5)
    mixed = np.where(np.arange(96)[None, :] < 48, img, 1 - img)
    assert check_polarity(mixed).verdict == "unsure", check_polarity(mixed)
    p = make_png(tmp_path / "mixed.png", (mixed * 255).astype(np.uint8))
    with pytest.raises(InputError, match=r"polarity suspect \(unsure, score=.*cannot tell") as exc:
        load_image(p, CFG)
    assert exc.value.kind == "excluded" and excluded_flag(exc.value.reason) == "polarity-unsure"
    kept = load_image(p, dataclasses.replace(CFG, polarity_qa="invert"))  # invert: only the confident
    assert any(s.startswith("qa:polarity-unsure(") for s in kept.steps)


def test_inverted_png_export_is_turned_back_too(tmp_path):
    p = make_png(tmp_path / "inv.png", ((1 - chest_phantom(80, 80)) * 255).astype(np.uint8))
    res = load_image(p, CFG)
    assert any(s.startswith("qa:polarity-inverted(") for s in res.steps)
    with pytest.raises(InputError, match="polarity suspect") as exc:
        load_image(p, dataclasses.replace(CFG, polarity_qa="exclude"))
    assert exc.value.kind == "excluded"


def test_ingest_counts_and_each_policy_is_a_cache_of_its_own(tmp_path):
    (tmp_path / "in").mkdir()
    _inverted_export(tmp_path / "in")
    summary = ingest([tmp_path / "in"], tmp_path / "c", CFG, workers=1, progress=False)
    assert (summary.ingested, summary.rejected["excluded"], summary.qa_excluded, summary.qa_flagged) == (2, 0, 0, 1)
    rows = {r["path"].rsplit("/", 1)[1]: r for r in read_csv(tmp_path / "c" / "manifest.csv")}
    assert "qa:polarity-inverted(" in rows["inv.dcm"]["steps"] and "qa:" not in rows["ok.dcm"]["steps"]
    assert "polarity:as-shown(" in rows["ok.dcm"]["steps"]  # every image's verdict is in the manifest
    excl = ingest([tmp_path / "in"], tmp_path / "x", dataclasses.replace(CFG, polarity_qa="exclude"),
                  workers=1, progress=False)
    assert (excl.ingested, excl.rejected["excluded"], excl.qa_excluded) == (1, 1, 1)
    (reject,) = read_csv(tmp_path / "x" / "rejects.csv")
    assert reject["path"].endswith("inv.dcm") and reject["reason"].startswith("polarity suspect (inverted, score=-")
    with pytest.raises(ValueError, match="existing cache has preprocessing="):
        ingest([tmp_path / "in"], tmp_path / "c", dataclasses.replace(CFG, polarity_qa="invert"),
               workers=1, progress=False)


# ---------------------------------------------------------------- real films (../shared, skipped without)

NIH_INVERTED = "00017999_000.png"  # looked at: bright lungs, dark bones, dark "PORTABLE AP" text
# Correct films the mediastinum-only check excluded: a small young patient, a hyperinflated chest
NIH_LOW_MEDIASTINUM = ("00012082_000.png", "00015886_000.png")


def _content(res, size: int) -> np.ndarray:
    m = res.meta
    scale = size / max(m.rows, m.cols)
    h, w = round(m.rows * scale), round(m.cols * scale)
    top, left = (size - h) // 2, (size - w) // 2
    return res.image[top:top + h, left:left + w]


@pytest.fixture
def nih(shared_data):
    return shared_data / "nih-cxr14-sample" / "images"


def test_no_good_nih_film_is_excluded_and_the_inverted_one_is_turned_back(nih, tmp_path):
    cfg = IngestConfig(image_size=128)  # the default policy
    summary = ingest([nih], tmp_path / "c", cfg, workers=2, progress=False)
    assert summary.ingested == 421 and summary.rejected["excluded"] == 0 and summary.qa_flagged == 1
    rows = {r["path"].rsplit("/", 1)[1]: r for r in read_csv(tmp_path / "c" / "manifest.csv")}
    verdicts = {n: r["steps"].split("polarity:", 1)[1].split("(", 1)[0] for n, r in rows.items()}
    assert {n for n, v in verdicts.items() if v != "as-shown"} == {NIH_INVERTED}
    assert "qa:polarity-inverted(" in rows[NIH_INVERTED]["steps"]
    for name in NIH_LOW_MEDIASTINUM:
        assert verdicts[name] == "as-shown" and "qa:" not in rows[name]["steps"]


def test_the_inverted_nih_film_once_turned_back_reads_as_a_correct_film(nih):
    res = load_image(nih / NIH_INVERTED, IngestConfig(image_size=256))
    check = check_polarity(_content(res, 256))
    assert check.verdict == "as-shown" and check.score > 3
    small = cv2.resize(_content(res, 256), (64, 64), interpolation=cv2.INTER_AREA)
    assert small[16:40, 10:24].mean() < small[16:40, 29:35].mean()  # lungs darker than the mediastinum
