"""RefCounts against a plain dict of counts (the model)."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.pdata import refcounts
from dmthin.pdata.refcounts import CHUNK, RefCounts

SIZE = 3 * CHUNK + 17

_block = st.integers(0, SIZE - 1)
_op = st.one_of(
    st.tuples(st.just("inc"), _block, st.integers(0, 300)),
    st.tuples(st.just("blocks"), st.lists(_block, max_size=40)),
    st.tuples(st.just("run"), _block, st.integers(0, 2 * CHUNK)),
)


def _apply(rc: RefCounts, model: Counter, op: tuple) -> None:
    if op[0] == "inc":
        _, b, n = op
        rc.inc(b, n)
        model[b] += n
    elif op[0] == "blocks":
        rc.inc_blocks(op[1])
        model.update(op[1])
    else:
        _, b, n = op
        n = min(n, SIZE - b)
        rc.inc_run(b, n)
        model.update(range(b, b + n))


@pytest.fixture(params=["flat", "chunked"])
def storage(request, monkeypatch):
    """RefCounts keeps small devices in one bytearray, big ones in chunks."""
    if request.param == "chunked":
        monkeypatch.setattr(refcounts, "FLAT_MAX", 0)
    return request.param


# The storage fixture only chooses the layout; nothing in it needs resetting.
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=25))
def test_counts_match_a_dict(storage, ops):
    rc = RefCounts(SIZE)
    model: Counter = Counter()
    for op in ops:
        _apply(rc, model, op)
    for b in set(model) | {0, SIZE - 1, CHUNK, CHUNK - 1}:
        assert rc.get(b) == model[b]
    over = [(b, c) for b, c in sorted(model.items()) if c >= 3]
    assert list(rc.at_least_3()) == over
    assert rc.nr_at_least_3() == len(over)
    for i in range(-(-SIZE // CHUNK)):
        chunk = rc.bitmap(i)
        want = [min(model[b], 255) for b in range(i * CHUNK, (i + 1) * CHUNK)]
        if chunk is None:
            assert not any(want)
        else:
            assert list(chunk[:SIZE - i * CHUNK]) == want[:SIZE - i * CHUNK]


def test_saturates_into_exact_counts(storage):
    rc = RefCounts(4)
    for _ in range(300):
        rc.inc(2)
    rc.inc(1, 254)
    rc.inc(1)
    rc.inc_blocks([3] * 256)
    assert (rc.get(0), rc.get(1), rc.get(2), rc.get(3)) == (0, 255, 300, 256)
    assert rc.bitmap(0)[:4] == bytes([0, 255, 255, 255])


def test_memory_follows_the_blocks_used():
    rc = RefCounts(1 << 40)
    rc.inc((1 << 40) - 1)
    rc.inc_run(5, 3)
    assert rc.bitmaps_in_use() == [0, ((1 << 40) - 1) // CHUNK]
    assert rc.get((1 << 40) - 1) == 1 and rc.get(6) == 1 and rc.get(8) == 0


@pytest.mark.parametrize("call", [
    lambda rc: rc.inc(10), lambda rc: rc.inc(-1), lambda rc: rc.get(10),
    lambda rc: rc.inc_blocks([3, 10]), lambda rc: rc.inc_run(8, 3),
])
def test_blocks_outside_the_range_are_refused(storage, call):
    with pytest.raises(IndexError):
        call(RefCounts(10))
