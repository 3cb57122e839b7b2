"""SDS v3 client of the node agent: watch `default` + `ROOTCA` over the UDS, ACK or NACK each push.

One `StreamSecrets` stream asks for both names. Each response is merged with what is already
held (a rotation push may carry `default` alone); once both halves are known the pair is
offered to the CertStore. A response whose key does not match its certificate (or is
otherwise unusable) is NACKed with `error_detail` and the previous `version_info`, and the
last good material stays in use, as the xDS protocol prescribes. If the agent is down or the
stream breaks, we keep serving with the last good cert and reconnect with exponential
backoff (with jitter), counting each loss.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from typing import Any

from secmesh.errors import IdentityError
from secmesh.log import log_event
from secmesh.sidecar import metrics
from secmesh.sidecar.certstore import CertStore
from secmesh.sidecar.config import SdsConfig
from secmesh.sidecar.tls import check_leaf_key

log = logging.getLogger("secmesh.sidecar.sds")
SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SOURCE = "sds"
INVALID_ARGUMENT = 3
MAX_TOKEN_BYTES = 16 * 1024


def _data(ds: Any) -> bytes:
    """A DataSource as bytes; only inline sources are accepted from the agent (no file paths)."""
    which = ds.WhichOneof("specifier")
    if which == "inline_bytes":
        return bytes(ds.inline_bytes)
    if which == "inline_string":
        return ds.inline_string.encode()
    raise IdentityError(f"unsupported DataSource `{which}` (only inline data is accepted)", reason="bad_secret")


def bearer_metadata(cfg: SdsConfig) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>` from the token file, read now (kubelet rotates projected tokens).

    No file configured (or the optional default path absent) → no metadata: an agent serving a
    single pod attests with its own token file instead. A configured file that cannot be read
    raises (the stream is retried with backoff); the error never carries the token.
    """
    path = cfg.token_path()
    if path is None:
        return ()
    try:
        token = open(path, "rb").read(MAX_TOKEN_BYTES + 1).decode().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise OSError(f"cannot read token file {path}: {exc.__class__.__name__}") from None
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise OSError(f"token file {path} is empty or too large")
    return (("authorization", f"Bearer {token}"),)


class SdsClient:
    def __init__(self, cfg: SdsConfig, store: CertStore, *, node_id: str | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.node_id = node_id or f"sidecar~{socket.gethostname()}~{os.getpid()}"
        self.version = ""            # last ACKed version_info
        self.key_cert: tuple[bytes, bytes] | None = None
        self.bundle: bytes | None = None
        self.connected = False
        self.acks = 0
        self.nacks = 0

    async def run(self) -> None:
        """Keep a stream open forever (until cancelled), reconnecting with backoff."""
        delay = self.cfg.backoff_initial
        while True:
            got_response = False
            try:
                got_response = await self._stream()
                reason = "stream ended by the agent"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # grpc.aio.AioRpcError and friends: agent down or stream broken
                reason = getattr(exc, "details", lambda: None)() or repr(exc)
            self.connected = False
            metrics.SDS_DISCONNECTS.inc()
            if got_response:
                delay = self.cfg.backoff_initial
            log_event(log, logging.WARNING, "SDS stream lost; keeping the last good certificate",
                      socket=self.cfg.socket, reason=str(reason)[:300], retry_in_s=round(delay, 2),
                      holding=repr(self.store.material))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.cfg.backoff_max)

    async def _stream(self) -> bool:
        import grpc
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2
        from envoy.service.secret.v3 import sds_pb2_grpc

        names = [self.cfg.cert_resource, self.cfg.root_resource]
        got_response = False
        metadata = bearer_metadata(self.cfg)   # re-read on every (re)connect
        async with grpc.aio.insecure_channel(f"unix:{self.cfg.socket}") as channel:
            call = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(metadata=metadata or None)
            await call.write(discovery_pb2.DiscoveryRequest(
                version_info=self.version, node=base_pb2.Node(id=self.node_id), resource_names=names,
                type_url=SECRET_TYPE_URL))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return got_response
                if not got_response:
                    log_event(log, logging.INFO, "SDS stream open", socket=self.cfg.socket)
                got_response = self.connected = True
                error = self.apply(resp)
                req = discovery_pb2.DiscoveryRequest(
                    version_info=self.version, resource_names=names, type_url=SECRET_TYPE_URL,
                    response_nonce=resp.nonce)
                if error is not None:
                    from google.rpc import status_pb2

                    req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error.message))
                await call.write(req)

    def apply(self, resp: Any) -> IdentityError | None:
        """Merge one DiscoveryResponse into the held secrets; None → ACK, an error → NACK."""
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

        key_cert, bundle = self.key_cert, self.bundle
        try:
            if resp.type_url and resp.type_url != SECRET_TYPE_URL:
                raise IdentityError(f"unexpected type_url {resp.type_url}", reason="bad_secret")
            for res in resp.resources:
                secret = secret_pb2.Secret()
                if not res.Unpack(secret):
                    raise IdentityError(f"resource of type {res.type_url} is not a Secret", reason="bad_secret")
                kind = secret.WhichOneof("type")
                if secret.name == self.cfg.cert_resource and kind == "tls_certificate":
                    key_cert = (_data(secret.tls_certificate.certificate_chain),
                                _data(secret.tls_certificate.private_key))
                elif secret.name == self.cfg.root_resource and kind == "validation_context":
                    bundle = _data(secret.validation_context.trusted_ca)
                else:
                    raise IdentityError(f"unexpected secret {secret.name!r} of kind {kind}", reason="bad_secret")
            if key_cert is not None and bundle is None:
                check_leaf_key(*key_cert, now=self.store.clock.now())   # NACK a bad pair even before ROOTCA
        except IdentityError as exc:
            return self._nack(resp, exc)
        if key_cert is not None and bundle is not None:
            error = self.store.offer(key_cert[0], key_cert[1], bundle, source=SOURCE)
            if error is not None:
                return self._nack(resp, error)
        self.key_cert, self.bundle = key_cert, bundle
        self.version = resp.version_info
        self.acks += 1
        metrics.SDS_UPDATES.inc()
        return None

    def _nack(self, resp: Any, exc: IdentityError) -> IdentityError:
        self.nacks += 1
        metrics.sds_nacks(exc.reason).inc()
        log_event(log, logging.ERROR, "SDS response NACKed; keeping the last good certificate",
                  version=resp.version_info, nonce=resp.nonce, reason=exc.reason, error=exc.message)
        return exc
