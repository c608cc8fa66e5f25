"""Scores of hostile inputs: the qa column and polarity policy, and free-text tags that hold
patient names / IDs never reaching scores, rejects or logs."""
from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import pytest

from helpers.dicom_factory import chest_phantom, make_dicom, to_stored
from fibrosis.score import run as S
from fibrosis.score.output import COLUMNS
from helpers.checkpoints import INGEST, make_checkpoint

COMMENT = "Doe^Jane MRN123456 19510317 hand film"  # what a site typed into ImageComments
SERIES = "Smith^John 4711-0815 chest follow-up"   # no excluded term: must not matter either
SECRETS = ("Doe", "Jane", "MRN123456", "19510317", "Smith", "4711-0815")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    px = to_stored(chest_phantom(96, 80), 12)
    make_dicom(root / "ok.dcm", px, bits_stored=12, SeriesDescription=SERIES)
    make_dicom(root / "inverted.dcm", to_stored(chest_phantom(96, 80, seed=1), 12, monochrome1=True),
               bits_stored=12)  # MONOCHROME2 header, lungs stored bright
    make_dicom(root / "hand.dcm", px, bits_stored=12, ImageComments=COMMENT, SeriesDescription=SERIES)
    return root


def _score(tmp_path, inputs, polarity_qa: str) -> dict[str, dict[str, str]]:
    ckpt = make_checkpoint(tmp_path / polarity_qa / "best.pt", dataclasses.replace(INGEST, polarity_qa=polarity_qa))
    out = tmp_path / f"scores-{polarity_qa}.csv"
    S.score(ckpt.parent, inputs, out, device="cpu", progress=False, salt_dir=tmp_path)
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS and "qa" in COLUMNS
        return {Path(r["path"]).name: r for r in reader}


def test_inverted_export_is_excluded_with_evidence_and_qa_column(tmp_path, inputs):
    rows = _score(tmp_path, inputs, "exclude")
    inv = rows["inverted.dcm"]
    assert inv["status"] == "excluded" and inv["reason"].startswith("polarity suspect (inverted, score=-")
    assert inv["qa"] == "polarity-suspect" and inv["probability_calibrated"] == ""
    assert rows["ok.dcm"]["status"] == "ok" and rows["ok.dcm"]["qa"] == ""


def test_the_default_turns_a_confidently_inverted_export_back_and_says_so(tmp_path, inputs):
    rows = _score(tmp_path, inputs, "auto")
    assert rows["inverted.dcm"]["status"] == "ok" and rows["inverted.dcm"]["qa"] == "polarity-inverted"
    assert rows["ok.dcm"]["qa"] == ""


@pytest.mark.slow
@pytest.mark.parametrize("policy, flag", [("keep", "polarity-suspect"), ("invert", "polarity-inverted")])
def test_keep_and_invert_score_the_image_and_say_so(tmp_path, inputs, policy, flag):
    rows = _score(tmp_path, inputs, policy)
    assert rows["inverted.dcm"]["status"] == "ok" and rows["inverted.dcm"]["qa"] == flag
    assert 0 <= float(rows["inverted.dcm"]["probability_calibrated"]) <= 1
    assert rows["ok.dcm"]["qa"] == ""


@pytest.mark.slow
def test_free_text_tags_never_reach_scores(tmp_path, inputs, caplog):
    caplog.set_level(logging.DEBUG)
    rows = _score(tmp_path, inputs, "exclude")
    assert (rows["hand.dcm"]["status"], rows["hand.dcm"]["reason"]) == (
        "excluded", "(0020,4000) ImageComments contains excluded term 'HAND' (ingest.excluded_description_terms)")
    text = (tmp_path / "scores-exclude.csv").read_text() + caplog.text
    assert not [s for s in SECRETS if s in text]
