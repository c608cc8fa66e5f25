"""Shared fixtures. Shared code lives in the ``tests/helpers`` package (``from helpers.dicom_factory
import make_dicom``); test modules never import each other."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `helpers` importable from every test folder

from fibrosis.config import IngestConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture
def small_cfg() -> IngestConfig:
    """Tiny cache images and no size floor, so hand-sized arrays pass policy; ramps and
    random arrays are not chests, so the polarity QA only notes them (tests of the QA
    policy itself set it)."""
    return IngestConfig(image_size=64, min_side=1, shard_size=4, polarity_qa="keep")


@pytest.fixture
def shared_data() -> Path:
    """``<repo>/../shared/data``; the test is skipped when it is not there."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def unlistable(monkeypatch):
    """The set of folders that fail to list (PermissionError), as chmod 000 would for a
    non-root user; chmod does not stop root, so the listing call itself is made to fail.
    ``unlistable.add(folder)`` blocks one, ``unlistable.discard(folder)`` unblocks it."""
    import os

    blocked: set[str] = set()
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return blocked
