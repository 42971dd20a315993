"""Fixtures of the real-client tests (Docker's daemon, LVM2): see
client_fixtures.py.  Every test module here carries
``pytestmark = [pytest.mark.real_dm, pytest.mark.clients]``."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client_fixtures import *  # noqa: F403 - the fixtures of the real clients


def pytest_configure(config: pytest.Config) -> None:
    """Register the clients marker."""
    config.addinivalue_line(
        "markers", "clients: runs Docker's daemon or LVM2 in the qemu guest (tests/clients)")
