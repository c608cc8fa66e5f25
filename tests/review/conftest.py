"""One scored folder for the review tests (scoring takes seconds; the tests only read it)."""
from __future__ import annotations

import pytest

from helpers.review import scored_folder


@pytest.fixture(scope="session")
def scored(tmp_path_factory):
    return scored_folder(tmp_path_factory.mktemp("review"))
