"""`secmesh svid …`: verify and inspect X.509-SVIDs from PEM files.

`verify` applies exactly the rules the sidecar applies to a peer (`secmesh.identity.x509svid`),
so an operator can ask "would this chain be accepted?" offline. Exit codes: 0 valid, 1 invalid
(the chain is what is being judged, so an unreadable *chain* content is "invalid"), 2 usage error
(bad flags, unreadable files, a bundle that is not a bundle).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import NoReturn

import click
from cryptography import x509

from secmesh.errors import IdentityError
from secmesh.identity.bundle import BundleSet, TrustBundle, load_pem_certificates
from secmesh.identity.spiffe import InvalidSpiffeId, TrustDomain


@click.group(name="svid")
def cli() -> None:
    """X.509-SVID tools."""


def _read(path: str, what: str, param: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {what} {path}: {exc.strerror or exc}", param_hint=param) from None


def _bundle(spec: str) -> TrustBundle:
    """`TD=FILE`: FILE is PEM roots, or a SPIFFE bundle (JWKS JSON) when it starts with '{'."""
    td_text, sep, path = spec.partition("=")
    if not sep or not td_text or not path:
        raise click.BadParameter(f"{spec!r} is not TRUST_DOMAIN=FILE", param_hint="--bundle")
    try:
        td = TrustDomain.parse(td_text)
    except InvalidSpiffeId as exc:
        raise click.BadParameter(f"invalid trust domain {td_text!r}: {exc.message}", param_hint="--bundle") from None
    data = _read(path, "bundle", "--bundle")
    try:
        if data.lstrip().startswith(b"{"):
            bundle = TrustBundle.from_spiffe_jwks(td, json.loads(data))
            if not bundle.x509_authorities:
                raise IdentityError(f"{path} holds no x509-svid authority", reason="empty_bundle")
            return bundle
        return TrustBundle.from_pem(td, data, what=path)
    except (IdentityError, ValueError) as exc:
        message = exc.message if isinstance(exc, IdentityError) else str(exc)
        raise click.BadParameter(f"bundle for {td}: {message}", param_hint="--bundle") from None


def _parse_time(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.timezone.utc)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time", param_hint="--at") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _fail(error: str, reason: str) -> NoReturn:
    click.echo(json.dumps({"valid": False, "error": error, "reason": reason}))
    sys.exit(1)


def _certificates(data: bytes, path: str) -> list[x509.Certificate]:
    """The PEM certificates in `data`; a file without any is "empty", a broken one "malformed"."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        _fail(f"{path} holds no PEM certificate", "empty_chain")
    try:
        return load_pem_certificates(data, what=path)
    except IdentityError as exc:
        _fail(exc.message, "malformed")


@cli.command("verify")
@click.option("--chain", "chain_path", required=True, metavar="CHAIN.pem",
              help="PEM file: the leaf SVID first, then any intermediates.")
@click.option("--bundle", "bundle_specs", multiple=True, required=True, metavar="TD=BUNDLE.pem",
              help="Trust bundle of one trust domain (PEM roots or SPIFFE JWKS). Repeatable.")
@click.option("--at", "at", default=None, metavar="TIME",
              help="Verify as of this ISO 8601 time instead of now (e.g. 2026-01-01T00:00:00Z).")
def verify_cmd(chain_path: str, bundle_specs: tuple[str, ...], at: str | None) -> None:
    """Verify an X.509-SVID chain against per-trust-domain bundles.

    Prints {"valid": true, "spiffe_id": …} and exits 0, or {"valid": false, "error": …, "reason": …}
    and exits 1. The chain is checked against the bundle of its leaf's trust domain only.
    """
    from secmesh.identity.x509svid import SvidError, verify_chain

    bundles = BundleSet([_bundle(spec) for spec in bundle_specs])
    now = _parse_time(at)
    chain = _certificates(_read(chain_path, "chain", "--chain"), chain_path)
    try:
        verified = verify_chain(chain, bundles, now)
    except SvidError as exc:
        _fail(exc.message, exc.reason)
    click.echo(json.dumps({"valid": True, "spiffe_id": str(verified.spiffe_id)}))


def _key_type(cert: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    key = cert.public_key()  # type: ignore[attr-defined]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


@cli.command("inspect")
@click.argument("cert_path", metavar="CERT.pem")
def inspect_cmd(cert_path: str) -> None:
    """Print the first certificate of CERT.pem as JSON: SPIFFE ID, serial, validity, issuer, key type.

    Only reads the certificate; use `verify` to judge it. Exit 1 if the file holds no certificate.
    """
    from secmesh.identity.x509svid import SvidError, spiffe_id_of

    certs = _certificates(_read(cert_path, "certificate", "CERT.pem"), cert_path)
    cert = certs[0]
    out: dict[str, object] = {}
    try:
        out["spiffe_id"] = str(spiffe_id_of(cert))
    except SvidError as exc:
        out["spiffe_id"] = None
        out["spiffe_id_error"] = exc.message
    out.update(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        key_type=_key_type(cert),
        certificates_in_file=len(certs),
    )
    click.echo(json.dumps(out))
