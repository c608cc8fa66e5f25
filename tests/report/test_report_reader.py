"""The report's reader-versus-model appendix: present when `fibrosis review` left RUN/reader/reader.json,
absent otherwise."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fibrosis import artefacts
from fibrosis.evaluate.reader import reader_vs_model
from fibrosis.io import write_json
from fibrosis.report.build import write_report
from fibrosis.report.reader import has_figure, read_reader, reader_blocks
from helpers.runs import make_run

pytestmark = pytest.mark.filterwarnings("ignore::fibrosis.numeric.MetricWarning")


def result(truth: bool) -> dict:
    """reader.json as `fibrosis review` writes it."""
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=60) < 0.3).astype(float)
    prob = np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1)
    reader = np.where(rng.uniform(size=60) < 0.85, y, 1 - y)
    reader[:4] = np.nan  # uncertain
    res = reader_vs_model(prob, 0.5, reader, y if truth else None)
    return dataclasses.replace(res, scores="scores.csv", reader_labels="reader.csv", truth=None,
                               created="2026-12-08T00:00:00+00:00").to_json()


def test_the_appendix_shows_the_reader_beside_the_model(tmp_path):
    run = make_run(tmp_path, pretrained=True)
    (run / artefacts.READER_DIR).mkdir()
    write_json(run / artefacts.READER_DIR / artefacts.READER_VS_MODEL, result(truth=True))
    out = write_report(run, tmp_path / "out")
    html = (out / artefacts.REPORT_HTML).read_text()
    assert "Appendix C: Reader versus model" in html and "reader sensitivity / specificity (reference)" in html
    assert "4 uncertain" in html and "model AUC against the reader" in html
    assert html.count("data:image/png;base64,") >= 5  # the reader figure among the others


def test_no_reader_no_appendix_and_no_reference_no_point(tmp_path):
    run = make_run(tmp_path, pretrained=True)
    assert read_reader(run) is None
    out = write_report(run, tmp_path / "out")
    assert "Reader versus model" not in (out / artefacts.REPORT_HTML).read_text()
    (run / artefacts.READER_DIR).mkdir()
    write_json(run / artefacts.READER_DIR / artefacts.READER_VS_MODEL, result(truth=False))
    res = read_reader(run)
    assert res is not None and not has_figure(res)
    text = str(reader_blocks(res, have_figure=False))
    assert "No reference standard was given" in text and "model AUC against the reader" in text
