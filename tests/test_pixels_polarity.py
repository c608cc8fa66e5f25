"""ingest.polarity_qa: images whose stored values are inverted against their header."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dicom_factory import chest_phantom, make_dicom, make_png, to_stored
from fibrosis.io import read_csv
from fibrosis.config import IngestConfig
from fibrosis.data.ingest import ingest
from fibrosis.data.pixels import InputError, load_image, polarity_score

CFG = IngestConfig(image_size=64, min_side=1)  # polarity_qa: the default (exclude)


def _chest(rows: int = 80, cols: int = 64) -> np.ndarray:
    return to_stored(chest_phantom(rows, cols), 12)


# ---------------------------------------------------------------- polarity QA


def _inverted_export(tmp_path):
    """MONOCHROME2 header, stored values inverted (lungs bright): a real-world DX export bug."""
    ok = make_dicom(tmp_path / "ok.dcm", _chest(), bits_stored=12)
    bad = make_dicom(tmp_path / "inv.dcm", to_stored(chest_phantom(80, 64), 12, monochrome1=True), bits_stored=12)
    return ok, bad


def test_inverted_export_is_excluded_by_default_with_the_evidence(tmp_path):
    _, bad = _inverted_export(tmp_path)
    with pytest.raises(InputError, match=r": polarity suspect \(mediastinum-lungs=-0\.\d+ < -0\.05: .*"
                                         r"PhotometricInterpretation='MONOCHROME2', shown as stored; "
                                         r"ingest.polarity_qa=exclude") as exc:
        load_image(bad, CFG)
    assert exc.value.kind == "excluded"


def test_polarity_keep_notes_it_and_invert_turns_it_back(tmp_path):
    ok, bad = _inverted_export(tmp_path)
    ref = load_image(ok, CFG)
    assert not any(s.startswith("qa:") for s in ref.steps)
    kept = load_image(bad, dataclasses.replace(CFG, polarity_qa="keep"))
    assert any(s.startswith("qa:polarity-suspect(mediastinum-lungs=-0.") for s in kept.steps)
    assert polarity_score(kept.image) < 0
    fixed = load_image(bad, dataclasses.replace(CFG, polarity_qa="invert"))
    assert any(s.startswith("qa:polarity-inverted(mediastinum-lungs=-0.") for s in fixed.steps)
    np.testing.assert_allclose(fixed.image, ref.image, atol=2e-3)
    assert fixed.image[:, :4].max() == 0 and fixed.image[:, -4:].max() == 0  # the padding stays black


def test_inverted_png_export_is_excluded_too(tmp_path):
    p = make_png(tmp_path / "inv.png", ((1 - chest_phantom(80, 80)) * 255).astype(np.uint8))
    with pytest.raises(InputError, match="polarity suspect") as exc:
        load_image(p, CFG)
    assert exc.value.kind == "excluded"


def test_ingest_excludes_counts_and_can_keep_suspected_inversions(tmp_path):
    (tmp_path / "in").mkdir()
    _inverted_export(tmp_path / "in")
    summary = ingest([tmp_path / "in"], tmp_path / "c", CFG, workers=1, progress=False)
    assert (summary.ingested, summary.rejected["excluded"], summary.qa_excluded) == (1, 1, 1)
    (reject,) = read_csv(tmp_path / "c" / "rejects.csv")
    assert reject["path"].endswith("inv.dcm") and reject["kind"] == "excluded"
    assert reject["reason"].startswith("polarity suspect (mediastinum-lungs=")
    # `keep` is a different cache (other images in it): a new cache folder.
    kept = ingest([tmp_path / "in"], tmp_path / "k", dataclasses.replace(CFG, polarity_qa="keep"),
                  workers=1, progress=False)
    assert (kept.ingested, kept.qa_excluded, kept.qa_flagged) == (2, 0, 1)
    rows = {r["path"].rsplit("/", 1)[1]: r for r in read_csv(tmp_path / "k" / "manifest.csv")}
    assert "qa:polarity-suspect(" in rows["inv.dcm"]["steps"] and "qa:" not in rows["ok.dcm"]["steps"]
    with pytest.raises(ValueError, match="existing cache has preprocessing="):
        ingest([tmp_path / "in"], tmp_path / "c", dataclasses.replace(CFG, polarity_qa="invert"),
               workers=1, progress=False)
