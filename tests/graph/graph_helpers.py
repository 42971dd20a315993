"""Constants shared by the graph tests (a uniquely named module, so test
files never import a ``conftest``)."""
import os

#: the backend under test: the simulator; DMTHIN_GRAPH_BACKEND=graphfake selects the
#: in-memory development model in fakepool.py
BACKEND = os.environ.get("DMTHIN_GRAPH_BACKEND", "sim")

#: Docker's test defaults (300M data, 200M metadata, 300M base) scaled down so the
#: simulator runs in seconds
SMALL = ("dm.loopdatasize=64M", "dm.loopmetadatasize=16M", "dm.basesize=16M", "dm.fs=ext4",
         "dm.min_free_space=0%")
