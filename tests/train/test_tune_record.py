"""tune.json: one writer, one reader; a file from before the schema number is read as schema 0."""
from __future__ import annotations

import dataclasses
import json

import pytest

from fibrosis.artefacts import SchemaError
from fibrosis.evaluate.tune_record import TuneResult


def _result() -> TuneResult:
    names = [f.name for f in dataclasses.fields(TuneResult)]
    values = {n: 0 for n in names} | {
        "arms": [{"name": "reference", "auc": 0.65, "ci": [0.55, 0.75]}, {"name": "broken", "auc": None}],
        "chosen": "reference", "reason": "Chose 'reference'.", "warnings": [], "replication": [],
        "selection_adjusted": {"auc": 0.6}, "skipped_arms": {}, "aux": {}, "features": {}, "tune_config": {},
        "random_control": None, "level": 0.95}
    return TuneResult(**values)


def test_round_trip_with_the_schema_number_first(tmp_path):
    path = tmp_path / "tune.json"
    _result().write(path)
    data = json.loads(path.read_text())
    assert list(data)[0] == "schema" and data["schema"] == 1 and data["arms"][1]["auc"] is None
    assert TuneResult.read(path) == _result()


def test_an_unversioned_file_migrates_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "tune.json"
    _result().write(path)
    data = json.loads(path.read_text())
    del data["schema"]
    path.write_text(json.dumps(data))
    assert TuneResult.read(path) == _result()
    path.write_text(json.dumps({**data, "schema": 7}))
    with pytest.raises(SchemaError, match=r"tune.json: schema 7; this version of fibrosis reads schema 0 to 1"):
        TuneResult.read(path)
    path.write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(ValueError, match=r"tune.json: tune.json with unknown keys \['surprise'\]"):
        TuneResult.read(path)
