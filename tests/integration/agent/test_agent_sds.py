"""`secmesh ca serve` + `secmesh agent` as processes; an Envoy-style SDS client on the xds-protos stubs."""

from __future__ import annotations

import asyncio
import os
import stat

import grpc
import grpc.aio
import pytest
from cryptography import x509

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from envoy.service.secret.v3 import sds_pb2_grpc

from secmesh.agent.sds_state import version_counter
from tests.integration.agent.agent_env import start_agent, start_ca
from tests.support.proc import wait_until
from tests.unit.agent.sdsclient import Client, check_pair, secrets, uri_of

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

OWN = "spiffe://cluster.local/ns/default/sa/workload"


def test_default_rootca_ack_and_push_on_rotation(pki, agent) -> None:
    assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o660

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as ch:
            c = Client(ch)  # no metadata: the agent's own workload (token file), as istio-agent
            await c.send()
            r1 = await c.recv()
            got = secrets(r1)
            assert set(got) == {"default", "ROOTCA"}
            leaf1 = check_pair(got["default"])
            assert uri_of(leaf1) == OWN
            roots = x509.load_pem_x509_certificates(got["ROOTCA"].validation_context.trusted_ca.inline_bytes)
            assert roots == x509.load_pem_x509_certificates(pki.roots.read_bytes())
            await c.send(resp=r1)  # ACK
            versions = [version_counter(r1.version_info)]
            serials = {leaf1.serial_number}
            for _ in range(2):  # 6s leaves rotate at ~3s: two pushes
                r = await c.recv(timeout=8)
                assert list(secrets(r)) == ["default"]
                leaf = check_pair(secrets(r)["default"])  # key and cert always together
                assert uri_of(leaf) == OWN and leaf.serial_number not in serials
                serials.add(leaf.serial_number)
                versions.append(version_counter(r.version_info))
                await c.send(resp=r)
            assert versions == sorted(versions) and len(set(versions)) == 3
            c.close()

    asyncio.run(main())
    status, text = agent.http("/metrics")
    assert status == 200
    assert 'secmesh_agent_cert_expiry_seconds{spiffe_id="spiffe://cluster.local/ns/default/sa/workload"}' in text
    assert "secmesh_agent_identities 1.0" in text and "secmesh_agent_root_expiry_seconds" in text
    assert 'secmesh_agent_sds_pushes_total{trigger="push"}' in text


def test_bad_tokens_are_refused_with_reasons(pki, agent) -> None:
    cases = [
        (pki.issuer.token("shop", "cart", ttl=-600), "expired"),
        (pki.issuer.token("shop", "cart", audience="not-istio"), "wrong_audience"),
        (pki.issuer.token(sub="system:admin"), "bad_subject"),
        ("garbage", "malformed"),
    ]

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as ch:
            fetch = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).FetchSecrets
            for token, reason in cases:
                metadata = (("authorization", f"Bearer {token}"),)
                # unary FetchSecrets: the status and its reason reach the client intact
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await fetch(DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE), metadata=metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason in info.value.details()
                # StreamSecrets is refused too; the agent may refuse on the metadata before our first write
                # lands, and grpc-python then reports its own failed write as INTERNAL instead of the status
                c = Client(ch, metadata)
                try:
                    await c.send()
                except grpc.aio.AioRpcError:
                    pass
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await c.recv()
                assert info.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL)
                if info.value.code() == grpc.StatusCode.UNAUTHENTICATED:
                    assert reason in info.value.details()
            good = Client(ch, (("authorization", "Bearer " + pki.issuer.token("shop", "cart")),))
            await good.send()
            assert uri_of(check_pair(secrets(await good.recv())["default"])).endswith("/ns/shop/sa/cart")
            good.close()

    asyncio.run(main())
    text = agent.http("/metrics")[1]
    for _, reason in cases:
        assert f'secmesh_agent_tokens_rejected_total{{reason="{reason}"}}' in text
    assert token_not_logged(agent, [t for t, _ in cases])


def token_not_logged(agent, tokens) -> bool:
    out = agent.proc.output()
    return all(t not in out for t in tokens if len(t) > 20)


def test_second_agent_on_same_socket_is_refused(pki, ca, agent, tmp_path) -> None:
    second = start_agent(pki, ca[1], agent.socket, tmp_path, name="second", wait=False)
    try:
        assert second.proc.popen.wait(20) == 1
    finally:
        second.proc.stop()
    assert "refusing to take over" in second.proc.output()
    assert agent.ready()  # the first agent still serves its socket
    assert agent.http("/identities")[1].count("spiffe://") == 1


def test_ca_killed_and_restarted_while_streams_stay_open(pki, ca, agent, tmp_path) -> None:
    ca_proc, port = ca

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as ch:
            c = Client(ch)
            await c.send()
            r1 = await c.recv()
            await c.send(resp=r1)
            leaf1 = check_pair(secrets(r1)["default"])
            ca_proc.stop()
            await asyncio.to_thread(wait_until, lambda: "renewal failed" in agent.proc.output(), timeout=10,
                                    what="renewal failure logged")
            log = agent.proc.output()
            assert '"at_risk":"spiffe://cluster.local/ns/default/sa/workload"' in log and '"expires_at"' in log
            # CA comes back on the same port; the open stream gets the renewed cert without reconnecting
            restarted = await asyncio.to_thread(start_ca, pki, port, tmp_path, "ca2")
            try:
                while True:
                    r = await c.recv(timeout=15)
                    if "default" in secrets(r):
                        break
                leaf2 = check_pair(secrets(r)["default"])
                assert leaf2.serial_number != leaf1.serial_number
                assert version_counter(r.version_info) > version_counter(r1.version_info)
                c.close()
            finally:
                restarted.stop()

    asyncio.run(main())
    assert 'secmesh_agent_ca_errors_total{reason="unavailable"}' in agent.http("/metrics")[1]
