"""SPIFFE Workload API (`SpiffeWorkloadAPI`) on the agent's socket, next to SDS (as SPIRE serves both).

Registered by hand under the spec's wire name, so paths are `/SpiffeWorkloadAPI/FetchX509SVID`
and so on, while our message classes live in the `secmesh.workload.v1` proto package (P1).
Every call must carry `workload.spiffe.io: true`; without it → INVALID_ARGUMENT (clients must
not retry). A caller with no acceptable token has no identity → PERMISSION_DENIED (clients
retry with backoff); the CA unreachable with nothing cached → UNAVAILABLE. Streams send the
full state first and again on every change (rotation, new roots). Methods not registered here
(the WIT-SVID profile) are answered UNIMPLEMENTED by grpc itself, as the spec requires.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable

import grpc
import grpc.aio
from google.protobuf import struct_pb2

from secmesh.agent.attest import Attested, Attestor
from secmesh.agent.cache import REAUTH, SecretCache
from secmesh.agent.jwt_authority import JwtAuthority
from secmesh.agent.material import Material
from secmesh.agent.metrics import WORKLOAD_API
from secmesh.agent.rotator import IdentityManager
from secmesh.agent.sds import Mailbox
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.errors import CAError, IdentityError, SecmeshError
from secmesh.identity.spiffe import SpiffeId
from secmesh.identity.tokens import TokenError
from secmesh.log import log_event
from secmesh.proto import workload_pb2 as pb

SERVICE = "SpiffeWorkloadAPI"
HEADER = "workload.spiffe.io"
_log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _refusal(exc: SecmeshError) -> _Refused:
    if isinstance(exc, TokenError):
        return _Refused(grpc.StatusCode.PERMISSION_DENIED, f"no identity issued: workload token rejected: {exc.reason}")
    if isinstance(exc, CAError):
        return _Refused(grpc.StatusCode.UNAVAILABLE, f"no SVID available yet: certificate authority {exc.reason}")
    if isinstance(exc, IdentityError):
        return _Refused(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
    return _Refused(grpc.StatusCode.INTERNAL, exc.reason)


class WorkloadApi:
    def __init__(self, attestor: Attestor, manager: IdentityManager, cache: SecretCache, jwt: JwtAuthority, *,
                 jwt_ttl_seconds: float = 300, clock: Clock = SYSTEM_CLOCK) -> None:
        self.attestor = attestor
        self.manager = manager
        self.cache = cache
        self.jwt = jwt
        self.jwt_ttl_seconds = jwt_ttl_seconds
        self.clock = clock
        self.td_id = str(jwt.trust_domain.id)

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_header(context: grpc.aio.ServicerContext) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == HEADER and value == "true":
                return
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    async def _attest(self, context: grpc.aio.ServicerContext, method: str) -> Attested:
        try:
            return await self.attestor.attest_async(context.invocation_metadata(), what=f"workload-api.{method}")
        except TokenError as exc:
            raise _refusal(exc) from None

    def _x509_response(self, material: Material) -> pb.X509SVIDResponse:
        roots = self.cache.roots
        return pb.X509SVIDResponse(svids=[pb.X509SVID(
            spiffe_id=str(material.spiffe_id), x509_svid=material.chain_der, x509_svid_key=material.key_der,
            bundle=roots.der)])

    def _bundles_response(self) -> pb.X509BundlesResponse:
        return pb.X509BundlesResponse(bundles={self.td_id: self.cache.roots.der})

    async def _fail(self, context: grpc.aio.ServicerContext, method: str, refused: _Refused) -> None:
        WORKLOAD_API.labels(method, refused.code.name).inc()
        if refused.code != grpc.StatusCode.PERMISSION_DENIED:  # token refusals are logged by the attestor
            log_event(_log, logging.WARNING, "workload API call refused", method=method, code=refused.code.name,
                      error=refused.details)
        await context.abort(refused.code, refused.details)

    # --- X.509 profile ---------------------------------------------------------------------
    async def fetch_x509_svid(self, request: pb.X509SVIDRequest,
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.X509SVIDResponse]:
        method = "FetchX509SVID"
        mailbox = Mailbox()
        sid: SpiffeId | None = None
        try:
            self._check_header(context)
            attested = await self._attest(context, method)
            sid = attested.identity.spiffe_id
            self.cache.subscribe(sid, mailbox)
            try:
                material = await self.manager.get(attested)
            except SecmeshError as exc:
                raise _refusal(exc) from None
            WORKLOAD_API.labels(method, "OK").inc()
            sent = (material.version, self.cache.roots.version)
            yield self._x509_response(material)
            while True:
                await mailbox.event.wait()
                if REAUTH in mailbox.take() and attested.must_reconnect(self.clock.now()):
                    raise _Refused(grpc.StatusCode.PERMISSION_DENIED,
                                   "workload token expired and renewal was refused; reconnect with a fresh token")
                current = self.cache.get(sid)
                if current is not None and (current.version, self.cache.roots.version) != sent:
                    sent = (current.version, self.cache.roots.version)
                    yield self._x509_response(current)
        except _Refused as refused:
            await self._fail(context, method, refused)
        finally:
            if sid is not None:
                self.cache.unsubscribe(sid, mailbox)

    async def fetch_x509_bundles(self, request: pb.X509BundlesRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[pb.X509BundlesResponse]:
        method = "FetchX509Bundles"
        mailbox = Mailbox()
        try:
            self._check_header(context)
            self.cache.subscribe(None, mailbox)
            if not self.cache.roots.certs:
                raise _Refused(grpc.StatusCode.UNAVAILABLE, "no trust bundle available yet")
            WORKLOAD_API.labels(method, "OK").inc()
            yield self._bundles_response()
            while True:
                await mailbox.event.wait()
                mailbox.take()
                yield self._bundles_response()
        except _Refused as refused:
            await self._fail(context, method, refused)
        finally:
            self.cache.unsubscribe(None, mailbox)

    # --- JWT profile -----------------------------------------------------------------------
    async def fetch_jwt_svid(self, request: pb.JWTSVIDRequest, context: grpc.aio.ServicerContext) -> pb.JWTSVIDResponse:
        method = "FetchJWTSVID"
        try:
            self._check_header(context)
            audiences = [a for a in request.audience if a]
            if not audiences:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
            attested = await self._attest(context, method)
            sid = attested.identity.spiffe_id
            if request.spiffe_id and request.spiffe_id != str(sid):
                raise _Refused(grpc.StatusCode.PERMISSION_DENIED, f"caller is not entitled to {request.spiffe_id}")
            token = self.jwt.mint(sid, audiences, now=self.clock.now(), ttl_seconds=self.jwt_ttl_seconds)
        except _Refused as refused:
            await self._fail(context, method, refused)
        WORKLOAD_API.labels(method, "OK").inc()
        return pb.JWTSVIDResponse(svids=[pb.JWTSVID(spiffe_id=str(sid), svid=token)])

    async def fetch_jwt_bundles(self, request: pb.JWTBundlesRequest,
                                context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JWTBundlesResponse]:
        method = "FetchJWTBundles"
        try:
            self._check_header(context)
        except _Refused as refused:
            await self._fail(context, method, refused)
        WORKLOAD_API.labels(method, "OK").inc()
        yield pb.JWTBundlesResponse(bundles={self.td_id: self.jwt.bundle_json()})
        await asyncio.Event().wait()  # the key never changes while the agent runs; hold the stream open

    async def validate_jwt_svid(self, request: pb.ValidateJWTSVIDRequest,
                                context: grpc.aio.ServicerContext) -> pb.ValidateJWTSVIDResponse:
        method = "ValidateJWTSVID"
        try:
            self._check_header(context)
            if not request.audience:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
            if not request.svid:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
            try:
                sid, claims = self.jwt.validate(request.svid, request.audience, now=self.clock.now())
            except IdentityError as exc:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid JWT-SVID: {exc.reason}: {exc.message}") \
                    from None
        except _Refused as refused:
            await self._fail(context, method, refused)
        claims_struct = struct_pb2.Struct()
        claims_struct.update(claims)
        WORKLOAD_API.labels(method, "OK").inc()
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(sid), claims=claims_struct)

    # --- registration ----------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        def us(fn: Callable[..., Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_stream_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                        response_serializer=resp.SerializeToString)

        def uu(fn: Callable[..., Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                       response_serializer=resp.SerializeToString)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "FetchX509SVID": us(self.fetch_x509_svid, pb.X509SVIDRequest, pb.X509SVIDResponse),
            "FetchX509Bundles": us(self.fetch_x509_bundles, pb.X509BundlesRequest, pb.X509BundlesResponse),
            "FetchJWTSVID": uu(self.fetch_jwt_svid, pb.JWTSVIDRequest, pb.JWTSVIDResponse),
            "FetchJWTBundles": us(self.fetch_jwt_bundles, pb.JWTBundlesRequest, pb.JWTBundlesResponse),
            "ValidateJWTSVID": uu(self.validate_jwt_svid, pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse),
        })
