"""Secrets for `default` and `ROOTCA` as istio-agent builds them; names answered as istio-agent (or SPIRE) does."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from secmesh.agent.cache import KEY_CERT, ROOTS
from secmesh.agent.material import Roots, build_material
from secmesh.agent.secrets import SECRET_TYPE_URL, SecretEncoder, check_names, resource_kind
from secmesh.errors import SdsError
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import SpiffeId
from tests.unit.identity import svidca


@pytest.mark.parametrize("name,policy,kind", [
    ("default", "istio", KEY_CERT), ("ROOTCA", "istio", ROOTS), ("default", "reject", KEY_CERT),
    ("ROOTCA", "reject", ROOTS), ("outbound|9080||reviews", "istio", KEY_CERT),
])
def test_resource_kind(name: str, policy: str, kind: str) -> None:
    assert resource_kind(name, policy) == kind


@pytest.mark.parametrize("name,policy,reason", [
    ("custom", "reject", "unknown_resource"),
    ("file-cert:/etc/passwd~/etc/shadow", "istio", "unknown_resource"),
    ("file-root:/etc/ssl/certs", "istio", "unknown_resource"),
    ("", "istio", "malformed_request"),
    ("a\x00b", "istio", "malformed_request"),
    ("x" * 300, "istio", "malformed_request"),
])
def test_refused_names(name: str, policy: str, reason: str) -> None:
    with pytest.raises(SdsError) as info:
        check_names(["default", name], policy)
    assert info.value.reason == reason


def test_secrets_carry_inline_pem_and_are_memoized() -> None:
    root = svidca.make_root()
    inter = svidca.make_intermediate(root)
    key = generate_p256()
    sid = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
    leaf = svidca.make_leaf(inter, str(sid), key=key)
    chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf.cert, inter.cert, root.cert)]
    m = build_material(sid, key, chain, svidca.NOW).with_version(7)
    roots = Roots.of([root.cert], 3)
    enc = SecretEncoder()
    packed = enc.encode("default", KEY_CERT, m, roots)
    assert packed.type_url == SECRET_TYPE_URL
    s = secret_pb2.Secret()
    packed.Unpack(s)
    assert s.name == "default" and s.tls_certificate.certificate_chain.inline_bytes == m.chain_pem
    assert s.tls_certificate.private_key.inline_bytes == m.key_pem
    assert enc.encode("default", KEY_CERT, m, roots) is packed  # serialized once per version
    r = secret_pb2.Secret()
    enc.encode("ROOTCA", ROOTS, None, roots).Unpack(r)
    assert r.validation_context.trusted_ca.inline_bytes == root.pem()
    other = secret_pb2.Secret()
    enc.encode("spiffe://x", KEY_CERT, m, roots).Unpack(other)
    assert other.name == "spiffe://x" and other.tls_certificate.private_key.inline_bytes == m.key_pem
