"""`envoy.service.secret.v3.SecretDiscoveryService` on grpc.aio: thin glue around `SdsStreamState`.

StreamSecrets waits on two things at once (pitfall P5): the client's next DiscoveryRequest and
the cache's "your identity changed" mailbox. A pending request is always handled before a push,
so an ACK is never overtaken by a push it would then look stale against. Each decision comes
from the pure `SdsStreamState`; this module only reads, writes, logs and counts.

Status codes: a refused token → UNAUTHENTICATED; a malformed request or a refused resource name
→ INVALID_ARGUMENT; the CA unreachable while there is nothing cached → UNAVAILABLE (Envoy
retries with backoff, as with istio-agent, which fails the stream rather than send a partial
response). DeltaSecrets → UNIMPLEMENTED, as both istio-agent and SPIRE answer it. One stream's
failure never touches another: each has its own state, mailbox and error handling.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
from typing import Any

import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from secmesh.agent.attest import Attested, Attestor
from secmesh.agent.cache import KEY_CERT, REAUTH, ROOTS, SecretCache
from secmesh.agent.metrics import SDS_ERRORS, SDS_NACKS, SDS_PUSHES, SDS_REQUESTS, SDS_STREAMS
from secmesh.agent.rotator import IdentityManager
from secmesh.agent.sds_state import NACK, SdsStreamState, next_version
from secmesh.agent.secrets import SECRET_TYPE_URL, SecretEncoder, check_names, resource_kind
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import CAError, SdsError, SecmeshError
from secmesh.identity.tokens import TokenError
from secmesh.log import log_event

_log = logging.getLogger(__name__)
_stream_ids = itertools.count(1)


class Mailbox:
    """A stream's subscription to the cache: collects change kinds, wakes the stream once."""

    __slots__ = ("changed", "event")

    def __init__(self) -> None:
        self.changed: set[str] = set()
        self.event = asyncio.Event()

    def notify(self, changed: frozenset[str]) -> None:
        self.changed |= changed
        self.event.set()

    def take(self) -> frozenset[str]:
        out = frozenset(self.changed)
        self.changed.clear()
        self.event.clear()
        return out


def status_for(exc: SecmeshError) -> tuple[grpc.StatusCode, str]:
    """The one place SDS errors become gRPC statuses (the peer sees a short reason, never a token)."""
    if isinstance(exc, TokenError):
        return grpc.StatusCode.UNAUTHENTICATED, f"workload token rejected: {exc.reason}"
    if isinstance(exc, CAError):
        return grpc.StatusCode.UNAVAILABLE, f"failed to generate secret: certificate authority {exc.reason}"
    if isinstance(exc, SdsError):
        return grpc.StatusCode.INVALID_ARGUMENT, exc.message
    return grpc.StatusCode.INTERNAL, exc.reason


def _stamp(clock: Clock) -> str:
    return clock.now().astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class SdsService(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, attestor: Attestor, manager: IdentityManager, cache: SecretCache, *,
                 unknown_resource: str = "istio", clock: Clock = SYSTEM_CLOCK) -> None:
        self.attestor = attestor
        self.manager = manager
        self.cache = cache
        self.unknown_resource = unknown_resource
        self.clock = clock
        self.encoder = SecretEncoder()
        self._kinds = {KEY_CERT: KEY_CERT, ROOTS: ROOTS}

    def _kind(self, name: str) -> str:
        kind = self._kinds.get(name)
        if kind is None:
            kind = resource_kind(name, self.unknown_resource)
            if len(self._kinds) < 1024:
                self._kinds[name] = kind
        return kind

    async def _response(self, attested: Attested, names: tuple[str, ...], *, nonce: str,
                        fresh: bool) -> tuple[discovery_pb2.DiscoveryResponse, dict[str, int]]:
        """One response and the versions it carries per kind; `fresh` issues the material if needed
        (requests), else the cached one is used (pushes)."""
        kinds = check_names(names, self.unknown_resource)
        material = None
        sid = attested.identity.spiffe_id
        if KEY_CERT in kinds.values() or not self.cache.roots.certs:
            material = await self.manager.get(attested) if fresh or self.cache.get(sid) is None \
                else self.cache.get(sid)
        roots = self.cache.roots
        resources = [self.encoder.encode(n, kinds[n], material, roots) for n in names]
        carried = {kind: (roots.version if kind == ROOTS else material.version)  # type: ignore[union-attr]
                   for kind in set(kinds.values())}
        response = discovery_pb2.DiscoveryResponse(version_info=next_version(_stamp(self.clock)),
                                                   resources=resources, type_url=SECRET_TYPE_URL, nonce=nonce)
        return response, carried

    async def StreamSecrets(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stream_id = next(_stream_ids)
        SDS_STREAMS.inc()
        mailbox = Mailbox()
        attested: Attested | None = None
        failure: SecmeshError | None = None
        reader: asyncio.Future[Any] | None = None
        waker: asyncio.Future[Any] | None = None
        try:
            attested = await self.attestor.attest_async(context.invocation_metadata(), what="sds")
            sid = attested.identity.spiffe_id
            self.cache.subscribe(sid, mailbox)
            state = SdsStreamState()
            node = ""
            reader = asyncio.ensure_future(context.read())
            waker = asyncio.ensure_future(mailbox.event.wait())
            while True:
                done, _ = await asyncio.wait({reader, waker}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    request = reader.result()
                    if request is grpc.aio.EOF:
                        return
                    if request.node.id:
                        node = request.node.id
                    error = request.error_detail.message if request.HasField("error_detail") else None
                    decision = state.on_request(resource_names=request.resource_names,
                                                response_nonce=request.response_nonce,
                                                version_info=request.version_info, error_message=error,
                                                type_url=request.type_url)
                    SDS_REQUESTS.labels(decision.kind).inc()
                    if decision.kind == NACK:
                        SDS_NACKS.inc()
                        log_event(_log, logging.WARNING, "SDS client rejected a secret (NACK); keeping the last good",
                                  stream=stream_id, node=node, spiffe_id=str(sid), error=decision.error,
                                  nonce=request.response_nonce, version=request.version_info,
                                  code=request.error_detail.code)
                    if decision.respond:
                        await self._send(context, state, attested, decision.respond, "request", fresh=True)
                    reader = asyncio.ensure_future(context.read())
                    continue  # handle every pending request before any push (P5)
                changed = mailbox.take()
                waker = asyncio.ensure_future(mailbox.event.wait())
                if REAUTH in changed and attested.must_reconnect(self.clock.now()):
                    log_event(_log, logging.WARNING, "closing SDS stream: its token expired and renewal was refused",
                              stream=stream_id, node=node, spiffe_id=str(sid), source=attested.source)
                    raise TokenError("token expired and the CA refused renewal; reconnect with a fresh token",
                                     reason="expired")
                current = {ROOTS: self.cache.roots.version}
                held = self.cache.get(sid)
                if held is not None:
                    current[KEY_CERT] = held.version
                names = state.on_change(changed, self._kind, current)
                if names:
                    await self._send(context, state, attested, names, "push", fresh=False)
        except SecmeshError as exc:
            failure = exc
        finally:
            for fut in (reader, waker):
                if fut is not None and not fut.done():
                    fut.cancel()
            if attested is not None:
                self.cache.unsubscribe(attested.identity.spiffe_id, mailbox)
            SDS_STREAMS.dec()
        if failure is not None:
            code, details = status_for(failure)
            SDS_ERRORS.labels(failure.reason).inc()
            if not isinstance(failure, TokenError):  # token rejections were logged by the attestor
                log_event(_log, logging.WARNING, "SDS stream closed with an error", stream=stream_id,
                          code=code.name, reason=failure.reason, error=failure.message,
                          spiffe_id=str(attested.identity.spiffe_id) if attested else None)
            await context.abort(code, details)

    async def _send(self, context: grpc.aio.ServicerContext, state: SdsStreamState, attested: Attested,
                    names: tuple[str, ...], trigger: str, *, fresh: bool) -> None:
        nonce = state.new_nonce()
        response, carried = await self._response(attested, names, nonce=nonce, fresh=fresh)
        await context.write(response)
        state.record_sent(response.version_info, nonce, carried)
        SDS_PUSHES.labels(trigger).inc()

    async def FetchSecrets(self, request: discovery_pb2.DiscoveryRequest,
                           context: grpc.aio.ServicerContext) -> discovery_pb2.DiscoveryResponse:
        try:
            attested = await self.attestor.attest_async(context.invocation_metadata(), what="sds-fetch")
            if request.type_url and request.type_url != SECRET_TYPE_URL:
                raise SdsError(f"type_url {request.type_url!r} is not {SECRET_TYPE_URL}", reason="malformed_request")
            names = tuple(dict.fromkeys(request.resource_names)) or (KEY_CERT, ROOTS)
            response, _ = await self._response(attested, names, nonce="", fresh=True)
        except SecmeshError as exc:
            code, details = status_for(exc)
            SDS_ERRORS.labels(exc.reason).inc()
            await context.abort(code, details)
        SDS_PUSHES.labels("fetch").inc()
        return response

    async def DeltaSecrets(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        SDS_ERRORS.labels("unimplemented").inc()
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "DeltaSecrets not implemented")


def register(server: grpc.aio.Server, service: SdsService) -> None:
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(service, server)
