"""Random traces from a seed."""
from __future__ import annotations

import random


def generate(seed: int, writes: int = 300, fill: bool = False) -> tuple[dict, list[dict]]:
    """A random trace from *seed* with about *writes* block writes.

    With *fill* the pool is small enough to run out of data space.  Such
    traces are timing-dependent on the kernel: when the only free blocks
    were freed in the current transaction (a snapshot's block whose sharer
    was deleted gets overwritten), allocation fails until the next commit,
    and the kernel commits every second; the event counts, and under
    error_if_no_space the failing writes, then depend on that timing.
    Without *fill* (the default) the pool never fills: every I/O allocates
    at most 3 blocks.
    """
    rng = random.Random(seed)
    bs = 64 << 10
    nblocks = rng.choice([96, 128, 192, 256])
    dev_blocks = rng.choice([32, 64, 128])
    features = rng.choice([[], [], ["error_if_no_space"], ["no_discard_passdown"],
                           ["skip_block_zeroing"], ["error_if_no_space", "skip_block_zeroing"]])
    lwm = rng.randrange(0, nblocks // 3)
    if not fill:
        nblocks += 3 * writes
        lwm = nblocks - rng.randrange(1, max(2, writes))    # crossed after that many
    header = {"name": f"gen-{seed}{'-fill' if fill else ''}", "seed": seed,
              "no_space_timeout": 2, "fill": fill,
              "pool": {"data_size": nblocks * bs, "metadata_size": "4M",
                       "block_size": f"{bs >> 10}K",
                       "low_water_mark": lwm, "features": features}}
    if fill:
        header["timing_dependent"] = ["pool events", "errno of the step", "used data blocks",
                                      "no-space policy", "used metadata blocks",
                                      "used metadata blocks (final)",
                                      "mode", "thin status lines", "device bytes (sha256)",
                                      "mappings (vblock -> data block, time)", "thin_dump XML",
                                      "thin_ls figures", "device details"]
    size = dev_blocks * bs
    steps: list[dict] = [{"op": "create_thin", "id": 1, "size": size}]
    live, next_id, tid, held = [1], 2, 0, False
    budget = writes
    while budget > 0:
        r = rng.random()
        if r < 0.45 or not live:
            if not live:
                steps.append({"op": "create_thin", "id": next_id, "size": size})
                live.append(next_id)
                next_id += 1
            k = rng.randint(1, min(budget, 30))
            ios = []
            for _ in range(k):
                dev = rng.choice(live)
                vb = rng.randrange(dev_blocks)
                if rng.random() < 0.7:
                    ios.append([dev, vb * bs, bs])
                else:
                    off = vb * bs + (rng.randrange(bs // 512) * 512 if rng.random() < 0.7
                                     else rng.randrange(bs))
                    length = rng.randint(1, min(2 * bs, size - off))
                    ios.append([dev, off, length])
            steps.append({"op": "writes", "seed": rng.randrange(1 << 30), "ios": ios})
            budget -= k
        elif r < 0.55 and len(live) < 8:
            origin = rng.choice(live)
            steps.append({"op": "create_snap", "id": next_id, "origin": origin})
            live.append(next_id)
            next_id += 1
        elif r < 0.60 and len(live) < 8:
            steps.append({"op": "create_thin", "id": next_id, "size": size})
            live.append(next_id)
            next_id += 1
        elif r < 0.67 and len(live) > 1:
            victim = rng.choice(live)
            live.remove(victim)
            steps.append({"op": "delete", "id": victim})
        elif r < 0.77:
            dev = rng.choice(live)
            off = rng.randrange(size) if rng.random() < 0.5 else rng.randrange(dev_blocks) * bs
            length = rng.randint(1, min(size - off, 24 * bs))
            steps.append({"op": "discard", "id": dev, "offset": off, "length": length})
            steps.append({"op": "flush", "id": dev})
        elif r < 0.82:
            if rng.random() < 0.8:
                steps.append({"op": "set_transaction_id", "old": tid, "new": tid + 1})
                tid += 1
            else:
                steps.append({"op": "set_transaction_id", "old": tid + 7, "new": tid + 8})
        elif r < 0.87:
            wrong = rng.random() < 0.2
            op = "reserve_metadata_snap" if held == wrong else "release_metadata_snap"
            if not wrong:
                held = not held
            steps.append({"op": op})
        elif r < 0.90:
            steps.append({"op": "reopen"})
        elif r < 0.95:
            steps.append({"op": "flush", "id": rng.choice(live)})
        else:
            # an error path: an existing id, or a missing one
            if rng.random() < 0.5:
                steps.append({"op": "create_thin", "id": rng.choice(live), "size": size})
            else:
                steps.append({"op": "delete", "id": next_id + 100})
    return header, steps
