"""The CA's answer is distrusted: our key, our SPIFFE ID, a valid leaf, a real chain."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization

from secmesh.agent.material import build_material, merge_roots
from secmesh.errors import CAError
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import SpiffeId
from tests.unit.identity import svidca

SID = SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
NOW = svidca.NOW


@pytest.fixture(scope="module")
def ca() -> tuple:
    root = svidca.make_root()
    inter = svidca.make_intermediate(root)
    return root, inter


def root_of(auth):
    while auth.issuer is not None:
        auth = auth.issuer
    return auth.cert


def _chain(inter, key, **kw) -> list[str]:
    leaf = svidca.make_leaf(inter, str(kw.pop("sid", SID)), key=key, **kw)
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in [leaf.cert, *inter.chain_up, root_of(inter)]]


def test_good_chain_is_packaged_once(ca) -> None:
    root, inter = ca
    key = generate_p256()
    m = build_material(SID, key, _chain(inter, key), NOW)
    assert m.spiffe_id == SID and m.leaf.public_key() == key.public_key()
    assert m.roots == (root.cert,)
    assert root.cert not in m.chain and len(m.chain) == 2  # leaf + intermediate, root served separately
    assert m.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert m.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    assert m.created_at == NOW


def test_several_certs_in_one_element_are_accepted(ca) -> None:
    _, inter = ca
    key = generate_p256()
    m = build_material(SID, key, ["".join(_chain(inter, key))], NOW)
    assert len(m.chain) == 2


@pytest.mark.parametrize("case", ["other_key", "other_id", "only_leaf", "expired", "garbage", "ca_leaf"])
def test_bad_answers_are_refused(ca, case: str) -> None:
    _, inter = ca
    key = generate_p256()
    if case == "other_key":
        chain = _chain(inter, generate_p256())
    elif case == "other_id":
        chain = _chain(inter, key, sid="spiffe://example.org/ns/default/sa/admin")
    elif case == "only_leaf":
        chain = _chain(inter, key)[:1]
    elif case == "expired":
        chain = _chain(inter, key, not_before=NOW - dt.timedelta(days=3), not_after=NOW - dt.timedelta(days=1))
    elif case == "garbage":
        chain = ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x"]
    else:
        chain = _chain(inter, key, ca=True)
    with pytest.raises(CAError) as info:
        build_material(SID, key, chain, NOW)
    assert info.value.reason == "bad_response"


def test_merge_roots_is_an_ordered_union(ca) -> None:
    root, inter = ca
    other = svidca.make_root()
    assert merge_roots([root.cert], [other.cert, root.cert]) == (root.cert, other.cert)
