"""Free-text tags hold what sites type: names, MRNs, dates. A policy reason names the tag and
the matched term, never the value, so none of it reaches rejects.csv, the manifest or logs."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.io import read_csv
from fibrosis.config import IngestConfig
from fibrosis.data.ingest import ingest
from fibrosis.data.pixels import InputError, load_image

COMMENT = "Doe^Jane MRN123456 19510317 hand film"
SECRETS = ("Doe", "Jane", "MRN123456", "19510317")
CFG = IngestConfig(image_size=64, min_side=1)


@pytest.mark.parametrize("attrs, reason", [
    ({"ImageComments": COMMENT},
     "(0020,4000) ImageComments contains excluded term 'HAND' (ingest.excluded_description_terms)"),
    ({"SeriesDescription": "Doe^Jane MRN123456 KNEE HIP"},
     "(0008,103E) SeriesDescription contains excluded terms 'HIP', 'KNEE' (ingest.excluded_description_terms)"),
    ({"view": None, "ProtocolName": "Doe^Jane MRN123456 LAT"},
     "(0018,1030) ProtocolName names an excluded view 'LAT' and (0018,5101) ViewPosition is absent"),
    ({"PatientSpeciesDescription": "Doe^Jane MRN123456"},
     "(0010,2201) PatientSpeciesDescription is not a human patient; allowed ['HOMO SAPIENS', 'HUMAN'] or absent"),
])
def test_reason_names_tag_and_term_never_the_value(tmp_path, attrs, reason):
    p = make_dicom(tmp_path / "x.dcm", to_stored(chest_phantom(64, 64), 12), **attrs)
    with pytest.raises(InputError) as exc:
        load_image(p, CFG)
    assert exc.value.kind == "excluded" and exc.value.reason == reason


def test_free_text_tags_never_reach_rejects_manifest_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    d = tmp_path / "in"
    d.mkdir()
    px = to_stored(chest_phantom(96, 80), 12)
    make_dicom(d / "ok.dcm", px, bits_stored=12, SeriesDescription="Smith^John 4711-0815 chest")
    make_dicom(d / "hand.dcm", px, bits_stored=12, ImageComments=COMMENT)
    summary = ingest([d], tmp_path / "c", CFG, workers=1, progress=False)
    assert (summary.ingested, summary.rejected["excluded"]) == (1, 1)
    (reject,) = read_csv(tmp_path / "c" / "rejects.csv")
    assert Path(reject["path"]).name == "hand.dcm"
    text = "".join((tmp_path / "c" / n).read_text() for n in ("rejects.csv", "manifest.csv")) + caplog.text
    assert not [s for s in SECRETS + ("Smith", "4711-0815") if s in text]
