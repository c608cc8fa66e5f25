"""Manifest rows from their cells, as a test writes them: ``row(patient_key="p1", label=1)``."""
from __future__ import annotations

from fibrosis.data.manifest import UNPLACED, ManifestRow


def row(**cells: object) -> ManifestRow:
    """A :class:`ManifestRow` read from these cells (each as its text, so ``label=1`` and
    ``label="1"`` are one row); a row without a shard and index is not placed in one."""
    text = {"shard": str(UNPLACED), "index": str(UNPLACED), **{k: "" if v is None else str(v) for k, v in cells.items()}}
    return ManifestRow.from_cells(text)


def rows(cells: list[dict[str, object]]) -> list[ManifestRow]:
    return [row(**c) for c in cells]
