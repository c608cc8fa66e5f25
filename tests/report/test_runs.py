"""`fibrosis runs`: the rows found under a folder of runs (values, order, unreadable folders) and the
page drawn from them (escaped names, relative links that resolve, nothing fetched)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from helpers.runs import (AUC, LABELS, LOGITS, hand_evaluation, make_tune_run, save_run_checkpoint,
                          write_evaluation)

from fibrosis.evaluate.metrics import auc_delong
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.report.build import write_report
from fibrosis.report.format import span
from fibrosis.report.runs import find_runs, scan_runs
from fibrosis.report.runs_page import write_runs_index
from fibrosis.evaluate.tune_record import TuneResult

ODD = "group & <b>"  # a folder name the page must escape


def _utc(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, day, hour, tzinfo=dt.timezone.utc)


def _touch(path: Path, when: dt.datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Five runs under runs/: a train run evaluated on its test split (with a report) and on an
    external cache (frozen), a tune run evaluated, one not evaluated, one whose metrics.json has a
    newer schema, one whose checkpoint is not a checkpoint; dates one day apart."""
    tmp = tmp_path_factory.mktemp("runs-index")
    root = tmp / "runs"
    result, cases = hand_evaluation()

    alpha = root / ODD / "alpha"
    save_run_checkpoint(alpha, manifest_hash="ab" * 32)
    write_evaluation(alpha, result, created="2026-12-05T10:00:00+00:00")
    write_evaluation(alpha, result, "frozen-site2-all", created="2026-12-06T09:00:00+00:00", split="all", frozen=True)
    write_report(alpha, tmp / "reports" / "alpha", split="test")

    tuned = make_tune_run(tmp)  # tmp/runs/tuned
    save_run_checkpoint(tuned)
    metrics = tuned / "eval" / "test" / "metrics.json"
    dataclasses.replace(EvaluationResult.read(metrics), created="2026-12-07T12:00:00+00:00").write(metrics)
    unit = tuned / "cv" / "last1" / "r0-f0" / "run"  # a fold unit of the tune: not a run of its own
    unit.mkdir(parents=True)
    (unit / "best.pt").write_bytes(b"a fold model")

    fresh = root / "fresh"
    save_run_checkpoint(fresh, arch="mobilenet_v2", pretrained=False, input_size=128, manifest_hash="cd" * 32)
    _touch(fresh / "best.pt", _utc(4))

    broken = root / "broken"
    save_run_checkpoint(broken)
    (broken / "eval" / "test").mkdir(parents=True)
    (broken / "eval" / "test" / "metrics.json").write_text('{"format": 99}')
    _touch(broken / "eval" / "test" / "metrics.json", _utc(3))

    bad = root / "badckpt"
    bad.mkdir()
    (bad / "best.pt").write_bytes(b"not a checkpoint")
    _touch(bad / "best.pt", _utc(2))
    prob = np.array([c["prob"] for c in cases])
    return {"tmp": tmp, "root": root, "alpha": alpha, "tuned": tuned, "brier": float(np.mean((prob - LABELS) ** 2))}


def test_runs_are_found_at_any_depth_outermost_only(work):
    assert [p.relative_to(work["root"]).as_posix() for p in find_runs(work["root"])] == [
        "badckpt", "broken", "fresh", f"{ODD}/alpha", "tuned"]


def test_rows_newest_first_with_counts(work):
    index = scan_runs(work["root"], [work["tmp"] / "reports"])
    assert [(r.run, r.evaluation) for r in index.rows] == [
        ("tuned", "test"), (f"{ODD}/alpha", "frozen-site2-all"), (f"{ODD}/alpha", "test"), ("fresh", None),
        ("broken", "test"), ("badckpt", None)]
    assert [r.when for r in index.rows[1:]] == [_utc(6, 9), _utc(5, 10), _utc(4), _utc(3), _utc(2)]
    assert (index.n_runs, index.n_evaluations, index.n_unreadable) == (5, 3, 2)


@pytest.mark.filterwarnings("ignore:AUC. only 4 positives")  # the hand-counted split is tiny on purpose
def test_an_evaluation_row_holds_its_numbers_and_its_report(work):
    rows = {(r.run, r.evaluation): r for r in scan_runs(work["root"], [work["tmp"] / "reports"]).rows}
    row = rows[(f"{ODD}/alpha", "test")]
    assert row.auc == AUC and (row.n, row.n_pos) == (8, 4) and row.split == "test" and not row.frozen
    assert row.auc_ci == pytest.approx(tuple(auc_delong(np.array(LABELS), np.array(LOGITS), 0.95)["ci"]))
    assert row.ci_level == 0.95 and row.calibration == "platt"
    assert row.brier == pytest.approx(work["brier"])  # after calibration, not before
    assert 0 <= row.ece <= 1
    assert row.manifest_sha256 == "ab" * 32 and row.cache is None
    assert row.model is not None and (row.model.arch, row.model.input_size, row.model.weights, row.model.pretrained,
                                      row.model.tune_arm) == ("resnet18", 224, "resnet18-f37072fd.pth", True, None)
    assert row.report == work["tmp"] / "reports" / "alpha" / "report.html"
    frozen = rows[(f"{ODD}/alpha", "frozen-site2-all")]
    assert (frozen.split, frozen.frozen, frozen.cache, frozen.report) == ("all", True, "site2", None)
    assert frozen.report_command == f"fibrosis report --run '{work['alpha']}' --split frozen-site2-all"  # a shell word


def test_a_tune_run_names_its_arm_and_unit_folders_are_not_runs(work):
    rows = [r for r in scan_runs(work["root"]).rows if r.run.startswith("tuned")]
    assert len(rows) == 1
    assert rows[0].model is not None
    assert rows[0].model.tune_arm == TuneResult.read(work["tuned"] / "tune.json").chosen != ""
    assert rows[0].report is None  # no report folder searched, none under the runs


def test_a_run_not_evaluated_is_described_by_its_checkpoint(work):
    row = next(r for r in scan_runs(work["root"]).rows if r.run == "fresh")
    assert row.evaluation is None and row.problem is None and row.auc is None
    assert row.model is not None and (row.model.arch, row.model.input_size, row.model.weights,
                                      row.model.pretrained) == ("mobilenet_v2", 128, "none", False)
    assert row.manifest_sha256 == "cd" * 32


def test_unreadable_folders_are_rows_with_the_reason(work):
    rows = {r.run: r for r in scan_runs(work["root"]).rows}
    metrics = work["root"] / "broken" / "eval" / "test" / "metrics.json"
    assert rows["broken"].problem == (f"{metrics}: schema 99; this version of fibrosis reads schema 1 to 2; "
                                      "it was written by a newer version")
    assert rows["badckpt"].problem.startswith(f"{work['root'] / 'badckpt' / 'best.pt'}: not a loadable fibrosis "
                                              "checkpoint")
    assert all("\n" not in r.problem for r in rows.values() if r.problem)


def test_a_missing_folder_is_an_error():
    with pytest.raises(FileNotFoundError, match="no-such: no such folder"):
        scan_runs(Path("no-such"))


def test_the_page_escapes_names_links_reports_relatively_and_fetches_nothing(work):
    page, index = write_runs_index(work["root"], work["tmp"] / "site" / "index.html", [work["tmp"] / "reports"])
    text = page.read_text()
    assert ODD not in text and "group &amp; &lt;b&gt;/alpha" in text
    hrefs = re.findall(r'href="([^"]*)"', text)
    assert hrefs == ["../reports/alpha/report.html"]
    assert all((page.parent / urllib.parse.unquote(h)).is_file() for h in hrefs)
    ci = span(index.rows[2].auc_ci, "auc")
    assert f"0.875 (95% CI {ci})" in text
    assert "5 runs under" in text and "3 evaluations; 1 not evaluated; 2 could not be read" in text
    assert "no report yet: fibrosis report --run" in text and "--split frozen-site2-all" in text
    assert "all (8 images, 4 positive); external (frozen)" in text and "cache site2, manifest abababababab" in text
    assert "not evaluated" in text and "<caption>Could not be read</caption>" in text
    assert "schema 99; this version of fibrosis reads schema 1 to 2" in text and "not a loadable fibrosis" in text
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)


def test_the_default_page_sits_in_the_scanned_folder(work, tmp_path):
    page, _ = write_runs_index(work["root"] / "fresh")
    assert page == work["root"] / "fresh" / "index.html" and "mobilenet_v2, 128 px" in page.read_text()
    page.unlink()


def test_the_units_of_a_tune_still_running_are_not_runs(tmp_path):
    tune = tmp_path / "tuning"  # tune_state.json written, best.pt not yet
    unit = tune / "cv" / "last1" / "r0-f0" / "run"
    unit.mkdir(parents=True)
    (tune / "tune_state.json").write_text("{}")
    (unit / "best.pt").write_bytes(b"a fold model")
    assert find_runs(tmp_path) == []
