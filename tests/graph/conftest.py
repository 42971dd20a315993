"""Fixtures for the graph-driver tests.

Backend: the simulator (``sim``).  For graph-layer development before the
simulator existed, DMTHIN_GRAPH_BACKEND=graphfake selects the in-memory
model in fakepool.py.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from graph_helpers import BACKEND, SMALL  # noqa: E402

if BACKEND == "graphfake":          # development only; never changes the registry otherwise
    import fakepool  # noqa: E402
    fakepool.register()


@pytest.fixture
def backend():
    return BACKEND


@pytest.fixture
def make_ds(tmp_path, backend):
    """Factory: DeviceSet(root, SMALL + extra options), shut down at the end."""
    from dmthin.graph import DeviceSet
    made = []

    def make(*extra, root=None, cleanup_interval=None):
        ds = DeviceSet(root or tmp_path / "root", SMALL + tuple(extra), backend=backend,
                       cleanup_interval=cleanup_interval)
        made.append(ds)
        return ds

    yield make
    for ds in made:
        ds.shutdown()
