#!/usr/bin/env python3
"""Write the hand-written fidelity traces of this folder (``*.jsonl``).

Each trace probes one kernel behaviour; tests/fidelity/tracelib replays it
on both backends (format: that package's docstring).  Run from anywhere:
``python3 tests/traces/make.py``; the output is deterministic.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
K = 1 << 10
BS = 64 * K


def pool(data_blocks: int, lwm: int = 0, features=(), meta="4M") -> dict:
    return {"data_size": data_blocks * BS, "metadata_size": meta, "block_size": "64K",
            "low_water_mark": lwm, "features": list(features)}


def w(dev, off, length, seed):
    return {"op": "write", "id": dev, "offset": off, "length": length, "seed": seed}


def blocks(dev, bl, seed):
    return {"op": "writes", "id": dev, "blocks": list(bl), "seed": seed}


def discard(dev, off, length):
    return [{"op": "discard", "id": dev, "offset": off, "length": length},
            {"op": "flush", "id": dev}]


TRACES = {}


def trace(fn):
    TRACES[fn.__name__] = fn
    return fn


@trace
def snap_chain_100():
    """A chain of 100 snapshots, each written partially (COW) and wholly."""
    steps = [{"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, range(16), 1)]
    for k in range(1, 101):
        steps.append({"op": "create_snap", "id": k + 1, "origin": k})
        steps.append({"op": "deactivate", "id": k})
        b = k % 16
        steps.append(w(k + 1, b * BS + 512 * (k % 7), 4096 + k, 1000 + k))
        if k % 10 == 0:
            steps.append(blocks(k + 1, [(b + 3) % 16], 2000 + k))
    steps.append({"op": "delete", "id": 50})
    steps.append({"op": "delete", "id": 1})
    return {"pool": pool(512)}, steps


@trace
def delete_origin():
    """Delete an origin under live snapshots, write on, delete again."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}, blocks(1, range(0, 32, 2), 1),
             {"op": "create_snap", "id": 2, "origin": 1},
             {"op": "create_snap", "id": 3, "origin": 2},
             blocks(2, [0, 2, 3, 4], 2), w(3, 6 * BS + 100, 3000, 3),
             {"op": "delete", "id": 1}, {"op": "status"},
             blocks(3, [0, 8, 9], 4), w(2, 10 * BS - 512, 1024, 5),
             {"op": "delete", "id": 2}, blocks(3, [2, 4, 31], 6),
             {"op": "create_snap", "id": 4, "origin": 3}, {"op": "delete", "id": 3},
             w(4, 0, BS + 1, 7)]
    return {"pool": pool(128)}, steps


@trace
def overwrite_shared():
    """Overwrite shared blocks wholly, by sectors, by odd bytes, across edges."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}, blocks(1, range(12), 1),
             {"op": "create_snap", "id": 2, "origin": 1},
             blocks(2, [0], 2),                             # whole block
             w(2, 1 * BS + 4096, 8192, 3),                  # sectors inside a block
             w(2, 2 * BS + 1001, 333, 4),                   # odd bytes
             w(2, 3 * BS + 30000, 2 * BS + 700, 5),         # 3 partial, 4 whole, 5 partial
             w(1, 6 * BS + 512, 512, 6),                    # the origin breaks sharing
             w(1, 7 * BS, BS, 7),
             w(2, 20 * BS + 17, 100, 8),                    # unprovisioned, partial
             w(2, 22 * BS - 50, 100, 9),                    # unprovisioned, two partials
             w(2, 1 * BS + 4096, 8192, 10),                 # now exclusive: in place
             {"op": "create_snap", "id": 3, "origin": 2},
             w(3, 3 * BS + 1, 2 * BS, 11), w(2, 4 * BS + 5, 5, 12)]
    return {"pool": pool(64)}, steps


@trace
def discard_edges():
    """Discards over shared and unshared blocks with partial blocks at the edges."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}, blocks(1, range(24), 1),
             {"op": "create_snap", "id": 2, "origin": 1}, blocks(2, [16, 17, 18, 19], 2)]
    steps += discard(2, 1 * BS + 100, 3 * BS)        # 1 partial, 2-3 whole, 4 partial
    steps += discard(2, 6 * BS + 512, 1024)          # inside one block
    steps += discard(2, 8 * BS, 2 * BS)              # aligned, shared
    steps += discard(2, 15 * BS + 4096, 4 * BS)      # shared edge, exclusive inside
    steps += discard(1, 10 * BS - 1, BS + 2)         # origin: 10 whole, edges partial
    steps += discard(1, 20 * BS, 8 * BS)             # mapped then unmapped
    steps += discard(2, 0, 32 * BS)                  # the whole device
    steps += [blocks(2, [1, 2, 3], 3), w(1, 9 * BS + 7, 77, 4)]
    steps += discard(1, 0, 5)                        # less than a sector
    return {"pool": pool(64)}, steps


@trace
def discard_no_passdown():
    """Discards without passdown, then a partial write into a reused block."""
    steps = [{"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, range(16), 1)]
    steps += discard(1, 2 * BS, 6 * BS)
    steps += [w(1, 40 * K, 4 * K, 2), blocks(1, [2, 3], 3)]
    return {"pool": pool(16, features=["no_discard_passdown", "skip_block_zeroing"])}, steps


@trace
def stale_reuse():
    """skip_block_zeroing: a partial write into a block freed by a delete
    shows what the data device held (no passdown for deletes)."""
    steps = [{"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, range(8), 1),
             {"op": "delete", "id": 1}, {"op": "create_thin", "id": 2, "size": "1M"},
             w(2, 3 * BS + 512, 1024, 2), w(2, 5 * BS + 1, 10, 3)]
    steps += discard(2, 3 * BS, BS)
    steps += [w(2, 9 * BS + 100, 100, 4)]
    return {"pool": pool(16, features=["skip_block_zeroing"])}, steps


@trace
def full_error():
    """Fill the pool under error_if_no_space: ENOSPC at once, mapped blocks
    still writable, space back after a discard."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}, blocks(1, range(12), 1),
             {"op": "create_snap", "id": 2, "origin": 1},
             blocks(1, range(12, 20), 2),                    # 4 of 8 fail
             w(1, 0, BS, 3),                                 # shared: needs a block, fails
             w(1, 12 * BS + 7, 100, 5),                      # exclusive: in place
             w(1, 14 * BS, 3 * BS, 6),                       # 14, 15 fine, 16 fails
             w(1, 11 * BS + 5, 3 * BS, 13),                  # 11 (shared) fails, 12-14 fine
             {"op": "create_thin", "id": 3, "size": "1M"},
             {"op": "flush", "id": 3},                       # block 0 unmapped: ENOSPC
             {"op": "flush", "id": 1}]                       # block 0 mapped: fine
    steps += discard(1, 12 * BS, 2 * BS)
    steps += [blocks(1, [16, 17, 18], 7), {"op": "delete", "id": 2},
              blocks(1, [20, 21], 8)]
    return {"pool": pool(16, lwm=4, features=["error_if_no_space"])}, steps


@trace
def ood_shared_write():
    """Out of data space under error_if_no_space, a 512-byte write into a
    block the snapshot shares with its origin must fail with ENOSPC and
    leave the origin alone.  Debian's 6.1 kernel was seen (1 run in 2) to
    complete it in place instead, changing the origin's bytes: the errno and
    the bytes are reported, not required, until that is understood."""
    steps = [{"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, range(16), 1),
             {"op": "create_snap", "id": 2, "origin": 1},
             w(1, 0, BS, 2),                                 # needs a block: ENOSPC
             w(2, 5 * BS + 10, 10, 4), w(2, 6 * BS, 512, 5), w(1, 7 * BS, 512, 6)]
    return {"pool": pool(16, features=["error_if_no_space"]),
            "timing_dependent": ["errno of the step", "device bytes (sha256)"]}, steps


@trace
def full_queue():
    """Fill the pool under queue_if_no_space: the write waits no_space_timeout
    (2 s) then fails; the policy shows error_if_no_space until space returns."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}, blocks(1, range(16), 1),
             w(1, 16 * BS, 100, 2), {"op": "status"},
             w(1, 17 * BS, 100, 3), w(1, 3 * BS, 100, 4)]
    steps += discard(1, 0, 2 * BS)
    steps += [blocks(1, [20, 21, 22], 5), {"op": "create_thin", "id": 2, "size": "1M"},
              w(2, 0, 10, 6), {"op": "delete", "id": 1}, w(2, 0, 10, 7)]
    return {"pool": pool(16, lwm=2), "no_space_timeout": 2}, steps


@trace
def full_uncommitted_free():
    """A full pool whose only free blocks were freed in this transaction:
    allocation fails, the pool goes out_of_data_space, the queued write
    waits for the next commit (the kernel's periodic one) and then gets
    the freed block."""
    steps = [{"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, range(15), 1),
             {"op": "create_snap", "id": 2, "origin": 1}, {"op": "delete", "id": 1},
             blocks(2, [0, 1, 2, 3], 2), {"op": "status"}, w(2, 4 * BS + 9, 9, 3)]
    return {"pool": pool(16), "no_space_timeout": 30,
            # how many commits the kernel needs depends on its 1 s commit timer
            "timing_dependent": ["pool events"]}, steps


@trace
def ignore_discard():
    """ignore_discard: discards fail with EOPNOTSUPP and unmap nothing."""
    steps = [{"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, range(4), 1)]
    steps += discard(1, 0, 4 * BS)
    steps += [w(1, 0, 10, 2)]
    return {"pool": pool(16, features=["ignore_discard"])}, steps


@trace
def low_water_mark():
    """Cross the low water mark (one event), fall back below after a delete,
    cross it again (no new event without a resume)."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}]
    for k in range(6):
        steps.append(blocks(1, range(4 * k, 4 * k + 4), k + 1))
    steps += [{"op": "create_thin", "id": 2, "size": "1M"}, blocks(2, range(8), 9),
              {"op": "delete", "id": 1}, blocks(2, range(8, 16), 10), {"op": "reopen"},
              blocks(2, [0], 11), {"op": "create_thin", "id": 3, "size": "2M"},
              blocks(3, range(20), 12)]
    return {"pool": pool(32, lwm=10)}, steps


@trace
def transaction_ids():
    """set_transaction_id compare-and-swap, mismatches give EINVAL."""
    steps = [{"op": "set_transaction_id", "old": 0, "new": 1},
             {"op": "set_transaction_id", "old": 0, "new": 2},
             {"op": "set_transaction_id", "old": 1, "new": 1 << 40},
             {"op": "message", "text": "set_transaction_id 5 6"},
             {"op": "create_thin", "id": 1, "size": "1M"}, blocks(1, [0, 1], 1),
             {"op": "set_transaction_id", "old": 1 << 40, "new": 3},
             {"op": "reopen"}, {"op": "set_transaction_id", "old": 1, "new": 4},
             {"op": "set_transaction_id", "old": 3, "new": 4},
             {"op": "create_thin", "id": 1, "size": "1M"},
             {"op": "delete", "id": 9}, {"op": "message", "text": "create_snap 5 9"},
             {"op": "message", "text": "release_metadata_snap"}]
    return {"pool": pool(32)}, steps


@trace
def metadata_snap_writes():
    """A metadata snapshot reserved and released while writing."""
    steps = [{"op": "create_thin", "id": 1, "size": "4M"}, blocks(1, range(0, 64, 3), 1),
             {"op": "reserve_metadata_snap"}, blocks(1, range(1, 64, 3), 2),
             {"op": "reserve_metadata_snap"},
             {"op": "create_snap", "id": 2, "origin": 1}, blocks(2, range(0, 64, 5), 3),
             {"op": "release_metadata_snap"}, {"op": "release_metadata_snap"},
             blocks(1, range(2, 64, 3), 4), {"op": "reserve_metadata_snap"},
             {"op": "delete", "id": 1}, {"op": "reopen"}, blocks(2, [63], 5),
             {"op": "release_metadata_snap"}, {"op": "reserve_metadata_snap"}]
    return {"pool": pool(256)}, steps


@trace
def reopen_mid_trace():
    """The pool closed and reopened between writes, snapshots and deletes."""
    steps = [{"op": "create_thin", "id": 1, "size": "2M"}, blocks(1, range(10), 1),
             w(1, 12 * BS + 3, 5000, 2), {"op": "reopen"},
             {"op": "create_snap", "id": 2, "origin": 1}, w(2, 1 * BS, 100, 3),
             {"op": "reopen"}, blocks(1, [1, 2], 4), {"op": "delete", "id": 1},
             {"op": "reopen"}, w(2, 30 * BS, 2 * BS, 5), {"op": "status"}]
    return {"pool": pool(64)}, steps


def build(name: str) -> tuple[dict, list[dict]]:
    """The header and steps of trace *name* as its file holds them."""
    fn = TRACES[name]
    header, steps = fn()
    return {"name": name.replace("_", "-"), "doc": fn.__doc__.split("\n")[0], **header}, steps


def main() -> None:
    for name in TRACES:
        header, steps = build(name)
        with open(HERE / f"{header['name']}.jsonl", "w") as f:
            f.write(json.dumps(header) + "\n")
            for s in steps:
                f.write(json.dumps(s) + "\n")


if __name__ == "__main__":
    main()
