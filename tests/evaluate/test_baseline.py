"""Baseline characteristics: counts, age quartiles and missing values on hand-checkable rows."""
from __future__ import annotations

import pytest

from fibrosis.evaluate.baseline import (AgeSummary, BaselineAttribute, BaselineColumn, BaselineLevel, BaselineTable,
                                        baseline_table)
from helpers.manifest import row


def _row(split, label, age, sex, view="PA", maker="ACME", key=None):
    return row(split=split, label=label, age=age, sex=sex, view_position=view, manufacturer=maker,
               patient_key=key or f"{split}{age}{sex}")


ROWS = [_row("train", "1", "60", "F", key="p1"), _row("train", "0", "070Y", "M", key="p1"),
        _row("test", "1", "50", "F"), _row("test", "0", "", "m", view="AP"),
        _row("test", "0", "30", "", maker=""), _row("val", "0", "40", "F")]


def test_columns_counts_and_age_by_split_and_label():
    b = baseline_table(ROWS, "test")
    assert [(c.name, c.by, c.n, c.n_patients) for c in b.columns] == [
        ("train", "split", 2, 1), ("val", "split", 1, 1), ("test", "split", 3, 3),
        ("fibrosis", "label", 1, 1), ("no fibrosis", "label", 2, 2)]
    assert b.columns[3].within == "test" and b.columns[0].within is None
    train, _, test, pos, neg = b.age
    assert train == AgeSummary(median=65.0, q1=62.5, q3=67.5, missing=0)
    assert (test.median, test.missing) == (40.0, 1)  # 50 and 30; one blank
    assert pos.median == 50.0 and (neg.median, neg.missing) == (30.0, 1)


def test_categories_are_normalised_and_missing_counted():
    cats = {c.attribute: [lv.to_json() for lv in c.levels] for c in baseline_table(ROWS, "test").categorical}
    assert cats["sex"] == [{"value": "F", "counts": [1, 1, 1, 1, 0]}, {"value": "M", "counts": [1, 0, 1, 0, 1]},
                           {"value": "missing", "counts": [0, 0, 1, 0, 1]}]
    assert cats["view_position"] == [{"value": "PA", "counts": [2, 1, 2, 1, 1]},
                                     {"value": "AP", "counts": [0, 0, 1, 0, 1]}]
    assert cats["manufacturer"][-1] == {"value": "missing", "counts": [0, 0, 1, 0, 1]}


def test_rare_values_pool_as_other_and_all_means_every_row():
    rows = [_row("x", "1", "50", "F", maker=m) for m in "ABBCC"]
    b = baseline_table(rows, "all", max_levels=2)
    levels = next(c.levels for c in b.categorical if c.attribute == "manufacturer")
    assert levels == [BaselineLevel("B", [2, 2, 0]), BaselineLevel("C", [2, 2, 0]), BaselineLevel("other (1 value)", [1, 1, 0])]
    assert b.age[2] == AgeSummary(None, None, None, 0)


TABLE = {"columns": [{"name": "test", "by": "split", "n": 2, "n_patients": 2},
                     {"name": "fibrosis", "by": "label", "within": "test", "n": 1, "n_patients": 1}],
         "age": [{"median": 55.0, "q1": 52.5, "q3": 57.5, "missing": 0},
                 {"median": None, "q1": None, "q3": None, "missing": 1}],
         "categorical": [{"attribute": "sex", "levels": [{"value": "F", "counts": [2, 1]}]}]}


def test_table_json_is_the_file_layout_and_reads_back():
    table = BaselineTable([BaselineColumn("test", "split", 2, 2), BaselineColumn("fibrosis", "label", 1, 1, "test")],
                          [AgeSummary(55.0, 52.5, 57.5, 0), AgeSummary(None, None, None, 1)],
                          [BaselineAttribute("sex", [BaselineLevel("F", [2, 1])])])
    assert table.to_json() == TABLE
    assert list(table.to_json()["columns"][1]) == ["name", "by", "within", "n", "n_patients"]
    assert BaselineTable.from_json(TABLE, "metrics.json: baseline") == table
    with pytest.raises(ValueError, match=r"metrics.json: baseline.age\[1\]: without \['missing'\]"):
        BaselineTable.from_json({**TABLE, "age": [TABLE["age"][0], {"median": None, "q1": None, "q3": None}]},
                                "metrics.json: baseline")
