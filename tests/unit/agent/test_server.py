"""Claiming the socket path: parent created, live server refused (P3), stale file replaced, mode exact."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from secmesh.agent.server import ABSENT, LIVE, STALE, SocketClaim, probe, start_server
from secmesh.errors import SdsError


def short_dir(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be long
    d = Path("/tmp") / f"smt-{os.getpid()}-{abs(hash(tmp_path)) % 10**8}"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture
def sockdir(tmp_path: Path):
    d = short_dir(tmp_path)
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    d.rmdir()


def test_probe_states(sockdir: Path) -> None:
    path = sockdir / "s"
    assert probe(path) == ABSENT
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    try:
        assert probe(path) == LIVE
    finally:
        listener.close()
    assert probe(path) == STALE  # the file stays, nobody answers
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(SdsError) as info:
        probe(path)
    assert info.value.reason == "socket_in_use"


def test_live_server_is_never_taken_over(sockdir: Path) -> None:
    path = sockdir / "s"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(SdsError) as info:
            SocketClaim(path, 0o660).acquire()
        assert "already answering" in info.value.message
    finally:
        listener.close()


def test_two_claims_exclude_each_other_and_stale_is_replaced(sockdir: Path) -> None:
    path = sockdir / "nested" / "dir" / "socket"
    first = SocketClaim(path, 0o660)
    first.acquire()  # creates the parent directories
    assert path.parent.is_dir()
    with pytest.raises(SdsError) as info:
        SocketClaim(path, 0o660).acquire()
    assert "another secmesh agent" in info.value.message
    first.release()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))  # a stale socket file left by a crashed agent
    s.close()
    second = SocketClaim(path, 0o660)
    second.acquire()
    assert not path.exists()
    second.release()


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_socket_mode_is_set_exactly(sockdir: Path, mode: int) -> None:
    path = sockdir / "socket"

    async def main() -> None:
        claim = SocketClaim(path, mode)
        claim.acquire()
        server = await start_server(claim, [], [])
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
            assert probe(path) == LIVE
        finally:
            await server.stop(0)
            claim.release()

    old = os.umask(0o022)
    try:
        asyncio.run(main())
    finally:
        os.umask(old)


def test_a_burst_of_streams_beyond_core_pending_limit_is_served(sockdir: Path) -> None:
    """2,000 streams opened at once (Envoys reconnecting after a restart): gRPC core's default
    pending-call limit (1000 soft, 3000 hard) would cancel some before any handler ran."""
    import grpc
    import grpc.aio

    path = sockdir / "socket"
    n = 2000

    async def echo(request_iterator, context):  # noqa: ANN001, ANN202
        async for item in request_iterator:
            yield item

    handler = grpc.method_handlers_generic_handler(
        "test.Burst", {"Echo": grpc.stream_stream_rpc_method_handler(echo)})

    async def one(channel: grpc.aio.Channel) -> bytes:
        call = channel.stream_stream("/test.Burst/Echo")()
        await call.write(b"x")
        reply = await call.read()
        call.cancel()
        return reply

    async def main() -> None:
        claim = SocketClaim(path, 0o600)
        claim.acquire()
        server = await start_server(claim, [handler], [])
        channels = [grpc.aio.insecure_channel(f"unix:{path}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(4)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(one(channels[i % 4]) for i in range(n)), return_exceptions=True), 60)
            failed = [r for r in results if not isinstance(r, bytes)]
            assert not failed, f"{len(failed)} of {n} streams failed, first: {failed[0]!r}"
        finally:
            for c in channels:
                await c.close()
            await server.stop(0)
            claim.release()

    asyncio.run(main())
