"""`fibrosis review` in headless Chromium (Playwright driving Debian's chromium): open the worklist,
sort, filter, open a study, toggle the Grad-CAM overlay, label five studies with the keyboard,
restart the server, and find the labels file intact and readable by `monitor`. Skipped where no
browser is installed, FAILS in CI (helpers.review.chromium)."""
from __future__ import annotations

import json
import time

import pytest

from fibrosis import artefacts
from fibrosis.data.labels import load_labels
from fibrosis.io import read_csv, write_csv
from fibrosis.monitor.load import attach_labels, read_scores
from fibrosis.review.worklist import load_worklist
from helpers.review import N_STUDIES, PATIENT_ID, PATIENT_NAME, Server, chromium, sync_playwright

CALLS = {"p": "present", "a": "absent", "u": "uncertain"}


def column(page, n: int) -> list[str]:
    return page.locator(f"#worklist tbody tr td:nth-child({n})").all_inner_texts()


def wait_loaded(page, selector: str, seconds: float = 30) -> None:
    """Until the image has pixels (polled from here: page.wait_for_function evaluates a string,
    which the page's Content-Security-Policy rightly refuses)."""
    end = time.monotonic() + seconds
    while not page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0"):
        assert time.monotonic() < end, f"{selector} did not load"
        page.wait_for_timeout(50)


@pytest.fixture
def browser():
    with sync_playwright() as p:  # type: ignore[attr-defined]
        b = chromium(p)
        yield b
        b.close()


def test_review_in_a_browser(scored, tmp_path, browser):
    labels, truth = tmp_path / "reader_labels.csv", tmp_path / "truth.csv"
    write_csv(truth, [{"image": f"IM{i:04d}.dcm", "fibrosis": i % 2} for i in range(7)], ("image", "fibrosis"))
    args = ["--scores", str(scored.scores), "--run", str(scored.run), "--labels-out", str(labels), "--reader", "AB",
            "--truth", str(truth)]
    server = Server(args)
    problems: list[str] = []
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(server.url)
        assert len(column(page, 2)) == N_STUDIES + 2  # + the PNG export's and the unreadable file's

        # sort: probability, then descending
        page.click("th a[data-sort=probability]")
        page.click("th a[data-sort=probability]")
        probs = [float(p) for p in column(page, 6) if p]
        assert len(probs) == N_STUDIES and probs == sorted(probs, reverse=True)

        # filter: scored studies only
        page.select_option("select[name=status]", "ok")
        page.click("form.filters button")
        assert set(column(page, 5)) == {"ok"} and len(column(page, 5)) == N_STUDIES
        assert "sort=probability" in page.url and "desc=1" in page.url  # the order survives the filter

        # open the first study: the image as the model saw it, and the overlay on and off
        page.click("#worklist tbody tr:first-child a.open")
        page.wait_for_selector("#base")
        wait_loaded(page, "#base")
        assert page.is_hidden("#heat")
        page.keyboard.press("o")
        wait_loaded(page, "#heat")
        assert page.is_visible("#heat") and page.get_attribute("#overlay-toggle", "aria-pressed") == "true"
        page.click("#overlay-toggle")
        assert page.is_hidden("#heat")
        page.keyboard.press("+")
        assert "scale(1.25)" in page.eval_on_selector("#zoom", "z => z.style.transform")

        # label five studies with the keyboard: each label saves and moves on to the next study
        done = []
        for key in "paupa":
            current = page.get_attribute("body", "data-key")
            with page.expect_navigation():
                page.keyboard.press(key)
            done.append((current, CALLS[key]))
            assert page.get_attribute("body", "data-key") != current
        assert len({k for k, _ in done}) == 5
    finally:
        server.stop()
    first_log = server.log

    # on stop, the reader against the model for the report, in the model's run folder
    reader = json.loads((scored.run / artefacts.READER_DIR / artefacts.READER_VS_MODEL).read_text())
    assert reader["scores"] == "scores.csv" and reader["n_cases"] >= 5 and reader["against_truth"]["n"] >= 4
    rows = read_csv(labels)
    assert [(r["reader_call"], r["reader"], r["level"]) for r in rows] == [(c, "AB", "study") for _, c in done]

    server = Server(args)  # a restart resumes the same file
    try:
        page.goto(server.url + "?status=ok&unread=1")
        assert len(column(page, 2)) == N_STUDIES - 5
        page.goto(server.url)
        assert "5 studies labelled" in page.inner_text("p.counts")
        assert sorted(c for c in column(page, 8) if c) == sorted(f"{c} (AB)" for _, c in done)
    finally:
        server.stop()
    assert not problems, problems  # no script error, no CSP violation

    # the file is intact and `ingest --labels` / `monitor --labels` read it as it is
    assert read_csv(labels) == rows
    load_labels(labels, "fibrosis")
    wl = load_worklist(scored.scores)
    scores = read_scores(scored.scores, wl.model_id)
    ok_images = [i for k, c in done if c != "uncertain" for i in wl.studies.images(wl.study_table.index[k])
                 if wl.image_table.status[i] == 0]
    assert attach_labels(scores, labels, "fibrosis") == len(ok_images) > 0
    assert "GET /view/study/" in first_log and "POST /label 200" in first_log  # requests are logged ...
    assert "review: stopped; 5 reader label(s)" in server.log and "ERROR" not in server.log
    for text in (first_log, server.log):  # ... without identifiers
        assert PATIENT_ID not in text and PATIENT_NAME not in text
        assert str(scored.inputs) not in text and not any(u in text for u in scored.study_uids)
