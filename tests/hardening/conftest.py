"""Fixtures of the hardening tests: small pools with known contents."""
from __future__ import annotations

from pathlib import Path

import pytest

from forge import make_pool


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    """A closed sim pool: thin 1 (three mapped blocks), thin 2 its snapshot
    with one block rewritten, thin 3 empty."""
    return make_pool(tmp_path / "pool")
