"""Artefact names and schema numbers: the one check every typed record's reader makes."""
from __future__ import annotations

import pytest

from fibrosis import artefacts
from fibrosis.artefacts import SchemaError, check_schema


def test_file_names_are_declared_once_and_distinct():
    names = {k: v for k, v in vars(artefacts).items() if k.isupper() and isinstance(v, str)}
    assert len(set(names.values())) == len(names)  # no two artefacts share a file name
    assert names["BEST"] == "best.pt" and names["MANIFEST"] == "manifest.csv"


@pytest.mark.parametrize("found, oldest, ok", [(2, None, True), (1, 1, True), (1, None, False), (3, None, False),
                                               (None, None, False), ("2", None, False), (True, None, False)])
def test_check_schema_on_hand_checkable_values(found, oldest, ok):
    if ok:
        assert check_schema("x.json", found, 2, oldest=oldest) == found
    else:
        with pytest.raises(SchemaError, match=r"^x\.json: schema .*; this version of fibrosis reads schema "):
            check_schema("x.json", found, 2, oldest=oldest)


def test_a_newer_schema_says_so():
    with pytest.raises(SchemaError, match=r"schema 3; this version of fibrosis reads schema 1 to 2; it was written by a "
                                          r"newer version$"):
        check_schema("x.json", 3, 2, oldest=1)
