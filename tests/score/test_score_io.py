"""Score files: torn-line repair, resume checks, rank merge, per-study aggregate."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fibrosis.score import output as IO
from helpers.scores import score_row, write_scores


def paths(path: Path) -> list[str]:
    return [r["path"] for r in IO.iter_rows(path)]


def test_resume_cuts_torn_line_and_lists_done(tmp_path):
    f = write_scores(tmp_path / "s.csv", [score_row("/a", content_hash="h1"), score_row("/b, with comma")])
    with open(f, "a") as fh:
        fh.write("/c,ok,1.2.3")  # killed mid-row
    assert IO.open_for_resume(f, "m1") == {"/a": "h1", "/b, with comma": ""}  # path -> content hash
    assert f.read_text().endswith("\n") and paths(f) == ["/a", "/b, with comma"]
    assert IO.open_for_resume(tmp_path / "absent.csv", "m1") == {}


def test_resume_refuses_other_model_and_foreign_file(tmp_path):
    f = write_scores(tmp_path / "s.csv", [score_row("/a")])
    with pytest.raises(ValueError, match="model_id='m1'.*'m2'"):
        IO.open_for_resume(f, "m2")
    g = tmp_path / "g.csv"
    g.write_text("image,score\nx,1\n")
    with pytest.raises(ValueError, match="columns"):
        IO.open_for_resume(g, "m1")


def test_merge_parts_sorted_deduplicated_and_cleaned(tmp_path):
    out = write_scores(tmp_path / "out.csv", [score_row("/a"), score_row("/d")])  # from an earlier run
    p0 = write_scores(tmp_path / "out.csv.rank0", [score_row("/b"), score_row("/e")])
    p1 = write_scores(tmp_path / "out.csv.rank1", [score_row("/c"), score_row("/d")])  # /d: killed before clean-up
    assert IO.merge_parts(out, [p0, p1]) == 5
    assert paths(out) == ["/a", "/b", "/c", "/d", "/e"] and not p0.exists() and not p1.exists()
    with open(out, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == IO.COLUMNS


def test_sort_in_place(tmp_path):
    f = write_scores(tmp_path / "s.csv", [score_row("/b"), score_row("/a"), score_row("/c")])
    assert not IO.is_sorted(f)
    IO.sort_in_place(f)
    assert IO.is_sorted(f) and paths(f) == ["/a", "/b", "/c"]


def test_study_aggregate_frontal_ok_only(tmp_path):
    f = write_scores(tmp_path / "s.csv", [
        score_row("/1", probability_calibrated="0.30", decision_fibrosis="0"),
        score_row("/2", probability_calibrated="0.60", decision_fibrosis="1", view_position="AP"),
        score_row("/3", probability_calibrated="0.90", decision_fibrosis="1",
                  view_position="RLO"),  # oblique: not frontal
        score_row("/4", status="excluded", reason="lateral", probability_calibrated="", decision_fibrosis="",
                  study_uid=""),
        score_row("/5", study_uid="S2", probability_calibrated="0.20", decision_fibrosis="0",
                  view_position=""),  # view unknown
        score_row("/6", study_uid="S3", view_position="LLO", probability_calibrated="0.7"),
    ])
    s = {r.study_uid: r.to_csv() for r in IO.study_rows(f, "max")}
    assert set(s) == {"S1", "S2", "S3"}
    assert (s["S1"]["n_images"], s["S1"]["n_ok"], s["S1"]["probability_calibrated"], s["S1"]["decision_fibrosis"]) == (2, 3, "0.600000", 1)
    assert s["S2"]["probability_calibrated"] == "0.200000" and s["S2"]["decision_fibrosis"] == 0
    assert s["S3"]["n_images"] == 0 and s["S3"]["probability_calibrated"] == "" and s["S3"]["decision_fibrosis"] == ""
    mean = {r.study_uid: r.to_csv() for r in IO.study_rows(f, "mean")}
    assert mean["S1"]["probability_calibrated"] == "0.450000" and mean["S1"]["decision_fibrosis"] == 1  # 0.45 >= 0.4
    with pytest.raises(ValueError, match="'median'.*allowed"):
        IO.study_rows(f, "median")


def test_discover_inputs_counts_hidden_files_and_leaves_out_our_own_outputs(tmp_path, unlistable):

    d = tmp_path / "in"
    (d / ".snap").mkdir(parents=True)
    (d / "cams").mkdir()
    (d / "locked").mkdir()
    for name in (".IM0001", ".snap/IM0002", "a.dcm", "cams/a.png", "salt.key", "scores.csv",
                 "scores.studies.csv", "scores.csv.rank1", ".scores.csv.tmp42", ".scores.studies.csv.tmp7",
                 "other.csv.rank1"):
        (d / name).write_text("x")
    unlistable.add(str(d / "locked"))
    got = IO.discover_inputs(d, d / "scores.csv", d / "cams", d / "salt.key")
    assert [(Path(p).relative_to(d).as_posix(), e) for p, e in got] == [
        (".IM0001", ""), (".snap/IM0002", ""), ("a.dcm", ""), ("locked", "cannot list folder: Permission denied"),
        ("other.csv.rank1", "")]


def test_study_aggregate_groups_studies_spread_over_the_file_and_streams(tmp_path, caplog):
    """Rows are sorted by path, not study: a study's images may be anywhere in the file. The
    studies come out sorted by UID, each exactly once, with their patient keys, and the
    written file holds one row per study."""
    f = write_scores(tmp_path / "s.csv", [
        score_row("/a", study_uid="S9", probability_calibrated="0.10", decision_fibrosis="0", patient_key="k2"),
        score_row("/b", study_uid="S1", probability_calibrated="0.80", decision_fibrosis="1"),
        score_row("/c", study_uid="S9", probability_calibrated="0.90", decision_fibrosis="1", patient_key="k1"),
        score_row("/d", study_uid="S1", probability_calibrated="0.20", decision_fibrosis="0"),
    ])
    out = [r.to_csv() for r in IO.study_rows(f, "mean")]
    assert [r["study_uid"] for r in out] == ["S1", "S9"]
    assert out[0]["probability_calibrated"] == "0.500000" and out[0]["n_images"] == 2
    assert out[1]["patient_key"] == "k1|k2" and out[1]["probability_calibrated"] == "0.500000" and out[1]["decision_fibrosis"] == 1
    assert "study S9: images carry 2 different patient keys" in caplog.text
    assert IO.write_studies(f, tmp_path / "st.csv", "max") == 2
    with open(tmp_path / "st.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["study_uid"], r["probability_calibrated"], r["decision_fibrosis"]) for r in rows] == [("S1", "0.800000", "1"),
                                                                                ("S9", "0.900000", "1")]


def test_one_reader_migrates_an_earlier_scores_file_and_refuses_a_foreign_one(tmp_path):
    """iter_score_rows is what monitor, review and review's reader summary read a scores file with."""
    from fibrosis.io import write_csv
    from fibrosis.score.output import COLUMNS, OLD_COLUMNS, iter_score_rows

    old = tmp_path / "old.csv"
    write_csv(old, [{"path": "/in/a.dcm", "status": "error: truncated file", "logit": "", "probability": "",
                     "decision": ""},
                    {"path": "/in/b.dcm", "status": "ok", "logit": "0.5", "probability": "0.6", "decision": "1"}],
              OLD_COLUMNS)
    rows = list(iter_score_rows(old))
    assert [tuple(r) for r in rows] == [COLUMNS, COLUMNS]
    assert (rows[0]["status"], rows[0]["reason"]) == ("error", "truncated file")
    assert (rows[1]["probability_calibrated"], rows[1]["decision_fibrosis"]) == ("0.6", "1")
    other = tmp_path / "other.csv"
    write_csv(other, [{"path": "a", "score": "1"}], ("path", "score"))
    with pytest.raises(ValueError, match=r"other.csv: columns \['path', 'score'\]; expected"):
        list(iter_score_rows(other))
