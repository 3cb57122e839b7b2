"""SPIFFE ID and trust-domain rules (SPIFFE-ID standard §2), table-driven, valid and invalid."""

from __future__ import annotations

import pytest

from secmesh.errors import IdentityError
from secmesh.identity.spiffe import (
    MAX_ID_BYTES,
    MAX_TRUST_DOMAIN_BYTES,
    InvalidSpiffeId,
    SpiffeId,
    TrustDomain,
    is_valid,
)

TD_255 = "a" * 251 + ".org"  # exactly 255 bytes
assert len(TD_255) == MAX_TRUST_DOMAIN_BYTES


def _id_of_length(n: int) -> str:
    head = "spiffe://example.org"
    body = n - len(head)
    out = ""
    while len(out) < body:  # segments of up to 100 chars, each preceded by '/'
        take = min(100, body - len(out) - 1)
        if take <= 0:
            break
        out += "/" + "s" * take
    assert len(head + out) == n
    return head + out


VALID = [
    # (id, trust_domain, path)
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/ns/foo/sa/bar", "example.org", "/ns/foo/sa/bar"),
    ("spiffe://example.org/Path/With/UPPER", "example.org", "/Path/With/UPPER"),
    ("spiffe://cluster.local/ns/default/sa/default", "cluster.local", "/ns/default/sa/default"),
    ("spiffe://a-b_c.d9/x.y-z_1", "a-b_c.d9", "/x.y-z_1"),
    ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("spiffe://td/...", "td", "/..."),          # only '.' and '..' are dot segments
    ("spiffe://td/.a/a./..b", "td", "/.a/a./..b"),
    ("spiffe://td/-/_/0", "td", "/-/_/0"),
    (f"spiffe://{TD_255}/x", TD_255, "/x"),
    (_id_of_length(MAX_ID_BYTES), "example.org", _id_of_length(MAX_ID_BYTES)[len("spiffe://example.org"):]),
]

INVALID = [
    # (id, substring of the error)
    ("", "cannot be empty"),
    ("SPIFFE://example.org/x", "scheme"),
    ("Spiffe://example.org/x", "scheme"),
    ("spiffe:/example.org/x", "scheme"),
    ("spiffe:example.org/x", "scheme"),
    ("https://example.org/x", "scheme"),
    ("example.org/x", "scheme"),
    (" spiffe://example.org/x", "scheme"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///x", "trust domain is missing"),
    ("spiffe://Example.org/x", "lowercase"),
    ("spiffe://EXAMPLE.ORG", "lowercase"),
    ("spiffe://example.org:8080/x", "port"),
    ("spiffe://example.org:/x", "port"),
    ("spiffe://user@example.org/x", "userinfo"),
    ("spiffe://user:pw@example.org/x", "trust domain"),
    ("spiffe://exa%41mple.org/x", "percent"),
    ("spiffe://[::1]/x", "trust domain"),
    ("spiffe://ex ample.org/x", "trust domain"),
    ("spiffe://exämple.org/x", "trust domain"),
    ("spiffe://example.org/", "trailing slash"),
    ("spiffe://example.org/a/", "trailing slash"),
    ("spiffe://example.org//a", "empty segments"),
    ("spiffe://example.org/a//b", "empty segments"),
    ("spiffe://example.org/.", "dot segments"),
    ("spiffe://example.org/..", "dot segments"),
    ("spiffe://example.org/./a", "dot segments"),
    ("spiffe://example.org/a/../b", "dot segments"),
    ("spiffe://example.org/a?x=1", "query"),
    ("spiffe://example.org?x=1", "query"),
    ("spiffe://example.org/a#frag", "fragment"),
    ("spiffe://example.org#frag", "fragment"),
    ("spiffe://example.org/a%20b", "percent"),
    ("spiffe://example.org/%2e%2e", "percent"),
    ("spiffe://example.org/a b", "path segment characters"),
    ("spiffe://example.org/a:b", "path segment characters"),
    ("spiffe://example.org/a@b", "path segment characters"),
    ("spiffe://example.org/ü", "path segment characters"),
    ("spiffe://example.org/a\nb", "path segment characters"),
    ("spiffe://example.org/x ", "path segment characters"),
    ("spiffe://example.org/a\\b", "path segment characters"),
    (f"spiffe://{'a' * 252 + '.org'}/x", "longer than 255"),
    (_id_of_length(MAX_ID_BYTES + 1), "longer than 2048"),
    ("spiffe://example.org/" + "é" * 1100, "longer than 2048"),  # bytes, not characters, count
]


@pytest.mark.parametrize(("text", "td", "path"), VALID, ids=[v[0][:60] for v in VALID])
def test_valid_ids_parse_into_their_parts(text: str, td: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert sid.trust_domain == TrustDomain(td)
    assert sid.path == path
    assert str(sid) == text
    assert is_valid(text)


@pytest.mark.parametrize(("text", "error"), INVALID, ids=[repr(v[0][:60]) for v in INVALID])
def test_invalid_ids_are_refused_with_a_reason(text: str, error: str) -> None:
    with pytest.raises(InvalidSpiffeId) as info:
        SpiffeId.parse(text)
    assert error in info.value.message
    assert info.value.reason == "invalid_spiffe_id"
    assert isinstance(info.value, IdentityError)
    assert not is_valid(text)


@pytest.mark.parametrize("value", [None, 42, b"spiffe://example.org/x", ["spiffe://x/y"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpiffeId):
        TrustDomain.parse(value)  # type: ignore[arg-type]


def test_lone_surrogates_are_refused_not_crashed() -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse("spiffe://example.org/\udc80")


@pytest.mark.parametrize(("text", "name"), [
    ("example.org", "example.org"),
    ("spiffe://example.org", "example.org"),
    ("spiffe://example.org/ns/a/sa/b", "example.org"),  # go-spiffe takes the TD of an ID
    (TD_255, TD_255),
])
def test_trust_domain_parse(text: str, name: str) -> None:
    td = TrustDomain.parse(text)
    assert td.name == name and str(td) == name
    assert td.id == SpiffeId.parse(f"spiffe://{name}")
    assert td.id.is_member_only


@pytest.mark.parametrize("text", ["", "Example.org", "example.org:443", "a@b", "exa%41", "a/b", TD_255 + "x",
                                  "spiffe://example.org/"])
def test_trust_domain_parse_refuses(text: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        TrustDomain.parse(text)


def test_service_account_helpers() -> None:
    sid = SpiffeId.for_service_account("cluster.local", "prod", "web")
    assert str(sid) == "spiffe://cluster.local/ns/prod/sa/web"
    assert (sid.namespace, sid.service_account) == ("prod", "web")
    assert not sid.is_member_only
    assert sid.member_of(TrustDomain("cluster.local")) and not sid.member_of(TrustDomain("other"))
    other = SpiffeId.parse("spiffe://td/workload/x")
    assert other.namespace is None and other.service_account is None


@pytest.mark.parametrize(("ns", "sa"), [("x/sa/admin", "web"), ("prod", "web/extra"), ("", "web"), ("..", "web"),
                                        ("prod", "a b"), ("prod", "w%2f")])
def test_service_account_refuses_segment_injection(ns: str, sa: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.for_service_account("cluster.local", ns, sa)


def test_from_segments_length_limit() -> None:
    with pytest.raises(InvalidSpiffeId, match="2048"):
        SpiffeId.from_segments("example.org", *(["s" * 100] * 21))


def test_equality_and_hashing_are_by_value() -> None:
    a = SpiffeId.parse("spiffe://example.org/a")
    assert a == SpiffeId.parse("spiffe://example.org/a")
    assert a != SpiffeId.parse("spiffe://example.org/A")  # path case is significant
    assert len({a, SpiffeId.parse("spiffe://example.org/a")}) == 1
