"""The validation report: content, privacy, the not-pretrained banner, PDF, and a real
headless-Chromium rendering (skipped where Debian's ``chromium`` is not installed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from fibrosis.config import EvaluateConfig
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.run import evaluate_predictions
from fibrosis.report.build import build_blocks, write_report
from fibrosis.report.render import render_html
from fibrosis.evaluate.summary import scrub_reason
from helpers.runs import make_run, predictions

SECRETS = ("SECRET-PATIENT", "Doe^John", "/data/incoming", "hash7-")


def pdf_pages(pdf) -> list[str]:
    """Text of each PDF page by poppler's pdftotext. Where it is missing the test skips on a
    user's machine but FAILS in CI (which installs poppler-utils), so a PDF check can never
    pass unseen there."""
    exe = shutil.which("pdftotext")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("pdftotext not installed in CI (apt-get install poppler-utils)")
        pytest.skip("pdftotext (Debian poppler-utils) not installed")
    out = subprocess.run([exe, str(pdf), "-"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split("\f")[:-1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    return write_report(make_run(tmp, pretrained=False), tmp / "out")


def test_report_files_and_sections(report):
    assert {p.name for p in report.iterdir()} == {"report.html", "report.pdf", "metrics.json"}
    html = (report / "report.html").read_text()
    for needle in ("validation report", "my-run", "synthetic test images", "prevalence", "1. Summary",
                   "2. Data and participant flow", "Baseline characteristics", "age, years: median (IQR)",
                   "3. Results on the test split", "DeLong", "bootstrap", "4. Calibration",
                   "ECE binning: 10 equal-width bins", "5. Operating points and decision curve", "PPV / NPV at 1.5%",
                   "Decision curve", "Net benefit at selected threshold probabilities", "6. Subgroups",
                   "7. Grad-CAM", "8. Model and selection", "9. Intended use and limitations", "Out of scope",
                   "Reference standard not stated", "Prevalence shift", "Appendix A: Reproducibility", "Package versions",
                   "Manifest sha256", "Appendix B: Reporting checklist", "Appendix C: Configuration",
                   "(0018,5101) ViewPosition=&#x27;LL&#x27;"):
        assert needle in html, needle
    # the sections come in the order a reader needs them
    heads = re.findall(r"<h2[^>]*>(\d+|Appendix [A-C])[.:]", html)
    assert heads == [str(i) for i in range(1, 10)] + ["Appendix A", "Appendix B", "Appendix C"]
    # flow, ROC, PR, reliability, histograms, decision curve (no Grad-CAM here)
    assert html.count("data:image/png;base64,") == 6
    assert "word-break" not in html and "frozen on the validation split" not in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    assert (report / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_not_pretrained_banner_comes_first(report, tmp_path):
    html = (report / "report.html").read_text()
    body = html.split("<body>", 1)[1].lstrip()
    assert body.startswith('<div class="banner" role="alert">WARNING: the backbone of this model is NOT '
                           "ImageNet-pretrained")
    run = make_run(tmp_path, pretrained=True)
    blocks = build_blocks(EvaluationResult.read(run / "eval" / "test" / "metrics.json"), set())
    assert blocks[0] == {"type": "h1", "text": "Pulmonary fibrosis classifier: validation report"}
    assert "NOT ImageNet-pretrained" not in render_html(blocks, {}, "t")
    pages = pdf_pages(report / "report.pdf")
    assert len(pages) >= 3
    # page 1 opens with the running banner, then the full warning, before the title
    first = " ".join(pages[0].split())
    assert first.startswith("NOT ImageNet-pretrained WARNING: the backbone of this model is NOT ImageNet-pretrained")
    assert first.index("WARNING") < first.index("validation report")
    assert all(p.lstrip().startswith("NOT ImageNet-pretrained") for p in pages)  # on every page
    assert all(f"page {i} of {len(pages)}" in p for i, p in enumerate(pages, 1))


def test_no_identifiers_anywhere(report):
    for name in ("report.html", "metrics.json"):
        text = (report / name).read_text()
        for secret in SECRETS:
            assert secret not in text, (name, secret)
    text = "\n".join(pdf_pages(report / "report.pdf"))
    assert "Reproducibility" in text and not any(s in text for s in SECRETS)


def test_scrub_reason():
    assert scrub_reason("/a/b/Doe^John.dcm: bad tag", "/a/b/Doe^John.dcm") == "bad tag"
    assert scrub_reason("C:\\x\\y.dcm is truncated") == "<path> is truncated"
    assert scrub_reason("(0028,0004) PhotometricInterpretation='PALETTE COLOR'; expected MONOCHROME1/2") == \
        "(0028,0004) PhotometricInterpretation='PALETTE COLOR'; expected MONOCHROME1/2"


def test_missing_evaluation_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `fibrosis evaluate --run"):
        write_report(tmp_path / "nothing", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_html_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400", f"--screenshot={shot}",
           (report / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1400, 1100)
    # the banner is the first thing on the page: the top rows are the alert red (#b00020)
    red = (abs(img[:, :, 0] - 0xB0) < 12) & (img[:, :, 1] < 20) & (abs(img[:, :, 2] - 0x20) < 12)
    assert red[5:40].mean() > 0.5
    # and the page below is real content (text and a figure), not an empty or error page
    body = img[200:]
    assert (body.sum(axis=2) < 200).mean() > 0.005  # dark text pixels
    assert len(np.unique(body.reshape(-1, 3), axis=0)) > 200  # anti-aliased text + plot colours


def test_intervals_are_labelled_with_the_configured_level(tmp_path):
    ecfg = EvaluateConfig(bootstrap_resamples=200, ci_level=0.9, deployment_prevalence=0.015)
    res, *_ = evaluate_predictions(predictions(300, 6, "val"), predictions(300, 7, "test"), ecfg)
    res.write(tmp_path / "m.json")
    text = json.dumps(build_blocks(EvaluationResult.read(tmp_path / "m.json"), {"roc", "pr", "reliability", "histogram"}))
    assert "95%" not in text
    for needle in ("(90% CI 0.", "slope (90% CI)", "intercept (90% CI)", "Wilson 90% CI",
                   "DeLong 90% CI per subgroup", "AUC (90% CI)", "bootstrap 90% band"):
        assert needle in text, needle


def test_frozen_external_evaluation_is_described_as_such(tmp_path):
    from fibrosis.evaluate.run import WarningLog, measure, stored_operating_points

    ecfg = EvaluateConfig(bootstrap_resamples=200)
    _, cal, threshold, _ = evaluate_predictions(predictions(300, 6, "val"), predictions(300, 7, "test"), ecfg)
    stored = stored_operating_points(cal.record(), threshold, "checkpoint")  # what evaluate --frozen applies
    res, cal2, thr2, _ = measure(stored, predictions(200, 8, "all"), ecfg, WarningLog())
    assert cal2.to_dict() == cal.to_dict() and thr2 == threshold and res.frozen is True
    assert res.operating_points[0].chosen_on.sensitivity == threshold.details["youden"].sensitivity
    res.write(tmp_path / "m.json")
    text = json.dumps(build_blocks(EvaluationResult.read(tmp_path / "m.json"), set()))
    assert "held-out all split" not in text
    assert "all images of the evaluated cache" in text and "frozen" in text


def test_pdf_is_the_html_and_text_stays_text(report, tmp_path):
    """The PDF is rendered from report.html: every heading and table cell of the HTML is in
    the PDF, in the same order; dollar signs and LaTeX-like text are printed as written."""
    import re
    from html import unescape

    html = (report / "report.html").read_text()
    pdf = " ".join(" ".join(pdf_pages(report / "report.pdf")).split())
    heads = [unescape(h) for h in re.findall(r"<h[123][^>]*>(.*?)</h[123]>", html)]
    assert len(heads) >= 10
    pos = [pdf.find(" ".join(h.split())) for h in heads]
    assert -1 not in pos and pos == sorted(pos), list(zip(heads, pos))
    # table cells wrap and interleave with their neighbours on paper: compare their words
    from collections import Counter
    cells = Counter(w for c in re.findall(r"<td>([^<]*)</td>", html) for w in unescape(c).split())
    assert len(cells) > 100 and not cells - Counter(pdf.split())

    from fibrosis.report.render import render_pdf
    tricky = "Manufacturer $5 and $10 \\alpha_{1} ^x <b>not bold</b> & more"
    page = render_html([{"type": "h1", "text": "t"}, {"type": "p", "text": tricky}], {}, "t")
    from PIL import ImageFile

    out = render_pdf(page, tmp_path / "t.pdf")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # WeasyPrint's import must not loosen the pixel path
    assert " ".join(" ".join(pdf_pages(out)).split()).count(" ".join(tricky.split())) == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_tune_section_shows_failed_arms_replication_and_the_adjusted_auc():
    from fibrosis.evaluate.tune_record import ArmScore, ReplicationCheck, SelectionAdjusted
    from fibrosis.report.sections.selection import tune_blocks
    from helpers.records import judged_arms, tune_arm, tune_result

    ref, random = judged_arms([{"name": "reference", "depth": 0, "lr_ratio": 1.0, "recipe": "reference"},
                               {"name": "random-init", "depth": 1, "lr_ratio": 1.0, "init": "random",
                                "failed": "r0-f2: constant held-out logits"}])
    arm = tune_arm(ref, describe="sklearn", score=ArmScore(0.70, 0.05, [0.6, 0.8], None),
                   repeat_aucs={"0": 0.70, "1": 0.68}, oof_sd=4.2, epoch=0, minutes=0.2)
    dead = tune_arm(random, describe="sklearn", repeat_aucs={"0": 0.70, "1": 0.68}, minutes=0.2)
    t = tune_result(arms=[arm, dead], reason="Chose 'reference': because.", n_dev_patients=290,
                    replication=[ReplicationCheck("last1", "reference", [0, 1], [0.72, 0.66], [0.70, 0.68],
                                                  [0.02, -0.02], holds=False, failed=False)],
                    selection_adjusted=SelectionAdjusted(0.64, 0.70, 0.06, 3, 2, "Tibshirani & Tibshirani 2009"))
    blocks = tune_blocks(t)
    table = next(b for b in blocks if b["type"] == "table")
    assert table["rows"][0][:4] == ["reference", "sklearn", "0.700 (0.600 to 0.800)", "the reference"]
    assert table["rows"][0][6] == "0.700, 0.680"
    assert table["rows"][1][2:4] == ["failed: r0-f2: constant held-out logits", "n/a"]  # no AUC from ties
    text = " ".join(b.get("text", "") for b in blocks)
    assert "hold the trained models fixed" in text and "not corrected for the number of arms" in text
    assert "Multiplicity: 2 arms were compared" in text
    assert "selection-adjusted estimate (Tibshirani & Tibshirani 2009) is 0.640" in text
    assert "0.720 vs 0.700, 0.660 vs 0.680 (not kept: the gain did not replicate)" in text
