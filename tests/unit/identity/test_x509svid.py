"""X509-SVID rules and chain verification: every rule has a certificate that breaks it.

The bad certificates are minted here with `cryptography` (see `svidca.py`), and each case
asserts the specific `reason` so a refused peer is counted under the right metric label.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secmesh.errors import IdentityError
from secmesh.identity.bundle import BundleSet, TrustBundle
from secmesh.identity.spiffe import SpiffeId, TrustDomain
from secmesh.identity.x509svid import (
    REASONS,
    SvidError,
    VerifiedSvid,
    check_leaf,
    spiffe_id_of,
    verify_chain,
    verify_leaf_der,
)

from .svidca import DAY, NOW, make_intermediate, make_leaf, make_root, rsa_key

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.fixture(scope="module")
def pki():
    """Roots and intermediates for example.org and other.org, built once (keygen dominates the cost)."""
    root = make_root("example.org")
    inter = make_intermediate(root, "example.org")
    other_root = make_root("other.org")
    other_inter = make_intermediate(other_root, "other.org")
    return {
        "root": root, "inter": inter, "other_root": other_root, "other_inter": other_inter,
        "bundles": BundleSet([TrustBundle(TrustDomain("example.org"), (root.cert,)),
                              TrustBundle(TrustDomain("other.org"), (other_root.cert,))]),
    }


def _refused(chain, bundles, reason: str, now: dt.datetime = NOW) -> SvidError:
    with pytest.raises(SvidError) as info:
        verify_chain(chain, bundles, now)
    assert info.value.reason == reason, info.value.message
    assert reason in REASONS
    assert isinstance(info.value, IdentityError)
    return info.value


# --- accepted ---------------------------------------------------------------------------------

def test_good_chain_with_intermediate(pki) -> None:
    leaf = make_leaf(pki["inter"])
    got = verify_chain(leaf.chain, pki["bundles"], NOW)
    assert isinstance(got, VerifiedSvid)
    assert got.spiffe_id == SpiffeId.parse("spiffe://example.org/ns/default/sa/web")
    assert got.chain == (leaf.cert, pki["inter"].cert, pki["root"].cert)


def test_good_chain_signed_by_root_directly(pki) -> None:
    leaf = make_leaf(pki["root"], "spiffe://example.org/ns/a/sa/b")
    got = verify_chain(leaf.chain, pki["bundles"], NOW)
    assert str(got.spiffe_id) == "spiffe://example.org/ns/a/sa/b"
    assert len(got.chain) == 2


def test_rsa_leaf_and_rsa_ca(pki) -> None:
    root = make_root("example.org", key=rsa_key())
    leaf = make_leaf(root, key=rsa_key())
    bundles = BundleSet([TrustBundle(TrustDomain("example.org"), (root.cert,))])
    assert verify_chain(leaf.chain, bundles, NOW).spiffe_id.path == "/ns/default/sa/web"
    # and an RSA leaf under the EC intermediate
    assert verify_chain(make_leaf(pki["inter"], key=rsa_key()).chain, pki["bundles"], NOW)


def test_peer_that_also_sends_the_root(pki) -> None:
    leaf = make_leaf(pki["inter"])
    got = verify_chain([*leaf.chain, pki["root"].cert], pki["bundles"], NOW)
    assert got.chain[-1] == pki["root"].cert


def test_leaf_of_other_trust_domain_uses_its_own_bundle(pki) -> None:
    leaf = make_leaf(pki["other_inter"], "spiffe://other.org/ns/x/sa/y")
    assert verify_chain(leaf.chain, pki["bundles"], NOW).spiffe_id.trust_domain == TrustDomain("other.org")


def test_eku_absent_is_fine_and_extra_eku_is_fine(pki) -> None:
    verify_chain(make_leaf(pki["inter"], eku=None).chain, pki["bundles"], NOW)
    verify_chain(make_leaf(pki["inter"], eku=[SERVER, CLIENT, ExtendedKeyUsageOID.CODE_SIGNING]).chain,
                 pki["bundles"], NOW)


def test_leaf_with_subject_and_dns_san(pki) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    leaf = make_leaf(pki["inter"], subject=subject, dns=["localhost"], san_critical=False)
    verify_chain(leaf.chain, pki["bundles"], NOW)


def test_subject_with_critical_san_is_accepted(pki) -> None:
    """webpki forbids this (CA/B Forum), RFC 5280 only discourages it and SPIFFE allows it; so do we."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    verify_chain(make_leaf(pki["inter"], subject=subject, san_critical=True).chain, pki["bundles"], NOW)


def test_der_input_and_bundle_with_several_roots(pki) -> None:
    leaf = make_leaf(pki["inter"])
    ders = [c.public_bytes(serialization.Encoding.DER) for c in leaf.chain]
    bundles = BundleSet([TrustBundle(TrustDomain("example.org"), (pki["other_root"].cert, pki["root"].cert))])
    assert verify_leaf_der(ders[0], bundles, NOW, ders[1:]).spiffe_id == spiffe_id_of(ders[0])


def test_validity_edges_are_inclusive(pki) -> None:
    leaf = make_leaf(pki["inter"])
    verify_chain(leaf.chain, pki["bundles"], leaf.cert.not_valid_before_utc)
    verify_chain(leaf.chain, pki["bundles"], leaf.cert.not_valid_after_utc)


# --- refused: leaf rules ----------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"uris": ["spiffe://example.org/a", "spiffe://example.org/b"]}, "multiple_uri_sans"),
    ({"uris": ["spiffe://example.org/a", "https://example.org/b"]}, "multiple_uri_sans"),
    ({"uris": []}, "no_uri_san"),
    ({"uris": [], "dns": ["web.example.org"]}, "no_uri_san"),
    ({"uris": ["https://example.org/ns/a"]}, "invalid_spiffe_id"),
    ({"uris": ["spiffe://Example.org/ns/a"]}, "invalid_spiffe_id"),
    ({"uris": ["spiffe://example.org"]}, "invalid_spiffe_id"),        # leaf needs a non-root path
    ({"ca": True}, "leaf_is_ca"),
    ({"key_usage": {"key_cert_sign": True}}, "bad_key_usage"),
    ({"key_usage": {"crl_sign": True}}, "bad_key_usage"),
    ({"key_usage": {"digital_signature": False}}, "bad_key_usage"),
    ({"key_usage": None}, "bad_key_usage"),                            # missing
    ({"key_usage_critical": False}, "bad_key_usage"),
    ({"eku": [SERVER]}, "bad_eku"),
    ({"eku": [CLIENT]}, "bad_eku"),
    ({"eku": [ExtendedKeyUsageOID.CODE_SIGNING]}, "bad_eku"),
    ({"san_critical": False}, "bad_san"),                              # empty subject → SAN critical
], ids=lambda v: str(v) if isinstance(v, str) else None)
def test_leaf_rules(pki, kwargs, reason) -> None:
    leaf = make_leaf(pki["inter"], **kwargs)
    _refused(leaf.chain, pki["bundles"], reason)
    with pytest.raises(SvidError) as info:
        check_leaf(leaf.cert)
    assert info.value.reason == reason


def test_no_san_extension_at_all(pki) -> None:
    leaf = make_leaf(pki["inter"], uris=[], subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    err = _refused(leaf.chain, pki["bundles"], "no_uri_san")
    assert "no URI SAN" in err.message


# --- refused: time ----------------------------------------------------------------------------

def test_expired_leaf(pki) -> None:
    leaf = make_leaf(pki["inter"], not_before=NOW - 2 * DAY, not_after=NOW - DAY)
    err = _refused(leaf.chain, pki["bundles"], "expired")
    assert "expired at" in err.message


def test_not_yet_valid_leaf(pki) -> None:
    leaf = make_leaf(pki["inter"], not_before=NOW + DAY, not_after=NOW + 2 * DAY)
    _refused(leaf.chain, pki["bundles"], "not_yet_valid")


def test_expired_intermediate(pki) -> None:
    inter = make_intermediate(pki["root"], not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    leaf = make_leaf(inter, not_before=NOW - 2 * DAY)
    err = _refused(leaf.chain, pki["bundles"], "expired")
    assert "intermediate" in err.message


def test_expired_root(pki) -> None:
    root = make_root(not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    leaf = make_leaf(root)
    bundles = BundleSet([TrustBundle(TrustDomain("example.org"), (root.cert,))])
    err = _refused(leaf.chain, bundles, "expired")
    assert "trust bundle root" in err.message


def test_now_must_be_aware(pki) -> None:
    with pytest.raises(ValueError):
        verify_chain(make_leaf(pki["inter"]).chain, pki["bundles"], NOW.replace(tzinfo=None))


# --- refused: trust -----------------------------------------------------------------------------

def test_signed_by_foreign_root(pki) -> None:
    rogue_root = make_root("example.org")      # same trust domain name, different key
    leaf = make_leaf(make_intermediate(rogue_root))
    err = _refused(leaf.chain, pki["bundles"], "untrusted")
    assert "example.org" in err.message


def test_chain_of_domain_a_with_only_bundle_of_b(pki) -> None:
    leaf = make_leaf(pki["inter"])
    only_b = BundleSet([TrustBundle(TrustDomain("other.org"), (pki["other_root"].cert,))])
    err = _refused(leaf.chain, only_b, "no_bundle_for_trust_domain")
    assert "example.org" in err.message


def test_bundles_are_never_merged(pki) -> None:
    """A leaf claiming other.org but issued under example.org's CA must not pass via example.org's root."""
    leaf = make_leaf(pki["inter"], "spiffe://other.org/ns/a/sa/b")
    _refused(leaf.chain, pki["bundles"], "untrusted")


def test_missing_intermediate(pki) -> None:
    leaf = make_leaf(pki["inter"])
    _refused(leaf.chain[:1], pki["bundles"], "untrusted")


def test_empty_chain_and_garbage_der(pki) -> None:
    _refused([], pki["bundles"], "empty_chain")
    _refused([b"not a certificate"], pki["bundles"], "malformed")


# --- refused: signing certificates ------------------------------------------------------------

def test_intermediate_with_a_path_in_its_spiffe_id(pki) -> None:
    inter = make_intermediate(pki["root"], uri="spiffe://example.org/intermediate")
    err = _refused(make_leaf(inter).chain, pki["bundles"], "bad_signing_cert")
    assert "with a path" in err.message


def test_intermediate_not_a_ca(pki) -> None:
    inter = make_intermediate(pki["root"], ca=False)
    _refused(make_leaf(inter).chain, pki["bundles"], "bad_signing_cert")


def test_intermediate_without_key_cert_sign(pki) -> None:
    inter = make_intermediate(pki["root"], key_cert_sign=False)
    _refused(make_leaf(inter).chain, pki["bundles"], "bad_signing_cert")


def test_root_with_a_path_in_its_spiffe_id() -> None:
    root = make_root(uri="spiffe://example.org/root")
    bundles = BundleSet([TrustBundle(TrustDomain("example.org"), (root.cert,))])
    _refused(make_leaf(root).chain, bundles, "bad_signing_cert")


def test_intermediate_without_spiffe_id_is_fine(pki) -> None:
    inter = make_intermediate(pki["root"], uri=None)
    verify_chain(make_leaf(inter).chain, pki["bundles"], NOW)


# --- spiffe_id_of -------------------------------------------------------------------------------

def test_spiffe_id_of_reads_the_one_uri_san(pki) -> None:
    leaf = make_leaf(pki["inter"], "spiffe://example.org/Mixed/Case")
    assert str(spiffe_id_of(leaf.cert)) == "spiffe://example.org/Mixed/Case"
    assert spiffe_id_of(pki["inter"].cert) == TrustDomain("example.org").id


def test_verification_is_fast(pki) -> None:
    """The sidecar verifies every peer; keep it well under a millisecond (measured ~0.2 ms)."""
    leaf = make_leaf(pki["inter"])
    verify_chain(leaf.chain, pki["bundles"], NOW)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        verify_chain(leaf.chain, pki["bundles"], NOW)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 0.005, per_call
