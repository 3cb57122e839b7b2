"""Private keys: ECDSA P-256 by default, written 0600 atomically, never logged.

Writes go through a temporary file in the same directory created with mode 0600 from the
start and `os.replace`d into place, so a key is never world-readable, not even for an instant,
and a crash never leaves half a key behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secmesh.errors import IdentityError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def generate_p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (what Envoy, istio-agent and SPIRE exchange)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_key_der(key: PrivateKey) -> bytes:
    """PKCS#8 DER, unencrypted (the SPIFFE Workload API's `x509_svid_key`)."""
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"cannot read private key: {exc}", reason="bad_key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise IdentityError(f"unsupported private key type {type(key).__name__}", reason="bad_key")
    return key


def write_atomic(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically with `mode` set before any byte is written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_private_key(path: Path | str, key: PrivateKey) -> None:
    write_atomic(path, private_key_pem(key), mode=0o600)
