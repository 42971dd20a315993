"""Project-wide pytest configuration: the real_dm marker and the tool fixtures.

A ``real_dm`` test runs only as root on a kernel with device-mapper
(:func:`helpers.requires_real_dm`).  Outside CI it is skipped elsewhere; with
CI=true it fails instead, because in CI the host run deselects these
(-m "not real_dm") and the only place they run is the qemu guest of
tools/test.  The tool fixtures follow the same rule.
"""
from __future__ import annotations

import pytest

import helpers
from dmthin.pdata import accel
from helpers import skip_or_fail


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply the real_dm rule before each marked test."""
    if item.get_closest_marker("real_dm") is not None:
        helpers.requires_real_dm()


@pytest.fixture(scope="session")
def pdata_tools_110() -> str:
    """Path of thin-provisioning-tools 1.1.0's multi-call binary:
    ``[pdata_tools_110, "thin_check", ...]`` runs its thin_check."""
    return helpers.pdata_tools_110_gated()


@pytest.fixture(scope="session")
def thin_tools_090() -> dict[str, str]:
    """{"thin_check": path, ...} of the installed 0.9.0 tools
    (:data:`helpers.THIN_TOOLS_090`)."""
    try:
        return helpers.thin_tools_090()
    except helpers.Unavailable as e:
        skip_or_fail(f"thin-provisioning-tools 0.9.0 unavailable: {e}")


@pytest.fixture
def accel_built() -> None:
    """The C accelerator (``dmthin._tools_ffi``) is built and enabled: tests
    comparing it with the pure-Python paths need it (skipped without it,
    failed under CI)."""
    if accel.lib is None:
        skip_or_fail("dmthin._tools_ffi is not built (it needs g++; pip install -e . "
                     "builds it) or DMTHIN_NO_ACCEL is set")
