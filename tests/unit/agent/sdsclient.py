"""An Envoy-style SDS v3 client on the xds-protos stubs (grpc.aio), shared by unit and integration tests."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

T = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def secrets(resp: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for a in resp.resources:
        s = secret_pb2.Secret()
        assert a.Unpack(s)
        out[s.name] = s
    return out


def check_pair(s: secret_pb2.Secret) -> x509.Certificate:
    """Key and certificate in one secret belong together (never a new cert with an old key)."""
    chain = x509.load_pem_x509_certificates(s.tls_certificate.certificate_chain.inline_bytes)
    key = serialization.load_pem_private_key(s.tls_certificate.private_key.inline_bytes, None)
    assert chain[0].public_key() == key.public_key()
    return chain[0]


class Client:
    """An Envoy-style SDS client: a bidi stream, a queue of requests, ACK/NACK helpers."""

    def __init__(self, channel: grpc.aio.Channel, metadata=()) -> None:
        self.call = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(metadata=metadata)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        # one long-lived reader: cancelling a read() would cancel the whole call
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    return
                await self.inbox.put(msg)
        except grpc.aio.AioRpcError as exc:
            await self.inbox.put(exc)
        except asyncio.CancelledError:
            pass

    async def send(self, names=("default", "ROOTCA"), resp=None, error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(resource_names=list(names), type_url=T)
        req.node.id = "sidecar~10.0.0.1~cart-0.shop~shop.svc.cluster.local"
        if resp is not None:
            req.response_nonce = resp.nonce
            req.version_info = "" if error else resp.version_info
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
        await self.call.write(req)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self.inbox.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()


def uri_of(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)[0]
