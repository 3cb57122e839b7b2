"""A burst of new connections is taken in one loop turn, on every kind of port.

uvloop's own server accepts through libuv, which (1.52) takes one connection per poll event:
a busy worker then drained its accept queue at one connection per loop turn, and clients of
a loaded sidecar waited seconds before their first byte was read. The listener accepts itself,
up to 64 connections per wakeup. Real sockets on loopback, the real uvloop loop; only the
protocol the accepted sockets are handed to is a recorder.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from secmesh.sidecar.config import ListenerConfig, MtlsMode
from secmesh.sidecar.connection import ConnContext
from secmesh.sidecar.listener import Listener

BURST = 40


class Recorder(asyncio.Protocol):
    made: list[Any] = []

    def connection_made(self, transport: Any) -> None:
        Recorder.made.append(transport)


@pytest.mark.parametrize("kind", ["outbound", "inbound-plaintext"])
def test_a_burst_is_accepted_in_one_turn(kind: str) -> None:
    loop = uvloop.new_event_loop()
    Recorder.made = []
    outbound = kind == "outbound"
    cfg = ListenerConfig(name="l", kind="outbound" if outbound else "inbound", address="127.0.0.1:0",
                         upstream="127.0.0.1:9", peer_ids=["spiffe://cluster.local/ns/a/sa/b"] if outbound else [],
                         mtls_mode=None if outbound else MtlsMode.DISABLE, allow_all=not outbound)
    ctx = ConnContext(cfg=cfg, holder=SimpleNamespace(state=None), authorizer=None, trust_domain=None,  # type: ignore[arg-type]
                      handshake_timeout=5.0, high_water=1 << 18, low_water=1 << 16, access_log=None, loop=loop)
    lst = Listener(cfg, ctx)
    lst._outbound = lambda _ctx: Recorder()
    lst._inbound = lambda _ctx, tls: Recorder()
    clients: list[socket.socket] = []
    try:
        loop.run_until_complete(lst.start())
        clients = [socket.create_connection(("127.0.0.1", lst.bound_port)) for _ in range(BURST)]
        turns = 0

        def turn() -> None:                      # one call per loop iteration
            nonlocal turns
            turns += 1
            if len(Recorder.made) < BURST and turns < 200:
                loop.call_soon(turn)
            else:
                loop.stop()

        loop.call_soon(turn)
        loop.run_forever()
        assert len(Recorder.made) == BURST
        assert turns <= 4, f"{turns} loop turns to accept {BURST} connections"
    finally:
        for c in clients:
            c.close()
        for t in Recorder.made:
            t.close()
        lst.stop_accepting()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
