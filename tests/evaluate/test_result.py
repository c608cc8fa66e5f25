"""metrics.json: one writer, one reader, and what the reader refuses."""
from __future__ import annotations

import dataclasses
import json

import pytest
from helpers.runs import predictions

from fibrosis.artefacts import SchemaError
from fibrosis.config import EvaluateConfig
from fibrosis.evaluate.result import EvaluationResult, GradcamCase, GradcamSummary
from fibrosis.evaluate.run import evaluate_predictions


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    res, *_ = evaluate_predictions(predictions(120, 1, "val"), predictions(120, 2, "test"),
                                   EvaluateConfig(bootstrap_resamples=50))
    return res


def test_round_trip_is_exact_and_keeps_the_file_layout(result, tmp_path):
    path = tmp_path / "metrics.json"
    result.write(path)
    data = json.loads(path.read_text())
    assert list(data)[:3] == ["format", "split", "fit_split"] and data["format"] == 2
    assert "gradcam" not in data  # no panels: no key, as before the record
    assert data["decision_curve"]["evaluated"]["model"] and data["baseline"] is None  # no manifest rows here
    assert data["run"] == {} and list(data)[-2:] == ["baseline", "decision_curve"]
    back = EvaluationResult.read(path)
    assert back == result and back.auc == result.discrimination.auc and back.schema == 2
    assert json.dumps(back.to_json()) == json.dumps(data)  # the same bytes when written again


def test_schema_1_is_migrated_with_the_new_sections_absent(result, tmp_path):
    path = tmp_path / "metrics.json"
    result.write(path)
    _rewrite(path, format=1, baseline=None, decision_curve=None)
    old = EvaluationResult.read(path)
    assert old.schema == 1 and old.baseline is None and old.decision_curve is None
    assert old.discrimination == result.discrimination
    _rewrite(path, decision_curve={"thresholds": []})  # schema 1 never had it: a hand-edited file
    with pytest.raises(ValueError, match=r"metrics.json of schema 1 with \['decision_curve'\], which only schema 2"):
        EvaluationResult.read(path)


def _rewrite(path, **change):
    data = json.loads(path.read_text())
    data.update(change)
    for k in [k for k, v in change.items() if v is None]:
        del data[k]
    path.write_text(json.dumps(data))


def test_newer_missing_or_unknown_is_refused_naming_the_file(result, tmp_path):
    path = tmp_path / "metrics.json"
    result.write(path)
    _rewrite(path, format=3)
    with pytest.raises(SchemaError, match=r"metrics.json: schema 3; this version of fibrosis reads schema 1 to 2; "
                                          r"it was written by a newer version"):
        EvaluationResult.read(path)
    _rewrite(path, format=2, discrimination=None, extra=1)
    with pytest.raises(ValueError, match=r"metrics.json: metrics.json without \['discrimination'\]; "
                                         r"with unknown keys \['extra'\]"):
        EvaluationResult.read(path)
    _rewrite(path, format=None)
    with pytest.raises(SchemaError, match="schema None"):
        EvaluationResult.read(path)


def test_a_bad_section_is_refused_naming_the_file_and_key(result, tmp_path):
    path = tmp_path / "metrics.json"
    result.write(path)
    data = json.loads(path.read_text())
    data["operating_points"][1]["sensitivity"] = {"value": 0.5}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"metrics.json: operating_points\[1\].sensitivity: without \['ci', 'k', 'n'\]"):
        EvaluationResult.read(path)
    data["operating_points"] = {"youden": 0.3}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"metrics.json: operating_points: dict .*; expected a JSON array"):
        EvaluationResult.read(path)


GRADCAM = {"image": "gradcam.png", "threshold": 0.25, "layer": "features.18", "method": "Grad-CAM",
           "cases": [{"kind": "TP", "prob": 0.75, "label": 1}], "missing_kinds": ["FN"]}


def test_gradcam_json_is_the_file_layout_and_reads_back(result, tmp_path):
    g = GradcamSummary("gradcam.png", 0.25, "features.18", "Grad-CAM", [GradcamCase("TP", 0.75, 1)], ["FN"])
    assert g.to_json() == GRADCAM and GradcamSummary.from_json(GRADCAM, "metrics.json: gradcam") == g
    path = tmp_path / "metrics.json"
    with_panels = dataclasses.replace(result, gradcam=g)
    with_panels.write(path)
    data = json.loads(path.read_text())
    assert data["gradcam"] == GRADCAM and list(data).index("gradcam") == list(data).index("run") + 1
    assert EvaluationResult.read(path) == with_panels
