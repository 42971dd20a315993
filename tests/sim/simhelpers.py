"""Helpers for the simulator tests: pools, thin_dump parsing, tool checks."""
from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable

from dmthin import Pool
from dmthin.backend import PoolSpec
from dmthin.pooldir import PoolDir
from dmthin.poolsetup import pool_spec
from dmthin.sim.engine import MetadataEngineFactory
from dmthin.sim.pool import SimPoolBackend
from dmthin.thin.metadata import ThinMetadata

THIN_DUMP = "/usr/sbin/thin_dump"
THIN_CHECK = "/usr/sbin/thin_check"
BS = 64 << 10


def new_pool(path, data_size="8M", metadata_size="4M", block_size="64K", **kw) -> Pool:
    """A sim pool; default 128 data blocks of 64K."""
    return Pool.create(path, data_size=data_size, metadata_size=metadata_size,
                       block_size=block_size, backend="sim", **kw)


def _with_backend(path, build: Callable[[PoolSpec], SimPoolBackend]
                  ) -> tuple[Pool, SimPoolBackend]:
    pooldir = PoolDir(path)
    config = pooldir.load_config()
    pooldir.lock()
    try:
        impl = build(pool_spec(pooldir, config))
    except BaseException:
        pooldir.unlock()
        raise
    return Pool(pooldir, config, impl), impl


def open_sim(path, engine: MetadataEngineFactory = ThinMetadata
             ) -> tuple[Pool, SimPoolBackend]:
    """Open the sim pool at *path* with its metadata in *engine*; returns the
    pool and the backend serving it (for the simulator's own knobs: its
    core's timeouts and events, resume, suspend)."""
    return _with_backend(path, lambda spec: SimPoolBackend.open(spec, engine=engine))


def sim_pool(path, engine: MetadataEngineFactory = ThinMetadata,
             **kw) -> tuple[Pool, SimPoolBackend]:
    """A new pool as :func:`new_pool` makes it, its metadata formatted by
    *engine*, and the backend serving it."""
    new_pool(path, **kw).close()
    return _with_backend(path, lambda spec: SimPoolBackend.create(spec, engine=engine))


def dump(metadata_path) -> tuple[dict, dict]:
    """thin_dump 0.9.0 of a metadata file: (superblock attrs, {dev_id: {"attrs": {...},
    "map": {vblock: (data_block, time)}}})."""
    p = subprocess.run([THIN_DUMP, str(metadata_path)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0, f"thin_dump failed: {p.stderr}"
    root = ET.fromstring(p.stdout)
    devs = {}
    for dev in root.iter("device"):
        m = {}
        for el in dev:
            t = int(el.attrib["time"])
            if el.tag == "single_mapping":
                m[int(el.attrib["origin_block"])] = (int(el.attrib["data_block"]), t)
            elif el.tag == "range_mapping":
                ob, db, n = (int(el.attrib[k]) for k in ("origin_begin", "data_begin", "length"))
                for i in range(n):
                    m[ob + i] = (db + i, t)
        devs[int(dev.attrib["dev_id"])] = {"attrs": dict(dev.attrib), "map": m}
    return dict(root.attrib), devs


def check_tools(metadata_path, pdata_tools_110=None) -> None:
    """thin_check 0.9.0 and (if *pdata_tools_110* is given) 1.1.0 must accept
    the metadata."""
    p = subprocess.run([THIN_CHECK, str(metadata_path)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0, f"thin_check 0.9.0 failed: {p.stdout}{p.stderr}"
    if pdata_tools_110 is not None:
        p = subprocess.run([pdata_tools_110, "thin_check", str(metadata_path)], capture_output=True,
                           text=True, timeout=120, check=False)
        assert p.returncode == 0, f"thin_check 1.1.0 failed: {p.stdout}{p.stderr}"


def du_bytes(path) -> int:
    """Bytes actually allocated to a file (what du counts)."""
    return os.stat(path).st_blocks * 512


def pattern(seed: int, n: int) -> bytes:
    """n bytes that depend on seed (cheap, non-zero)."""
    unit = bytes(((seed * 31 + i * 7) % 251) + 1 for i in range(251))
    return (unit * (n // 251 + 1))[:n]
