"""`fibrosis compare` takes any two evaluations on the same cases: internal (RUN/eval/test) or
external (`evaluate --frozen`: RUN/eval/frozen-<cache>-<split>), by run folder and name or by the
evaluation folder itself; different case sets are refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.asah_data import MARKERS, Y  # pROC aSAH reference data
from fibrosis.cli.main import main
from fibrosis.evaluate.compare import compare_runs, evaluation_folder
from fibrosis.io import write_csv

Z_WFNS_NDKA = 2.79777591868904  # pROC roc.test(r.wfns, r.ndka), paired DeLong


def _evaluation(folder: Path, marker: str, cases: range = range(len(Y))) -> Path:
    folder.mkdir(parents=True)
    rows = [{"content_hash": f"c{i}", "label": int(Y[i]), "logit": float(MARKERS[marker][i])} for i in cases]
    write_csv(folder / "predictions.csv", rows, ("content_hash", "label", "logit"))
    return folder


def test_two_frozen_evaluations_by_run_and_name(tmp_path):
    _evaluation(tmp_path / "a" / "eval" / "frozen-site2-all", "wfns")
    _evaluation(tmp_path / "b" / "eval" / "frozen-site2-all", "ndka")
    res = compare_runs(tmp_path / "a", tmp_path / "b", "frozen-site2-all")
    assert res.z == pytest.approx(Z_WFNS_NDKA, rel=1e-10)
    assert (res.run_a, res.run_b) == ("a/frozen-site2-all", "b/frozen-site2-all")
    assert json.loads((tmp_path / "a" / "eval" / "frozen-site2-all" / "compare_b.json").read_text())["n"] == len(Y)


def test_evaluation_folders_given_directly_and_names_that_differ(tmp_path, capsys):
    a = _evaluation(tmp_path / "a" / "eval" / "test", "wfns")
    b = _evaluation(tmp_path / "b" / "eval" / "frozen-site2-test", "ndka")
    out = tmp_path / "ab.json"
    assert main(["compare", "--run", str(a), "--run", str(b), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["z"] == pytest.approx(Z_WFNS_NDKA, rel=1e-10)
    # by run folder with a name each: A's, then B's
    assert main(["compare", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "b"),
                 "--split", "test", "--split", "frozen-site2-test"]) == 0
    assert (a / "compare_b_frozen-site2-test.json").is_file()
    assert "AUC a/test" in capsys.readouterr().err


def test_different_cases_are_refused(tmp_path, capsys):
    _evaluation(tmp_path / "a" / "eval" / "test", "wfns")
    _evaluation(tmp_path / "b" / "eval" / "test", "ndka", range(len(Y) - 3))
    assert main(["compare", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "a/test and b/test were evaluated on different cases: 3 only in a/test, 0 only in b/test" in err
    assert not (tmp_path / "a" / "eval" / "test" / "compare_b.json").exists()


def test_a_missing_evaluation_lists_the_runs_evaluations(tmp_path):
    _evaluation(tmp_path / "a" / "eval" / "frozen-site2-all", "wfns")
    with pytest.raises(FileNotFoundError, match=r"its evaluations: frozen-site2-all \(name one with --split\)"):
        evaluation_folder(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no evaluation there: run `fibrosis evaluate --run"):
        evaluation_folder(tmp_path / "nothing")
