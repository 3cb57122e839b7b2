"""StreamSecrets / FetchSecrets / DeltaSecrets over a real UDS with xds-protos stubs (in-process CA)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from secmesh.agent.sds_state import version_counter
from secmesh.agent.secrets import SECRET_TYPE_URL
from tests.support.tokens import TokenIssuer
from tests.unit.agent.harness import agent, root_pem
from tests.unit.agent.sdsclient import Client, check_pair, secrets

T = SECRET_TYPE_URL


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


def bearer(issuer: TokenIssuer, ns: str = "shop", sa: str = "cart", **kw) -> tuple:
    return (("authorization", "Bearer " + issuer.token(ns, sa, **kw)),)


def run(coro) -> None:
    asyncio.run(coro)


def test_initial_ack_push_on_rotation_nack(tmp_path: Path, issuer: TokenIssuer) -> None:
    async def main() -> None:
        async with agent(tmp_path, issuer, ttl=2) as h, h.channel() as ch:
            c = Client(ch, bearer(issuer))
            await c.send()
            r1 = await c.recv()
            got = secrets(r1)
            assert set(got) == {"default", "ROOTCA"} and r1.type_url == T and r1.nonce
            leaf1 = check_pair(got["default"])
            assert leaf1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                .get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/shop/sa/cart"]
            assert got["ROOTCA"].validation_context.trusted_ca.inline_bytes == root_pem(h.ca)
            await c.send(resp=r1)  # ACK
            r2 = await c.recv()  # the rotation push (TTL 2s → ~1s)
            assert list(secrets(r2)) == ["default"]
            leaf2 = check_pair(secrets(r2)["default"])
            assert leaf2.serial_number != leaf1.serial_number
            assert version_counter(r2.version_info) > version_counter(r1.version_info)
            await c.send(resp=r2, error="rejected: test NACK")  # NACK: nothing comes back
            with pytest.raises(asyncio.TimeoutError):
                await c.recv(timeout=0.3)
            r3 = await c.recv()  # the next rotation is still pushed to a stream that NACKed
            assert version_counter(r3.version_info) > version_counter(r2.version_info)
            check_pair(secrets(r3)["default"])
            await c.send(resp=r3)
            c.close()

    run(main())


def test_streams_of_one_identity_share_material_and_stale_acks_are_ignored(tmp_path, issuer) -> None:
    async def main() -> None:
        async with agent(tmp_path, issuer) as h, h.channel() as ch:
            a, b = Client(ch, bearer(issuer)), Client(ch, bearer(issuer))
            await a.send()
            await b.send(["default"])
            ra, rb = await a.recv(), await b.recv()
            assert secrets(ra)["default"].tls_certificate.private_key.inline_bytes == \
                secrets(rb)["default"].tls_certificate.private_key.inline_bytes
            assert h.ca.calls == 1
            await b.send(["default", "ROOTCA"], resp=rb)  # ACK + a new name → only the new name
            rb2 = await b.recv()
            assert list(secrets(rb2)) == ["ROOTCA"]
            stale = discovery_pb2.DiscoveryRequest(resource_names=["default", "ROOTCA", "extra"], type_url=T,
                                                   response_nonce=rb.nonce, version_info=rb.version_info)
            await b.call.write(stale)  # stale nonce: ignored even though it adds a name
            with pytest.raises(asyncio.TimeoutError):
                await b.recv(timeout=0.3)
            a.close()
            b.close()

    run(main())


@pytest.mark.parametrize("policy", ["istio", "reject"])
def test_unknown_resource_names(tmp_path: Path, issuer: TokenIssuer, policy: str) -> None:
    async def main() -> None:
        async with agent(tmp_path, issuer, unknown_resource=policy) as h, h.channel() as ch:
            c = Client(ch, bearer(issuer))
            await c.send(["outbound-cert"])
            if policy == "istio":
                s = secrets(await c.recv())["outbound-cert"]
                check_pair(s)  # istio-agent serves the workload key/cert under any other name
                c.close()
            else:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await c.recv()
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "not entitled" in info.value.details()

    run(main())


@pytest.mark.parametrize("metadata,code,needle", [
    (lambda i: (), grpc.StatusCode.UNAUTHENTICATED, "missing"),
    (lambda i: bearer(i, ttl=-600), grpc.StatusCode.UNAUTHENTICATED, "expired"),
    (lambda i: bearer(i, audience="someone-else"), grpc.StatusCode.UNAUTHENTICATED, "wrong_audience"),
    (lambda i: (("authorization", "Bearer " + TokenIssuer().token()),), grpc.StatusCode.UNAUTHENTICATED,
     "unknown_key"),
])
def test_bad_tokens_refused_without_affecting_other_streams(tmp_path, issuer, metadata, code, needle) -> None:
    async def main() -> None:
        async with agent(tmp_path, issuer) as h, h.channel() as ch:
            good = Client(ch, bearer(issuer))
            await good.send()
            r = await good.recv()
            bad = Client(ch, metadata(issuer))
            await bad.send()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await bad.recv()
            assert info.value.code() == code and needle in info.value.details()
            await good.send(resp=r)
            await good.send(["default", "ROOTCA", "more"], resp=r)  # the good stream still answers
            assert list(secrets(await good.recv())) == ["more"]
            assert h.ca.calls == 1
            good.close()

    run(main())


def test_legacy_bin_header_and_token_file(tmp_path: Path, issuer: TokenIssuer) -> None:
    token_file = tmp_path / "istio-token"
    token_file.write_text(issuer.token("own", "workload"))

    async def main() -> None:
        async with agent(tmp_path, issuer, token_file=token_file) as h, h.channel() as ch:
            for md, sa in [((("istio_sds_credentials_header-bin", issuer.token("legacy", "envoy").encode()),),
                            "legacy/sa/envoy"), ((), "own/sa/workload")]:
                c = Client(ch, md)
                await c.send(["default"])
                leaf = check_pair(secrets(await c.recv())["default"])
                uri = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                    .get_values_for_type(x509.UniformResourceIdentifier)[0]
                assert uri.endswith("/ns/" + sa)
                c.close()

    run(main())


def test_malformed_requests_fetch_and_delta(tmp_path: Path, issuer: TokenIssuer) -> None:
    async def main() -> None:
        async with agent(tmp_path, issuer) as h, h.channel() as ch:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(ch)
            c = Client(ch, bearer(issuer))
            await c.call.write(discovery_pb2.DiscoveryRequest(resource_names=["default"],
                                                              type_url="type.googleapis.com/wrong"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.recv()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            resp = await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["default", "ROOTCA"],
                                                                          type_url=T), metadata=bearer(issuer))
            assert set(secrets(resp)) == {"default", "ROOTCA"}
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["default"]))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            delta = stub.DeltaSecrets(metadata=bearer(issuer))
            await delta.write(discovery_pb2.DeltaDiscoveryRequest(type_url=T))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await delta.read()
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # raw garbage on the stream: the call fails, the server keeps serving
            garbage = ch.stream_stream("/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
            call = garbage(metadata=bearer(issuer))
            await call.write(b"\xff\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(call.read(), 5)
            again = await stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["ROOTCA"]),
                                            metadata=bearer(issuer))
            assert list(secrets(again)) == ["ROOTCA"]

    run(main())


def test_stream_with_expired_token_is_closed_when_renewal_is_refused(tmp_path, issuer) -> None:
    async def main() -> None:
        async with agent(tmp_path, issuer, ttl=2) as h, h.channel() as ch:
            stale = Client(ch, bearer(issuer, ttl=-5))  # expired, but inside the 30s leeway: accepted
            await stale.send(["default"])
            r = await stale.recv()
            await stale.send(["default"], resp=r)
            h.ca.fail_next, h.ca.fail_reason = 1, "unauthenticated"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stale.recv(timeout=5)  # closed so that Envoy reconnects with a fresh token
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in info.value.details()
            fresh = Client(ch, bearer(issuer))
            await fresh.send(["default"])
            check_pair(secrets(await fresh.recv())["default"])
            fresh.close()

    run(main())
