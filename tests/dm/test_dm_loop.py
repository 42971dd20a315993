"""Loop devices by ioctl, and O_DIRECT block I/O over them.  Root only
(they work on the host: loop devices exist there, device-mapper does not);
not real_dm."""
from __future__ import annotations

import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin import errors
from dmthin.dm import loop
from dmthin.dm.blockio import BlockIO

MiB = 1 << 20


def _sysfs(number: int, attr: str) -> str:
    with open(f"/sys/block/loop{number}/loop/{attr}") as f:
        return f.read().strip()


def test_attach_find_capacity_detach(root_loop, sparse):
    path = sparse("data", 8 * MiB)
    dev = loop.attach(path)
    try:
        assert dev.created and dev.fd is not None
        assert dev.size() == 8 * MiB
        assert _sysfs(dev.number, "backing_file") == path
        assert _sysfs(dev.number, "autoclear") == "1"
        info = dev.info()
        st_ = os.stat(path)
        assert (info.backing_dev, info.backing_inode) == (st_.st_dev, st_.st_ino)
        assert info.autoclear
        found = loop.find(path)
        assert found is not None and found.number == dev.number and found.fd is None
        assert (dev.number, path) in loop.list_attached()
        os.truncate(path, 12 * MiB)
        assert dev.size() == 8 * MiB
        assert dev.set_capacity() == 12 * MiB
    finally:
        dev.detach()
    assert not dev.attached()
    assert loop.find(path) is None


def test_autoclear_detaches_on_last_close(root_loop, sparse):
    path = sparse("data", 4 * MiB)
    dev = loop.attach(path)
    number = dev.number
    extra = os.open(dev.path, os.O_RDONLY)      # a second opener keeps it
    dev.close()
    assert loop.wait_detached([number], timeout=0.2) == [number]
    os.close(extra)
    assert loop.wait_detached([number], timeout=5) == []
    assert loop.find(path) is None


def test_without_autoclear_it_stays_until_detached(root_loop, sparse):
    path = sparse("data", 4 * MiB)
    dev = loop.attach(path, autoclear=False)
    dev.close()
    assert dev.attached() and not dev.info().autoclear
    loop.detach(dev.path)
    assert not dev.attached()
    loop.detach(dev.path)   # detaching a free device is fine


def test_read_only_attach(root_loop, sparse):
    path = sparse("meta", 4 * MiB)
    with loop.attach(path, read_only=True) as dev:
        with open(f"/sys/block/loop{dev.number}/ro") as f:
            assert f.read().strip() == "1"
        assert dev.info().flags & loop.LO_FLAGS_READ_ONLY
        assert loop.find(path).number == dev.number
        assert loop.find(path, writable=True) is None     # a pool must not reuse it
    assert loop.wait_detached([dev.number]) == []


def test_attach_refuses_a_directory(root_loop, tmp_path):
    with pytest.raises((errors.InvalidArgument, IsADirectoryError)):
        loop.attach(tmp_path)


def test_concurrent_attaches_get_distinct_devices(root_loop, sparse):
    paths = [sparse(f"f{i}", MiB) for i in range(4)]
    got: list = []
    errs: list = []

    def run(p):
        try:
            got.append(loop.attach(p))
        except Exception as err:  # noqa: BLE001 - collected and asserted on
            errs.append(err)
    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errs
        assert len({d.number for d in got}) == 4
        assert sorted(d.backing_file for d in got) == sorted(paths)
    finally:
        for d in got:
            d.detach()


@pytest.fixture
def loopdev(root_loop, sparse):
    path = sparse("blk", 2 * MiB)
    dev = loop.attach(path)
    yield dev, path
    dev.detach()


def test_blockio_aligned_and_unaligned_against_the_file(loopdev):
    dev, path = loopdev
    io = BlockIO(dev.path)
    try:
        assert io.read(0, 10) == bytes(10)
        io.write(4096, b"A" * 4096)                    # aligned
        io.write(4096 * 3 + 1, b"hello")               # unaligned: read-modify-write
        io.write(511, b"xy")                           # straddles a sector
        io.flush()
        assert io.read(4096 * 3, 8) == b"\0hello\0\0"
        with open(path, "rb") as f:
            raw = f.read()
        assert raw[4096:8192] == b"A" * 4096
        assert raw[4096 * 3 + 1:4096 * 3 + 6] == b"hello"
        assert raw[511:513] == b"xy" and raw[510] == 0 and raw[513] == 0
        assert io.open_count == 1
    finally:
        io.close()
    assert io.open_count == 0


def test_blockio_discard_zeroes_whole_blocks_only(loopdev):
    dev, _path = loopdev
    io = BlockIO(dev.path)
    try:
        io.write(0, b"\xff" * 65536)
        io.discard(100, 40000)         # whole logical blocks inside [100, 40100)
        data = io.read(0, 65536)
        a = io.align
        first, end = -(-100 // a) * a, (40100 // a) * a
        assert data[:first] == b"\xff" * first
        assert data[first:end] == bytes(end - first)
        assert data[end:] == b"\xff" * (65536 - end)
    finally:
        io.close()


@settings(max_examples=25, deadline=None, derandomize=False, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 2 * MiB - 1), st.integers(1, 20000),
                              st.integers(0, 255)), min_size=1, max_size=12))
def test_blockio_random_writes_match_a_bytearray_model(loopdev, ops):
    dev, _path = loopdev
    io = BlockIO(dev.path)
    try:
        model = bytearray(io.read(0, 2 * MiB))
        for offset, length, byte in ops:
            length = min(length, 2 * MiB - offset)
            data = bytes([byte]) * length
            io.write(offset, data)
            model[offset:offset + length] = data
        assert io.read(0, 2 * MiB) == bytes(model)
        off = ops[-1][0] % (2 * MiB - 7)
        assert io.read(off, 7) == bytes(model[off:off + 7])
    finally:
        io.close()
