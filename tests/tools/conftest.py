"""Fixtures of the thin-provisioning-tools mirror tests: the reference tools."""
from __future__ import annotations

import pytest

import helpers
from toolgen import THIN


@pytest.fixture(scope="session")
def pdata_tools() -> str:
    """Path of thin-provisioning-tools 1.1.0's pdata_tools."""
    try:
        return helpers.pdata_tools_110()
    except helpers.Unavailable as e:
        helpers.skip_or_fail(f"thin-provisioning-tools 1.1.0 unavailable: {e}")


@pytest.fixture(scope="session")
def tools090() -> dict[str, str]:
    """{name: path} of the installed 0.9.0 tools."""
    try:
        helpers.thin_tools_090()
    except helpers.Unavailable as e:
        helpers.skip_or_fail(f"thin-provisioning-tools 0.9.0 unavailable: {e}")
    return THIN
