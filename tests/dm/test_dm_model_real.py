"""Random operation sequences on a real kernel pool, checked against an
independent model (a bytearray per thin device; a snapshot copies it; a
discard zeroes the whole data blocks inside its range).  Hypothesis
prints the failing example and its reproduction blob."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin import Pool

pytestmark = pytest.mark.real_dm
KiB, MiB = 1 << 10, 1 << 20
SIZE = 2 * MiB                  # each thin device
BLOCK = 64 * KiB

ops_strategy = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, SIZE - 1),
              st.integers(1, 150 * KiB), st.integers(1, 255)),
    st.tuples(st.just("discard"), st.integers(0, 2), st.integers(0, SIZE - 1),
              st.integers(1, 400 * KiB), st.just(0)),
    st.tuples(st.just("snap"), st.integers(0, 2), st.integers(0, 2), st.just(0), st.just(0)),
), min_size=1, max_size=14)


@settings(max_examples=6, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(ops=ops_strategy)
def test_random_ops_match_the_model(real_dm, tmp_path_factory, ops):
    base = tmp_path_factory.mktemp("deleteme-model")
    model: dict[int, bytearray] = {0: bytearray(SIZE)}
    with Pool.create(base / "pool", data_size="64M", metadata_size="4M",
                     backend="kernel") as pool:
        pool.create_thin(0, SIZE)
        for op, dev, offset, length, byte in ops:
            if dev not in model:
                continue
            length = min(length, SIZE - offset)
            thin = pool.thin(dev)
            if op == "write":
                thin.write(offset, bytes([byte]) * length)
                model[dev][offset:offset + length] = bytes([byte]) * length
            elif op == "discard":
                thin.discard(offset, length)
                first = -(-offset // BLOCK) * BLOCK
                end = (offset + length) // BLOCK * BLOCK
                if end > first:
                    model[dev][first:end] = bytes(end - first)
            else:  # snapshot dev as the lowest free id
                new = min(set(range(4)) - set(model))
                if new > 2:
                    continue
                pool.create_snap(new, dev)
                model[new] = bytearray(model[dev])
        for dev, data in model.items():
            assert pool.thin(dev).read(0, SIZE) == bytes(data), f"thin {dev} differs"
            mapped = pool.thin(dev).status().mapped_sectors * 512
            nonzero_blocks = sum(1 for b in range(0, SIZE, BLOCK) if any(data[b:b + BLOCK]))
            assert mapped >= nonzero_blocks * BLOCK
