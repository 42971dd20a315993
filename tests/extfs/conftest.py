"""Fixtures of the extfs tests: a formatted simulated thin device."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from extfs_helpers import new_device


@pytest.fixture
def device(tmp_path):
    """(pool, thin): a 64M thin device with a fresh ext4 (Docker's mkfs)."""
    pool, thin = new_device(tmp_path)
    yield pool, thin
    pool.close()
