"""Follow `secmesh ca rotate` while serving: watch the CA directory, rebuild the signer, swap it.

`rotate` writes the new keys and certificates first and `ca.json` last, so a change of
`ca.json` (its inode, size or mtime: `write_atomic` replaces the file) means a complete new
generation is on disk. The watcher polls that fingerprint; polling needs no inotify, works on
every volume type (a Kubernetes Secret update is an atomic symlink swap) and costs one `stat`.

Before a new signer is used, its key must match its certificate and the certificate must be
signed by the root it claims; a half-copied directory is retried on the next poll, never
served. The trust bundle a response carries also drops a root once it expires (no file changes
then), so the watcher checks that too.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secmesh.ca.ledger import key_id
from secmesh.ca.signer import Signer, TtlPolicy
from secmesh.ca.store import META, CaMaterial, open_ca
from secmesh.errors import CAError

Fingerprint = tuple[int, int, int] | None


def fingerprint(directory: Path) -> Fingerprint:
    """(inode, size, mtime_ns) of `ca.json`, or None when it is missing."""
    try:
        st = os.stat(directory / META)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Issuing:
    """What the serving path needs from one CA generation: the signer, its key id, the bundle it sends."""

    material: CaMaterial
    signer: Signer
    issuer_kid: str
    bundle: tuple[x509.Certificate, ...]

    @property
    def generation(self) -> int:
        return self.material.current.number

    def bundle_stale(self, now: _dt.datetime) -> bool:
        """True once a root in the bundle has expired (it must leave the responses)."""
        return self.material.trusted_roots(now) != self.bundle


def _spki(key_or_cert_key: object) -> bytes:
    return key_or_cert_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                        serialization.PublicFormat.SubjectPublicKeyInfo)


def check_consistent(material: CaMaterial) -> None:
    """The issuing key matches its certificate, which its root signed: else CAError (`ca_inconsistent`)."""
    gen = material.current
    if _spki(gen.intermediate_key.public_key()) != _spki(gen.intermediate_cert.public_key()):
        raise CAError("intermediate-key.pem does not match intermediate-cert.pem", reason="ca_inconsistent")
    try:
        gen.intermediate_cert.verify_directly_issued_by(gen.root_cert)
    except (ValueError, TypeError, Exception) as exc:  # noqa: BLE001 - InvalidSignature and friends
        raise CAError(f"intermediate-cert.pem is not signed by root-cert.pem: {exc or type(exc).__name__}",
                      reason="ca_inconsistent") from None


def build_issuing(material: CaMaterial, ttl: TtlPolicy, now: _dt.datetime) -> Issuing:
    check_consistent(material)
    gen = material.current
    bundle = material.trusted_roots(now)
    signer = Signer(gen.intermediate_cert, gen.intermediate_key, root=gen.root_cert, ttl=ttl, bundle_roots=bundle)
    return Issuing(material, signer, key_id(gen.intermediate_cert), bundle)


def load_issuing(directory: Path, ttl: TtlPolicy, now: _dt.datetime) -> Issuing:
    """`open_ca` (permissions checked) + `build_issuing`."""
    return build_issuing(open_ca(directory), ttl, now)
