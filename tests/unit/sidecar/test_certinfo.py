"""`certinfo` (OpenSSL through `ssl`) reads certificates and keys exactly as `cryptography` does.

The sidecar's data plane keeps `cryptography` out of its memory (see certinfo's docstring); this
differential test is what makes leaning on `_ssl._test_decode_cert` safe: a Python whose helper
decodes differently, or lacks it, fails here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secmesh.errors import IdentityError
from secmesh.sidecar.certinfo import certificates, check_key_matches
from tests.integration.sidecar.pki import TestCA, sa


def _cert(key, *, sans: list[x509.GeneralName] | None, not_after: dt.datetime) -> x509.Certificate:  # type: ignore[no-untyped-def]
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=3)).not_valid_after(not_after))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=bool(sans))
    return b.sign(issuer_key, hashes.SHA256())


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _cryptography_view(c: x509.Certificate) -> tuple:
    try:
        uris = tuple(c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                     .get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return (c.public_bytes(serialization.Encoding.DER), c.not_valid_after_utc, uris,
            c.fingerprint(hashes.SHA256()).hex())


NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
CASES = {
    "spiffe leaf": [x509.UniformResourceIdentifier("spiffe://td/ns/a/sa/b"), x509.DNSName("localhost")],
    "two uris": [x509.UniformResourceIdentifier("spiffe://td/a"), x509.UniformResourceIdentifier("https://x/y")],
    "dns only": [x509.DNSName("example.org")],
    "no san": None,
    "odd uri bytes": [x509.UniformResourceIdentifier("spiffe://td/ns/a%2Fb/sa/c")],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("keytype", ["ec", "rsa"])
def test_fields_match_cryptography(name: str, keytype: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if keytype == "ec" else rsa.generate_private_key(65537, 2048)
    cert = _cert(key, sans=CASES[name], not_after=NOW + dt.timedelta(days=1, seconds=7))
    (info,) = certificates(_pem(cert), "test")
    assert (info.der, info.not_after, info.uris, info.fingerprint) == _cryptography_view(cert)
    assert info.fingerprint == hashlib.sha256(info.der).hexdigest()


def test_a_chain_and_a_bundle_keep_their_order_and_expiries() -> None:
    ca = TestCA("cluster.local")
    leaf = ca.issue(sa("a", "b"), ttl=dt.timedelta(hours=5))
    other = TestCA("cluster.local", name="second root")
    infos = certificates(leaf.chain_pem + ca.pem + b"\nnoise between blocks\n" + other.pem, "test")
    assert [i.der for i in infos] == [c.public_bytes(serialization.Encoding.DER) for c in (leaf.cert, ca.cert, other.cert)]
    assert [i.not_after for i in infos] == [c.not_valid_after_utc for c in (leaf.cert, ca.cert, other.cert)]
    assert certificates(b"no pem here", "test") == []


def test_a_damaged_certificate_is_bad_pem() -> None:
    pem = _pem(_cert(ec.generate_private_key(ec.SECP256R1()), sans=None, not_after=NOW))
    lines = pem.splitlines()
    damaged = b"\n".join(lines[:2] + [b"A" * len(lines[2])] + lines[3:]) + b"\n"
    with pytest.raises(IdentityError) as e:
        certificates(damaged, "test")
    assert e.value.reason == "bad_pem"


def test_key_checks() -> None:
    ca = TestCA("cluster.local")
    leaf, other = ca.issue(sa("a", "b")), ca.issue(sa("a", "c"))
    check_key_matches(leaf.chain_pem, leaf.key_pem)
    rsa_key = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for wrong in (other.key_pem, rsa_key):           # same type other values; another type
        with pytest.raises(IdentityError) as e:
            check_key_matches(leaf.chain_pem, wrong)
        assert e.value.reason == "key_mismatch"
    encrypted = leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret"))
    for bad in (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", encrypted):
        with pytest.raises(IdentityError) as e:       # never an interactive password prompt
            check_key_matches(leaf.chain_pem, bad)
        assert e.value.reason == "bad_key"


def test_the_sidecar_data_plane_does_not_load_cryptography() -> None:
    """The reason certinfo exists: ~10 MB of resident memory per worker."""
    code = ("import sys, secmesh.cli.sidecar, secmesh.sidecar.app, secmesh.sidecar.l7_setup; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'jwt', 'grpc', 'ruamel'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
