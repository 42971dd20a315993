"""Fixtures for the graph-driver tests (host: the simulator backend)."""
import pytest

from graph_helpers import BACKEND, SMALL


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
