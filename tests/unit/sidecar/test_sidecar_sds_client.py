"""SdsClient.apply: merging `default` and `ROOTCA`, ACK/NACK decisions, last good kept."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from secmesh.sidecar.certstore import CertStore
from secmesh.sidecar.config import SdsConfig
from secmesh.sidecar.sds_client import SECRET_TYPE_URL, SdsClient
from secmesh.sidecar.tls import ContextHolder
from tests.integration.sidecar.pki import TestCA, sa


def _any(secret: secret_pb2.Secret) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(secret)
    return a


def cert_secret(leaf, key_pem=None) -> any_pb2.Any:
    return _any(secret_pb2.Secret(name="default", tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=leaf.chain_pem),
        private_key=base_pb2.DataSource(inline_bytes=key_pem or leaf.key_pem))))


def roots_secret(ca) -> any_pb2.Any:
    return _any(secret_pb2.Secret(name="ROOTCA", validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_bytes=ca.pem))))


def response(version: str, *resources) -> discovery_pb2.DiscoveryResponse:
    return discovery_pb2.DiscoveryResponse(version_info=version, nonce="n" + version, type_url=SECRET_TYPE_URL,
                                           resources=list(resources))


def test_ack_merge_nack_and_last_good():
    ca = TestCA()
    leaf = ca.issue(sa("default", "web"))
    store = CertStore(ContextHolder())
    client = SdsClient(SdsConfig(socket="/nonexistent"), store)
    assert client.apply(response("1", cert_secret(leaf))) is None      # half: held, not yet applied
    assert store.material is None and client.version == "1"
    assert client.apply(response("2", roots_secret(ca))) is None       # the other half: applied
    assert store.material is not None and store.material.fingerprint == leaf.cert.fingerprint(
        __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256()).hex()
    held = store.material
    other = ca.issue(sa("default", "web"))
    err = client.apply(response("3", cert_secret(other, key_pem=leaf.key_pem)))
    assert err is not None and err.reason == "key_mismatch"
    assert client.version == "2" and store.material is held and client.nacks == 1
    err = client.apply(response("4", _any(secret_pb2.Secret(name="surprise", generic_secret=secret_pb2.GenericSecret()))))
    assert err is not None and err.reason == "bad_secret"
    assert client.apply(response("5", cert_secret(other))) is None
    assert store.material is not held and client.version == "5"


def test_a_mismatched_pair_is_nacked_even_before_the_roots_arrive():
    ca = TestCA()
    a, b = ca.issue(sa("x", "y")), ca.issue(sa("x", "y"))
    client = SdsClient(SdsConfig(socket="/nonexistent"), CertStore(ContextHolder()))
    err = client.apply(response("1", cert_secret(a, key_pem=b.key_pem)))
    assert err is not None and err.reason == "key_mismatch" and client.version == ""
