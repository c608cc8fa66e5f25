"""docs/scores.md lists exactly the columns `fibrosis score` writes, in order, in each of its three
files: the data dictionary cannot drift from the writer."""
from __future__ import annotations

import re

import pytest

from helpers.paths import REPO
from fibrosis.score.output import COLUMNS, META_COLUMNS, OLD_COLUMNS, RENAMED, STATUSES, STUDY_COLUMNS

DOC = REPO / "docs" / "scores.md"


def _tables() -> dict[str, list[str]]:
    """File name -> the first cells of its table's rows (the column names)."""
    tables: dict[str, list[str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"## `([^`]+)`", line)
        if heading:
            current = heading.group(1)
            tables[current] = []
        elif current and (cell := re.match(r"\| `([^`]+)` \|", line)):
            tables[current].append(cell.group(1))
    return tables


@pytest.mark.parametrize("name, columns", [("scores.csv", COLUMNS), ("scores.studies.csv", STUDY_COLUMNS),
                                           ("scores.meta.csv", META_COLUMNS)])
def test_dictionary_lists_exactly_the_written_columns(name, columns):
    assert _tables()[name] == list(columns)


def test_dictionary_names_every_status_and_every_old_name():
    text = DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `status` |"))
    assert re.findall(r"`(\w+)`", row.split("|")[3]) == list(STATUSES)
    for old, new in RENAMED.items():
        assert f"`{old}` (now `{new}`)" in " ".join(text.split())
    assert set(OLD_COLUMNS) - set(RENAMED) < set(COLUMNS)  # the rest kept their names


def test_readme_points_to_the_dictionary():
    assert "docs/scores.md" in (REPO / "README.md").read_text()
