"""``dmthin pool`` and ``dmthin thin`` on the simulator, through the CLI
(run in this process: helpers.run_dmthin)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, run_dmthin


def dmthin(*args, input=None, ok=True):
    p = run_dmthin(*args, input=input)
    if ok:
        assert p.returncode == 0, p.stderr.decode()
    return p


def assert_one_line_error(p, *words):
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("argv", [
    ["pool", "--help"], ["pool", "create", "--help"], ["pool", "status", "--help"],
    ["pool", "message", "--help"], ["thin", "--help"], ["thin", "create", "--help"],
    ["thin", "snapshot", "--help"], ["thin", "delete", "--help"], ["thin", "resize", "--help"],
    ["thin", "write", "--help"],
    ["thin", "read", "--help"], ["thin", "discard", "--help"], ["thin", "status", "--help"],
    ["thin", "list", "--help"], ["thin", "ls", "--help"]])
def test_help(argv):
    p = dmthin(*argv)
    assert p.stdout.decode().startswith("usage: dmthin")


def test_pool_and_thin_lifecycle(tmp_path):
    d = tmp_path / "pool"
    p = dmthin("pool", "create", d, "--data-size", "16M", "--metadata-size", "4M",
               "--feature", "skip_block_zeroing")
    assert p.stdout.decode().startswith("0 32768 thin-pool ")
    assert p.stdout.decode().rstrip().endswith("128 25 1 skip_block_zeroing")
    dmthin("thin", "create", d, 1, "--size", "1M")
    src = tmp_path / "in"
    src.write_bytes(os.urandom(200000))
    dmthin("thin", "write", d, 1, "--input", src)
    dmthin("thin", "write", d, 1, "--offset", "512K", input=b"from stdin")
    dmthin("thin", "snapshot", d, 2, 1)
    dmthin("thin", "write", d, 1, "--offset", "1K", input=b"origin only")
    out = dmthin("thin", "read", d, 2, "--length", 200000).stdout
    assert out == src.read_bytes()
    got = tmp_path / "out"
    dmthin("thin", "read", d, 1, "--offset", "512K", "--length", "10", "--output", got)
    assert got.read_bytes() == b"from stdin"
    dmthin("thin", "discard", d, 1, "--offset", "0", "--length", "128K")
    assert dmthin("thin", "read", d, 1, "--length", "128K").stdout == bytes(128 << 10)
    st = dmthin("thin", "status", d, 2).stdout.decode().splitlines()
    assert st[0] == "0 2048 thin 640 1151"          # blocks 0-3 and 8
    doc = json.loads(dmthin("thin", "status", d, 1, "--json").stdout)
    assert doc["mapped_sectors"] == 384 and doc["highest_mapped_sector"] == 1151
    listing = dmthin("thin", "list", d).stdout.decode().splitlines()
    assert listing[0].split() == ["DEV", "SIZE", "MAPPED", "STATUS"]
    assert [line.split()[0] for line in listing[1:]] == ["1", "2"]
    assert dmthin("thin", "ls", d).stdout.decode().splitlines() == listing
    docs = json.loads(dmthin("thin", "list", d, "--json").stdout)
    assert [(x["dev_id"], x["mapped_sectors"]) for x in docs] == [(1, 384), (2, 640)]
    lines = dmthin("pool", "status", d).stdout.decode().splitlines()
    assert lines[0].startswith("0 32768 thin-pool 0 ")
    assert lines[0].split()[5] == "5/256"
    assert lines[1] == "Pool Blocksize: 65.54kB"
    assert lines[2].startswith("Data Space Used: 327.7kB")
    assert lines[3] == "Data Space Total: 16.78MB"
    assert [x.split(":")[0] for x in lines[1:]] == [
        "Pool Blocksize", "Data Space Used", "Data Space Total", "Data Space Available",
        "Metadata Space Used", "Metadata Space Total", "Metadata Space Available"]
    doc = json.loads(dmthin("pool", "status", d, "--json").stdout)
    assert doc["used_data_blocks"] == 5 and doc["mode"] == "rw"
    assert doc["status_line"].endswith(" ") and doc["thins"] == {"1": 1 << 20, "2": 1 << 20}
    dmthin("pool", "message", d, "set_transaction_id 0 7")
    assert json.loads(dmthin("pool", "status", d, "--json").stdout)["transaction_id"] == 7
    dmthin("thin", "delete", d, 2)
    assert [line.split()[0] for line in
            dmthin("thin", "list", d).stdout.decode().splitlines()[1:]] == ["1"]
    check = subprocess.run(["/usr/sbin/thin_check", str(d / "metadata")], capture_output=True,
                           check=False)
    assert check.returncode == 0


def test_errors_are_one_line(tmp_path):
    d = tmp_path / "pool"
    assert_one_line_error(dmthin("pool", "create", d, "--block-size", "96K", ok=False),
                          "block size")
    assert not (d / "pool.json").exists()
    assert_one_line_error(dmthin("pool", "status", tmp_path / "nothing", ok=False),
                          "not a dmthin pool")
    dmthin("pool", "create", d, "--data-size", "1M", "--metadata-size", "2M")
    assert_one_line_error(dmthin("pool", "create", d, ok=False), "already holds a pool")
    assert_one_line_error(dmthin("thin", "read", d, 3, ok=False), "no thin device 3")
    assert_one_line_error(dmthin("pool", "message", d, "frobnicate 1", ok=False),
                          "Unrecognised")
    dmthin("thin", "create", d, 1, "--size", "64K")
    assert_one_line_error(dmthin("thin", "create", d, 1, "--size", "64K", ok=False),
                          "exists")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (65 << 10))
    assert_one_line_error(dmthin("thin", "write", d, 1, "--input", big, ok=False),
                          "does not fit")
    assert_one_line_error(dmthin("thin", "write", d, 1, "--offset", "64K", input=b"x",
                                 ok=False), "past the end")
    assert_one_line_error(dmthin("thin", "create", d, 2, "--size", "1000", ok=False),
                          "multiple of 512")
    assert_one_line_error(dmthin("thin", "discard", d, 1, "--offset", "-1", "--length",
                                 "1", ok=False))


def test_writer_lock_names_pid(tmp_path):
    d = tmp_path / "pool"
    dmthin("pool", "create", d, "--data-size", "1M", "--metadata-size", "2M")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys,time; sys.path.insert(0, sys.argv[1]);"
          "from dmthin import Pool; p = Pool.open(sys.argv[2]); print('held', flush=True);"
          "time.sleep(30)"), str(REPO), str(d)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        p = dmthin("pool", "status", d, ok=False)
        assert_one_line_error(p, f"in use by pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    dmthin("pool", "status", d)


def test_message_created_thin_needs_resize(tmp_path):
    d = tmp_path / "pool"
    dmthin("pool", "create", d, "--data-size", "1M", "--metadata-size", "2M")
    dmthin("pool", "message", d, "create_thin 5")
    assert_one_line_error(dmthin("thin", "read", d, 5, ok=False), "thin resize")
    assert_one_line_error(dmthin("thin", "resize", d, 6, "--size", "1M", ok=False),
                          "no thin device 6")
    dmthin("thin", "resize", d, 5, "--size", "128K")
    dmthin("thin", "write", d, 5, "--offset", "100K", input=b"sized")
    assert dmthin("thin", "read", d, 5, "--offset", "100K", "--length", "5").stdout == b"sized"
    assert dmthin("thin", "list", d).stdout.decode().splitlines()[1].split()[:3] == \
        ["5", "128K", "64K"]


def test_readers_see_the_last_commit_while_a_writer_holds_the_pool(tmp_path):
    """dump, ls and check read the committed state alongside the writer."""
    from dmthin import Pool
    d = tmp_path / "pool"
    with Pool.create(d, data_size="8M", metadata_size="4M") as pool:
        thin = pool.create_thin(1, "1M")
        thin.write(0, b"committed")
        thin.flush()
        thin.write(5 * 65536, b"not yet")              # uncommitted mapping
        for argv in (["check", d], ["ls", d], ["dump", d]):
            p = dmthin(*argv)
            assert p.returncode == 0
        xml = dmthin("dump", d).stdout.decode()
        assert 'mapped_blocks="1"' in xml and 'origin_block="0"' in xml
        assert 'origin_block="5"' not in xml
        assert subprocess.run(["/usr/sbin/thin_check", str(d / "metadata")],
                              capture_output=True, check=False).returncode == 0
    xml = dmthin("dump", d).stdout.decode()
    assert 'mapped_blocks="2"' in xml
