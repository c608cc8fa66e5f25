"""Where the repository, its bundled demo data and the read-only ../shared folder are."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
SHARED = REPO.parent / "shared"
