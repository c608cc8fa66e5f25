"""Hostile Modality / VOI LUT values against the pixel function: LUTs that give NaN/inf
or a constant image, and VOI LUTs that miss the data."""
from __future__ import annotations

import pytest

from helpers.dicom_factory import chest_phantom, lut_item, make_dicom, to_stored
from fibrosis.io import read_csv
from fibrosis.config import IngestConfig
from fibrosis.data.ingest import ingest
from fibrosis.data.pixels import InputError, load_image, polarity_score

CFG = IngestConfig(image_size=64, min_side=1)


def _chest(rows: int = 80, cols: int = 64):
    return to_stored(chest_phantom(rows, cols), 12)


# ---------------------------------------------------------------- Modality LUT


@pytest.mark.parametrize("slope, intercept, message", [
    ("NaN", "0", r"\(0028,1053\) RescaleSlope=nan, \(0028,1052\) RescaleIntercept=0 gives nan for stored value"),
    ("inf", "0", r"RescaleSlope=inf, .* gives inf for stored value"),
    ("1e308", "0", r"RescaleSlope=1e\+308, .* gives inf for stored value"),
    ("1", "NaN", r"RescaleIntercept=nan gives nan"),
    ("0", "-1000", r"RescaleSlope=0, \(0028,1052\) RescaleIntercept=-1000 maps every stored value "
                   r"\(\d+\.\.\d+\) to -1000: a constant image"),
    ("fast", "0", r"RescaleSlope.*'fast'.*expected decimal numbers"),
])
def test_rescale_giving_non_finite_or_constant_values_is_an_error(tmp_path, slope, intercept, message):
    # pydicom refuses to write a DS that is not a number: write 9.25 and patch the bytes.
    p = make_dicom(tmp_path / "r.dcm", _chest(), bits_stored=12, RescaleSlope="9.25" if slope == "fast" else slope,
                   RescaleIntercept=intercept)
    if slope == "fast":
        p.write_bytes(p.read_bytes().replace(b"9.25", b"fast"))
    with pytest.raises(InputError, match=message) as exc:
        load_image(p, CFG)
    assert exc.value.kind == "error"


def test_ten_entry_modality_lut_is_an_error_not_a_blank_cache_image(tmp_path):
    # Stored values run ~200..3500; a 10-entry LUT maps all of them to its last entry.
    seq = [lut_item([10, 0, 16], list(range(0, 1000, 100)), ModalityLUTType="US")]
    (tmp_path / "in").mkdir()
    p = make_dicom(tmp_path / "in" / "m.dcm", _chest(), bits_stored=12, ModalityLUTSequence=seq)
    with pytest.raises(InputError, match=r"\(0028,3000\) ModalityLUTSequence with \(0028,3002\) "
                                         r"LUTDescriptor=\[10, 0, 16\] maps every stored value .* to 900"):
        load_image(p, CFG)
    summary = ingest([tmp_path / "in"], tmp_path / "c", CFG, workers=1, progress=False)
    assert summary.ingested == 0 and summary.rejected["error"] == 1
    assert "ModalityLUTSequence" in read_csv(tmp_path / "c" / "rejects.csv")[0]["reason"]


def test_voi_lut_that_maps_all_data_to_one_value_falls_back_to_the_percentile_window(tmp_path):
    # Entries for stored 0..3 only: every real value (>= ~200) takes the last entry.
    seq = [lut_item([4, 0, 16], [0, 100, 200, 300])]
    p = make_dicom(tmp_path / "v.dcm", _chest(), bits_stored=12, VOILUTSequence=seq)
    res = load_image(p, CFG)
    assert "voi:lut-sequence(4 entries) maps all data to one value" in res.steps
    assert any(s.startswith("voi:percentile(") for s in res.steps)
    assert res.image.std() > 0.1 and polarity_score(res.image) > 0.1
