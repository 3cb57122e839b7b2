"""The HTTP/1.1 per-endpoint connection limit's bookkeeping (pool_limit.ConnectionLimit)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from secmesh.sidecar.pool_limit import DIAL, ConnectionLimit


@pytest.fixture
def loop() -> Any:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_slots_up_to_the_limit_then_waiters_then_overflow(loop: Any) -> None:
    lim = ConnectionLimit(2, 2, loop)
    assert lim.take() and lim.take() and not lim.take()
    a, b = lim.waiter(), lim.waiter()
    assert a is not None and b is not None and lim.pending == 2
    assert lim.waiter() is None                  # the queue is full: the caller answers 503
    conn = object()
    assert lim.hand_over(conn)                   # a released connection goes to the first waiter …
    assert a.result() is conn and lim.live == 2  # … and stays counted
    lim.freed()                                  # a connection closed: its slot goes to the next waiter
    assert b.result() is DIAL and lim.live == 2
    lim.freed()
    assert lim.live == 1 and not lim.hand_over(conn)   # nobody waits: back to the idle list


def test_nobody_jumps_the_queue(loop: Any) -> None:
    lim = ConnectionLimit(1, 5, loop)
    assert lim.take()
    w = lim.waiter()
    lim.live = 0                                 # a slot is free, yet someone waits for it
    assert not lim.take()
    assert w is not None and not w.done()


def test_abandoned_waiters_pass_on_what_they_got(loop: Any) -> None:
    lim = ConnectionLimit(1, 5, loop)
    assert lim.take()
    gone, nxt = lim.waiter(), lim.waiter()
    assert gone is not None and nxt is not None
    assert lim.abandon(gone) is None and gone.cancelled()
    lim.freed()                                  # skips the cancelled waiter
    assert nxt.result() is DIAL and lim.live == 1
    third = lim.waiter()
    assert third is not None
    lim.freed()
    assert lim.abandon(third) is None            # it was given a slot: the slot is freed again …
    assert lim.live == 0                         # … and nobody else waits
    late = lim.waiter()
    conn = object()
    assert late is not None and lim.hand_over(conn)
    assert lim.abandon(late) is conn             # the caller puts the connection back in the pool


def test_cancelled_waiters_do_not_count_against_the_queue(loop: Any) -> None:
    lim = ConnectionLimit(1, 1, loop)
    assert lim.take()
    w = lim.waiter()
    assert w is not None and lim.waiter() is None
    lim.abandon(w)
    assert lim.waiter() is not None


def test_abandoned_waiters_do_not_block_a_free_slot(loop: Any) -> None:
    lim = ConnectionLimit(2, 5, loop)
    assert lim.take() and lim.take()
    w = lim.waiter()
    assert w is not None
    lim.abandon(w)
    lim.freed()                                  # no live waiter: the slot is free again
    assert lim.live == 1 and lim.take()
