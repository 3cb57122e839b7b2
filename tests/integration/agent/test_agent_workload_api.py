"""The real py-spiffe client (`WorkloadApiClient`, `X509Source`) against `secmesh agent` as a process."""

from __future__ import annotations

import threading

import grpc
import pytest
from spiffe import WorkloadApiClient, X509Source

from tests.integration.agent.agent_env import start_agent
from tests.support.proc import wait_until

OWN = "spiffe://cluster.local/ns/default/sa/workload"


def test_py_spiffe_fetches_svid_bundle_jwt_and_sees_rotation(pki, agent) -> None:
    target = f"unix:{agent.socket}"
    with WorkloadApiClient(socket_path=target) as client:
        svid = client.fetch_x509_svid()
        assert str(svid.spiffe_id) == OWN
        assert svid.leaf.public_key().public_numbers() == svid.private_key.public_key().public_numbers()
        bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None and len(bundle.x509_authorities) == 1
        jwt_svid = client.fetch_jwt_svid(audience={"payments"})
        assert str(jwt_svid.spiffe_id) == OWN and jwt_svid.audience == {"payments"}
        assert str(client.validate_jwt_svid(jwt_svid.token, "payments").spiffe_id) == OWN
        with pytest.raises(Exception):
            client.validate_jwt_svid(jwt_svid.token, "someone-else")
        jwt_bundles = client.fetch_jwt_bundles()
        assert jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain) is not None

    source = X509Source(socket_path=target, timeout_in_seconds=10)
    try:
        first = source.get_x509_context().default_svid.leaf.serial_number
        rotated = threading.Event()
        source.subscribe_for_updates(
            lambda: rotated.set() if source.get_x509_context().default_svid.leaf.serial_number != first else None)
        assert rotated.wait(10), "X509Source saw no rotation"
        ctx = source.get_x509_context()
        assert str(ctx.default_svid.spiffe_id) == OWN
    finally:
        source.close()


def test_security_header_and_bad_token(pki, agent) -> None:
    with grpc.insecure_channel(f"unix:{agent.socket}") as ch:
        call = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call(b"")))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "security header" in info.value.details()
        md = (("workload.spiffe.io", "true"), ("authorization", "Bearer " + pki.issuer.token(ttl=-600)))
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call(b"", metadata=md)))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in info.value.details()
        wit = ch.unary_stream("/SpiffeWorkloadAPI/FetchWITSVID", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(wit(b"", metadata=(("workload.spiffe.io", "true"),))))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_clients_get_a_cert_again_after_agent_restart(pki, ca, agent, tmp_path) -> None:
    source = X509Source(socket_path=f"unix:{agent.socket}", timeout_in_seconds=10)
    try:
        before = source.get_x509_context().default_svid.leaf.serial_number
        agent.proc.stop()
        restarted = start_agent(pki, ca[1], agent.socket, tmp_path, name="agent2")
        try:
            wait_until(lambda: source.get_x509_context().default_svid.leaf.serial_number != before, timeout=15,
                       what="X509Source update after agent restart")
            with WorkloadApiClient(socket_path=f"unix:{agent.socket}") as client:
                assert str(client.fetch_x509_svid().spiffe_id) == OWN
        finally:
            restarted.proc.stop()
    finally:
        source.close()
