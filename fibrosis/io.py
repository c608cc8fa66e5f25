"""Core file I/O shared by every stage: atomic writes, CSV, JSON, sha256, package versions.

Atomic (temp file + fsync + rename) because every output of this tool may be read
by a later stage while a run is killed half-way: a file either exists whole or not.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> int:
    """Write rows atomically; missing keys become empty cells, extra keys are an error.
    Rows are streamed to the temporary file (``rows`` may be a generator): a manifest of a
    million rows is never also held as one string. Returns the number of rows written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return n


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(iter_csv(path))


def iter_csv(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a CSV one at a time (a manifest of a million rows is never a list)."""
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, default=_json_default, allow_nan=False)
    atomic_write_bytes(path, text.encode("utf-8"))


PACKAGES = ("fibrosis", "torch", "torchvision", "monai", "numpy", "scipy", "scikit-learn",
            "pydicom", "albumentations", "opencv-python-headless", "matplotlib")


def package_versions() -> dict[str, str]:
    # imported here: importlib.metadata (email, zipfile...) is ~20 ms of every command that
    # touches the cache, half of a no-op re-split, and only checkpoints and reports need it
    import importlib.metadata

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
