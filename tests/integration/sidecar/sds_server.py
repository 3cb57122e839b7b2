"""A small SDS v3 server (xds-protos stubs, grpc.aio on a UDS) run in a thread, for the SDS client tests.

It records every DiscoveryRequest (so tests can see ACKs and NACKs), serves `default` and
`ROOTCA` from whatever the test set last, and pushes on `push()` to every open stream. It uses
the read/write style with one wait over "next request" and "push" (pitfall P5).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class _Servicer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, owner: SdsTestServer) -> None:
        self.owner = owner

    async def StreamSecrets(self, request_iterator: Any, context: Any) -> None:  # noqa: N802 - gRPC API
        owner = self.owner
        queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
        owner.queues.add(queue)
        owner.streams_opened += 1
        names: list[str] = []
        reader = asyncio.ensure_future(context.read())
        pusher = asyncio.ensure_future(queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({reader, pusher}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    req = reader.result()
                    if req is grpc.aio.EOF:
                        return
                    owner.requests.append(req)
                    if not req.response_nonce:     # initial request (or reconnect)
                        names = list(req.resource_names)
                        await self._send(context, names)
                    reader = asyncio.ensure_future(context.read())
                if pusher in done:
                    wanted = pusher.result()
                    if wanted is None:
                        return
                    await self._send(context, [n for n in wanted if n in names])
                    pusher = asyncio.ensure_future(queue.get())
        finally:
            owner.queues.discard(queue)
            reader.cancel()
            pusher.cancel()

    async def _send(self, context: Any, names: list[str]) -> None:
        resources = [self.owner.secrets[n] for n in names if n in self.owner.secrets]
        if not resources:
            return
        self.owner.version += 1
        await context.write(discovery_pb2.DiscoveryResponse(
            version_info=str(self.owner.version), resources=resources, type_url=TYPE_URL, nonce=uuid.uuid4().hex))


class SdsTestServer:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.secrets: dict[str, any_pb2.Any] = {}
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.queues: set[asyncio.Queue[list[str] | None]] = set()
        self.streams_opened = 0
        self.version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    # -- secrets ---------------------------------------------------------------------------------

    def set_cert(self, chain_pem: bytes, key_pem: bytes, name: str = "default") -> None:
        s = secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=key_pem)))
        a = any_pb2.Any()
        a.Pack(s)
        self._call(lambda: self.secrets.__setitem__(name, a))

    def set_roots(self, pem: bytes, name: str = "ROOTCA") -> None:
        s = secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=pem)))
        a = any_pb2.Any()
        a.Pack(s)
        self._call(lambda: self.secrets.__setitem__(name, a))

    def push(self, *names: str) -> None:
        self._call(lambda: [q.put_nowait(list(names)) for q in self.queues])

    def acks(self) -> list[discovery_pb2.DiscoveryRequest]:
        return [r for r in list(self.requests) if r.response_nonce and not r.HasField("error_detail")]

    def nacks(self) -> list[discovery_pb2.DiscoveryRequest]:
        return [r for r in list(self.requests) if r.HasField("error_detail")]

    def _call(self, fn: Any) -> None:
        if self._loop is None:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> SdsTestServer:
        self._started.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._started.wait(10), "SDS test server did not start"
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        self._started.set()
        await self._stop.wait()
        for q in list(self.queues):
            q.put_nowait(None)
        await server.stop(0)
        self._loop = None

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
