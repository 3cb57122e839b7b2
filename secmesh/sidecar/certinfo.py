"""What a sidecar worker needs to know about PEM certificates and keys, from the `ssl` module alone.

A worker never builds or signs a certificate. It checks the material a source hands over (the
key matches the leaf, the leaf has not expired, the bundle is not empty) and reads a few fields
(SPIFFE ID, expiry, fingerprint). Importing `cryptography.x509` for that costs about 10 MB of
resident memory per worker, mostly its Rust extension: a quarter of an L4 sidecar's footprint.
OpenSSL, loaded for TLS anyway, answers the same questions:

- `SSLContext.load_cert_chain` refuses a key that does not match the leaf, and any key or
  certificate it cannot parse;
- `_ssl._test_decode_cert` decodes a certificate into the dict `getpeercert()` returns for a
  peer (`notAfter`, `subjectAltName`). It is a private CPython helper, present unchanged from
  3.x to 3.13; `tests/unit/sidecar/test_certinfo.py` checks its reading against
  `cryptography`'s for the same certificates, so a change would fail CI, not production.

Files: OpenSSL reads certificates and keys from paths only. Each lives in a private temporary
file (0600, in /dev/shm when writable) for the duration of one call.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

from secmesh.errors import IdentityError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)
NO_PASSWORD = b""   # never OpenSSL's interactive prompt: an encrypted key is refused as `bad_key`
_MISMATCH = frozenset(("KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "NO_CERTIFICATE_ASSIGNED"))
_TMPDIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class CertInfo:
    """The fields of one certificate a worker uses."""

    der: bytes
    not_after: _dt.datetime
    uris: tuple[str, ...]          # URI SANs, in order

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


@contextlib.contextmanager
def private_file(data: bytes) -> Iterator[str]:
    """A 0600 temporary file holding `data`, removed on exit (OpenSSL only reads paths)."""
    fd, path = tempfile.mkstemp(prefix="secmesh-", suffix=".pem", dir=_TMPDIR)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def certificates(pem: bytes, what: str) -> list[CertInfo]:
    """Every certificate of a PEM document, decoded by OpenSSL; IdentityError `bad_pem` if one is not."""
    out = []
    for block in _PEM_CERT.findall(pem):
        with private_file(block + b"\n") as path:
            try:
                doc: dict[str, Any] = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]  # noqa: SLF001
                der = ssl.PEM_cert_to_DER_cert(block.decode("ascii"))
            except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
                raise IdentityError(f"cannot read certificates from {what}: {exc}", reason="bad_pem") from None
        not_after = _dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(doc["notAfter"]), _dt.timezone.utc)
        uris = tuple(v for (kind, v) in doc.get("subjectAltName", ()) if kind == "URI")
        out.append(CertInfo(der, not_after, uris))
    return out


def check_key_matches(chain_pem: bytes, key_pem: bytes) -> None:
    """OpenSSL's own check that the key belongs to the chain's leaf (and that both parse)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with private_file(chain_pem.rstrip(b"\n") + b"\n" + key_pem) as path:
        try:
            ctx.load_cert_chain(path, password=NO_PASSWORD)
        except ssl.SSLError as exc:
            # A parsable key of the leaf's type with other values, or of another type (OpenSSL files
            # it under that type's empty certificate slot): both are the wrong key, not a bad one.
            if exc.reason in _MISMATCH:
                raise IdentityError("private key does not match the leaf certificate", reason="key_mismatch") from None
            raise IdentityError(f"cannot read private key: {exc.reason or exc}", reason="bad_key") from None
