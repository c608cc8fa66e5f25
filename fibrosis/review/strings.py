"""Columns of strings as one UTF-8 buffer and its end offsets: 100,000 paths cost their bytes plus
8 bytes each, where a list of ``str`` objects costs about 60 bytes more per row (and a dict of them,
for lookups, as much again)."""
from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np


class Strings:
    """An append-only column of strings, indexable like a list."""

    def __init__(self, values: Iterable[str] = ()):
        self._blob = bytearray()
        self._ends = array("q")
        for v in values:
            self.append(v)

    def append(self, value: str) -> None:
        self._blob += value.encode("utf-8")
        self._ends.append(len(self._blob))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i}; the column has {len(self)} rows")
        i %= len(self)
        start = self._ends[i - 1] if i else 0
        return self._blob[start:self._ends[i]].decode("utf-8")

    def nbytes(self) -> int:
        return len(self._blob) + self._ends.itemsize * len(self._ends)


class KeyIndex:
    """Row of a fixed-width ASCII key (the worklist's 16-hex-digit keys) by binary search over the
    sorted keys: 24 bytes a row, where a dict of ``str`` keys costs over 100."""

    def __init__(self, keys: Strings, width: int):
        n = len(keys)
        blob = bytes(keys._blob)
        if len(blob) != n * width:
            raise ValueError(f"{n} keys in {len(blob)} bytes; expected {width} ASCII characters each")
        self._keys = np.frombuffer(blob, dtype=f"S{width}") if n else np.zeros(0, f"S{width}")
        self._order = np.argsort(self._keys, kind="stable")
        self._sorted = self._keys[self._order]

    def get(self, key: str) -> int | None:
        try:
            k = np.bytes_(key.encode("ascii"))
        except UnicodeEncodeError:
            return None
        pos = int(np.searchsorted(self._sorted, k))
        if pos < len(self._sorted) and self._sorted[pos] == k:
            return int(self._order[pos])
        return None

    def __getitem__(self, key: str) -> int:
        i = self.get(key)
        if i is None:
            raise KeyError(key)
        return i

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None
