"""Fixtures of the extfs tests: a formatted simulated thin device."""
import pytest

from extfs_helpers import new_device


@pytest.fixture
def device(tmp_path):
    """(pool, thin): a 64M thin device with a fresh ext4 (Docker's mkfs)."""
    pool, thin = new_device(tmp_path)
    yield pool, thin
    pool.close()
