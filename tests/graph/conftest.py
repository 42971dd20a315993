"""Fixtures for the graph-driver tests.

Backend: the simulator (``sim``).  For graph-layer development before the
simulator existed, DMTHIN_GRAPH_BACKEND=graphfake selects the in-memory
model in fakepool.py.
"""
import os
import sys

import pytest

BACKEND = os.environ.get("DMTHIN_GRAPH_BACKEND", "sim")

if BACKEND == "graphfake":          # development only; never changes the registry otherwise
    sys.path.insert(0, os.path.dirname(__file__))
    import fakepool  # noqa: E402
    fakepool.register()

#: small sizes: Docker's test defaults (300M data, 200M metadata, 300M base)
#: scaled down so the simulator runs in seconds
SMALL = ("dm.loopdatasize=64M", "dm.loopmetadatasize=16M", "dm.basesize=16M", "dm.fs=ext4",
         "dm.min_free_space=0%")


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
