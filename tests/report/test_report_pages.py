"""The report as a reader gets it: the PDF of a tune run and of a train run holds no leaked
placeholder ("None", "nan") and no empty table, a schema-1 evaluation says what it lacks, and
the HTML fits a phone and a desktop screen in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from fibrosis.evaluate.result import EvaluationResult
from fibrosis.report.build import build_blocks, write_report
from fibrosis.report.render import render_html
from helpers.runs import make_run, make_tune_run

LEAKS = re.compile(r"\b(None|nan|NaN|inf)\b")


def pdf_text(pdf) -> str:
    """pdftotext of the whole PDF: skips on a user's machine without poppler, FAILS in CI."""
    exe = shutil.which("pdftotext")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("pdftotext not installed in CI (apt-get install poppler-utils)")
        pytest.skip("pdftotext (Debian poppler-utils) not installed")
    return subprocess.run([exe, "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=120,
                          check=True).stdout


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    return {"train": write_report(make_run(tmp / "train", pretrained=True), tmp / "train-out"),
            "tune": write_report(make_tune_run(tmp / "tune"), tmp / "tune-out")}


@pytest.mark.parametrize("kind", ["train", "tune"])
def test_no_placeholder_or_empty_table_reaches_the_page(reports, kind):
    out = reports[kind]
    text = pdf_text(out / "report.pdf")
    assert not LEAKS.findall(text), LEAKS.findall(text)
    html = (out / "report.html").read_text()
    assert not LEAKS.findall(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html))
    # every table has a body row
    for table in re.findall(r"<table.*?</table>", html, flags=re.S):
        assert "<td>" in table, table[:200]
    for needle in ("Participant flow", "Baseline characteristics", "Decision curve", "Reporting checklist"):
        assert needle in text, needle
    # intervals read "a (b to c)" with real minus signs: no hyphen between two numbers
    assert not re.search(r"\d-\d\.\d", text.replace("(0018,5101)", ""))


def test_tune_run_says_where_thresholds_came_from_and_puts_selection_after_results(reports):
    text = " ".join(pdf_text(reports["tune"] / "report.pdf").split())
    assert "Epochs trained" not in text and "Training stages" not in text  # nothing to show for a tune run
    assert "pooled out-of-fold predictions of the development data (train and val pooled" in text
    assert "validation split" not in text
    assert text.index("3. Results on the test split") < text.index("How much to unfreeze?")
    assert text.index("5. Operating points") < text.index("8. Model and selection")
    assert "Multiplicity: 3 arms were compared" in text
    html = (reports["tune"] / "report.html").read_text()
    assert "<th>development: train</th>" in html and "<th>development: val</th>" in html


def test_train_run_names_its_fit_split_once_everywhere(reports):
    text = " ".join(pdf_text(reports["train"] / "report.pdf").split())
    assert "Epochs trained 2 (best checkpoint: epoch 3, validation AUC 0.800)" in text
    assert text.count("fitted on the val split only (300 images") >= 3  # summary, calibration, card
    assert "out-of-fold" not in text


def test_schema_1_evaluation_says_what_it_lacks(tmp_path):
    run = make_run(tmp_path, pretrained=True)
    path = run / "eval" / "test" / "metrics.json"
    data = json.loads(path.read_text())
    for key in ("baseline", "decision_curve"):
        del data[key]
    path.write_text(json.dumps({**data, "format": 1}))
    text = json.dumps(build_blocks(EvaluationResult.read(path), set()))
    assert "Baseline characteristics: not computed for this evaluation (metrics.json schema 1); re-run" in text
    assert "Decision curve: not computed for this evaluation (metrics.json schema 1)" in text


def test_an_empty_table_is_a_sentence_not_a_header():
    page = render_html([{"type": "table", "caption": "Shift tests", "header": ["a"], "rows": []}], {}, "t")
    assert '<p class="note">Shift tests: none.</p>' in page and "<table" not in page


# Headless Chromium will not open a window narrower than 500 px: the page is measured in an
# iframe of the phone's width (file access lets the frame read the page's layout).
FRAME = """<html><body style="margin:0"><iframe id="f" src="page.html" style="width:{w}px;height:900px;border:0">
</iframe><script>document.getElementById('f').addEventListener('load', e => {{
document.body.dataset.fit = e.target.contentDocument.documentElement.scrollWidth + 'x'
 + e.target.contentWindow.innerWidth;}});</script></body></html>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
@pytest.mark.parametrize("width", [390, 1280])
def test_html_fits_a_phone_and_a_desktop(reports, tmp_path, width):
    shutil.copy(reports["tune"] / "report.html", tmp_path / "page.html")
    frame = tmp_path / "frame.html"
    frame.write_text(FRAME.format(w=width))
    base = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width + 20},900", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--dump-dom", frame.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    scroll, inner = map(int, re.search(r'data-fit="(\d+)x(\d+)"', dom).groups())
    assert inner == width and scroll <= inner  # the page itself never scrolls sideways
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", frame.as_uri()], capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)[:, :width]
    assert img.shape[:2] == (900, width)
    assert (img.sum(axis=2) < 200).mean() > 0.005  # text rendered, not a blank or error page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # anti-aliased text and colours
