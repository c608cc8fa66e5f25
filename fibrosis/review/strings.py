"""A column of strings as one UTF-8 buffer and its offsets: 100,000 paths cost their bytes plus
8 bytes each, where a list of ``str`` objects costs about 50 bytes more per row."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class Strings:
    """Read-only, indexable like a list; built once from an iterable."""

    def __init__(self, values: Iterable[str]):
        parts = [v.encode("utf-8") for v in values]
        self._ends = np.cumsum([len(p) for p in parts], dtype=np.int64) if parts else np.zeros(0, np.int64)
        self._blob = b"".join(parts)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i}; the column has {len(self)} rows")
        i %= len(self)
        start = int(self._ends[i - 1]) if i else 0
        return self._blob[start:int(self._ends[i])].decode("utf-8")

    def nbytes(self) -> int:
        return len(self._blob) + self._ends.nbytes
