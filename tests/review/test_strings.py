"""The compact columns of the worklist: strings in one buffer, keys found by binary search."""
from __future__ import annotations

import pytest

from fibrosis.review.strings import KeyIndex, Strings


def test_strings_read_back_as_written():
    s = Strings(["a.dcm", "", "Doe^Jane/ü.png"])
    s.append("last")
    assert [s[i] for i in range(4)] == ["a.dcm", "", "Doe^Jane/ü.png", "last"] and s[-1] == "last"
    assert len(s) == 4 and s.nbytes() == len("a.dcmDoe^Jane/ü.pnglast".encode()) + 4 * 8
    with pytest.raises(IndexError, match="row 4; the column has 4 rows"):
        s[4]


def test_keys_are_found_by_binary_search():
    keys = Strings(["ffff000011112222", "0000aaaabbbbcccc", "7777777777777777"])
    index = KeyIndex(keys, 16)
    assert [index.get(keys[i]) for i in range(3)] == [0, 1, 2] and index["7777777777777777"] == 2
    for missing in ("0000aaaabbbbccc", "0000aaaabbbbcccc0", "", "ü" * 16, "1234567890abcdef"):
        assert index.get(missing) is None and missing not in index
    with pytest.raises(ValueError, match="expected 16 ASCII characters each"):
        KeyIndex(Strings(["short"]), 16)
