"""The reporting-checklist appendix and the study facts the team states (evaluate.data_*)."""
from __future__ import annotations

from fibrosis.config import EvaluateConfig
from fibrosis.evaluate.run import evaluate_predictions
from fibrosis.report.build import build_blocks
from fibrosis.report.sections.checklist import TRIPOD_AI
from helpers.runs import predictions


def _blocks(**stated: str) -> list[dict]:
    ecfg = EvaluateConfig(bootstrap_resamples=50, **stated)
    res, *_ = evaluate_predictions(predictions(120, 6, "val"), predictions(120, 7, "test"), ecfg)
    return build_blocks(res, set())


def _table(blocks: list[dict], caption: str) -> dict[str, list[str]]:
    table = next(b for b in blocks if b.get("caption") == caption)
    return {row[0]: row for row in table["rows"]}


def _kv(blocks: list[dict]) -> dict[str, str]:
    return dict(next(b for b in blocks if b["type"] == "kv" and any(k == "Dates" for k, _ in b["items"]))["items"])


def test_every_tripod_ai_item_has_a_row() -> None:
    numbers = [i.number for i in TRIPOD_AI]
    assert len(numbers) == len(set(numbers))
    assert {n.rstrip("abcdefg") for n in numbers} == {str(k) for k in range(1, 28)}


def test_unstated_study_facts_say_so_and_where_to_state_them() -> None:
    blocks = _blocks()
    rows = _table(blocks, "TRIPOD+AI (2024) and STARD 2015")
    assert rows["5b"][2:4] == ["not stated", "set evaluate.data_dates so the report states it"]
    assert rows["8b"][2] == "not stated"
    assert rows["17"][2] == "the study team"
    assert rows["6c"][2] == "not available from the data"
    assert rows["20a"][2] == "section 2" and rows["20a"][4] == "19"
    kv = _kv(blocks)
    assert kv["Dates"] == ("not stated (the cache keeps no acquisition dates; set evaluate.data_dates in the "
                           "configuration)")
    assert "not stated" in kv["Reference standard"]
    text = repr(blocks)
    assert "Reference standard not stated (evaluate.reference_standard)" in text
    assert "text-mined" not in text  # nothing about the NIH labels is assumed of a team's data


def test_stated_study_facts_reach_the_data_section_and_the_checklist() -> None:
    blocks = _blocks(data_setting="two district hospitals", data_dates="2019-01 to 2023-12",
                     reference_standard="two thoracic radiologists, consensus, blinded to the model")
    rows = _table(blocks, "TRIPOD+AI (2024) and STARD 2015")
    assert rows["5b"][2] == rows["6a"][2] == rows["8c"][2] == "section 2"
    kv = _kv(blocks)
    assert kv["Setting"] == "two district hospitals"
    assert kv["Dates"] == "2019-01 to 2023-12"
    assert kv["Reference standard"].endswith("two thoracic radiologists, consensus, blinded to the model")
    assert "Reference standard: two thoracic radiologists" in repr(blocks)


def test_claim_topics_point_at_their_sections() -> None:
    claim = _table(_blocks(), "CLAIM (2024), further topics")
    assert claim["Explainability and how it was checked"][1] == "section 7"
    assert claim["Annotation tools and inter-reader variability"][1] == "not available from the data"
