"""HTTP/1.1 connection limit per upstream endpoint, with a FIFO of waiting requests.

Without a limit, every request that finds no idle connection dials a new one: a burst of 500
concurrent requests (an h2 client with `-m 10` on 50 connections, translated to HTTP/1.1) opens
500 TLS connections, and every one that does not fit in the idle list is closed after its
response, so the next burst pays 500 handshakes again. Envoy bounds this with its cluster
circuit breakers (`max_connections`, `max_pending_requests`, both 1024 by default; Istio's
`connectionPool.tcp.maxConnections` and `http.http1MaxPendingRequests`), HAProxy with a server's
`maxconn` and queue. Here: at most `limit` connections per endpoint; a request beyond it waits
for a connection to come back (handed over directly, not via the idle list) or for a slot to
free (then it dials); more than `max_pending` waiting requests are refused at once
(`upstream_overflow`, a 503 that is neither retried nor counted against the endpoint).

This bookkeeping only touches futures the caller awaits; the pool (`pool.py`) does the dialling.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

DIAL = object()        # a waiter's result: a slot was freed for you, dial a connection in it


class ConnectionLimit:
    __slots__ = ("limit", "max_pending", "live", "_waiters", "_loop")

    def __init__(self, limit: int, max_pending: int, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self.max_pending = max_pending
        self.live = 0                     # connections open or being dialled
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._loop = loop

    @property
    def pending(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def take(self) -> bool:
        """Claim a slot for a new connection, if one is free and nobody waits ahead of us."""
        if self.live < self.limit and not self._queue():
            self.live += 1
            return True
        return False

    def waiter(self) -> asyncio.Future[Any] | None:
        """A future resolved with a released connection or `DIAL`; None when the queue is full."""
        if len(self._queue()) >= self.max_pending:
            return None
        fut = self._loop.create_future()
        self._waiters.append(fut)
        return fut

    def _queue(self) -> deque[asyncio.Future[Any]]:
        """The waiters, without the abandoned ones at the head (they hold nobody's place)."""
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return waiters

    def hand_over(self, conn: Any) -> bool:
        """Give a reusable connection to the first request still waiting; False if none waits."""
        return self._wake(conn)

    def freed(self) -> None:
        """A connection (or a dial) ended: its slot goes to the first waiter, else back to the pool."""
        if not self._wake(DIAL):
            self.live -= 1

    def _wake(self, result: Any) -> bool:
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(result)
                return True
        return False

    def abandon(self, fut: asyncio.Future[Any]) -> Any:
        """The waiting request went away: pass its slot on; returns a connection it was handed
        (the caller puts it back in the pool), else None."""
        if not fut.done():
            fut.cancel()
            return None
        got = None if fut.cancelled() else fut.result()
        if got is DIAL:
            self.freed()
            return None
        return got
