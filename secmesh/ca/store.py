"""The CA's material on disk: roots, the issuing intermediate, their keys, and the trust bundle.

Layout of a CA directory (created 0700; every key 0600, written atomically):

    ca.json                  trust domain, generation (bumped by `rotate`); written last = "complete"
    root-cert.pem            current root            root-key.pem          (0600)
    intermediate-cert.pem    current issuing CA      intermediate-key.pem  (0600)
    roots.pem                every root still trusted (current first); the bundle is this minus expired
    retired/G<n>/            the previous generation's four files, kept so its CRL can still be signed
    ca.db                    the issuance ledger (SQLite)

A directory whose keys are group/world readable, or which is world-writable, is refused at
open: a CA that starts anyway would make the leak permanent.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from secmesh.ca.config import DEFAULT_INTERMEDIATE_TTL, DEFAULT_ROOT_TTL
from secmesh.ca.signer import build_intermediate, build_root
from secmesh.errors import CAError
from secmesh.identity.bundle import TrustBundle, certificates_pem, load_pem_certificates
from secmesh.identity.keys import (PrivateKey, generate_p256, load_private_key_pem, write_atomic,
                                   write_private_key)
from secmesh.identity.spiffe import TrustDomain

META = "ca.json"
ROOT_CERT, ROOT_KEY = "root-cert.pem", "root-key.pem"
INTER_CERT, INTER_KEY = "intermediate-cert.pem", "intermediate-key.pem"
ROOTS = "roots.pem"
RETIRED = "retired"
LEDGER = "ca.db"
FORMAT = 1


@dataclass(frozen=True)
class Generation:
    """One root + intermediate pair (current or retired)."""

    number: int
    root_cert: x509.Certificate
    root_key: PrivateKey
    intermediate_cert: x509.Certificate
    intermediate_key: PrivateKey


@dataclass(frozen=True)
class CaMaterial:
    directory: Path
    trust_domain: TrustDomain
    current: Generation
    roots: tuple[x509.Certificate, ...]

    @property
    def ledger_path(self) -> Path:
        return self.directory / LEDGER

    def trusted_roots(self, now: _dt.datetime) -> tuple[x509.Certificate, ...]:
        """Roots still valid at `now` (the current root always); an expired old root leaves the bundle."""
        current = self.current.root_cert
        return (current, *(r for r in self.roots if r != current and r.not_valid_after_utc > now))

    def bundle(self, now: _dt.datetime) -> TrustBundle:
        return TrustBundle(self.trust_domain, self.trusted_roots(now))

    def retired(self) -> list[Generation]:
        """Previous generations, newest first (read only when a CRL for their leaves is asked for)."""
        base = self.directory / RETIRED
        if not base.is_dir():
            return []
        gens = [_read_generation(p, int(p.name[1:])) for p in base.iterdir()
                if p.name.startswith("G") and p.name[1:].isdigit()]
        return sorted(gens, key=lambda g: g.number, reverse=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_permissions(directory: Path) -> None:
    """Refuse a world-writable CA directory or any key file readable by group or others."""
    if _mode(directory) & 0o002:
        raise CAError(f"CA directory {directory} is world-writable (mode {_mode(directory):04o}); "
                      f"run: chmod 700 {directory}", reason="bad_permissions")
    for key in sorted(directory.rglob("*key.pem")):
        if _mode(key) & 0o077:
            raise CAError(f"CA key {key} is readable by group or others (mode {_mode(key):04o}); "
                          f"run: chmod 600 {key}", reason="bad_permissions")


def _read_cert(path: Path) -> x509.Certificate:
    try:
        certs = load_pem_certificates(path.read_bytes(), what=str(path))
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc.strerror}", reason="ca_unreadable") from None
    if not certs:
        raise CAError(f"{path} holds no certificate", reason="ca_unreadable")
    return certs[0]


def _read_key(path: Path) -> PrivateKey:
    try:
        return load_private_key_pem(path.read_bytes())
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc.strerror}", reason="ca_unreadable") from None


def _read_generation(directory: Path, number: int) -> Generation:
    return Generation(number, _read_cert(directory / ROOT_CERT), _read_key(directory / ROOT_KEY),
                      _read_cert(directory / INTER_CERT), _read_key(directory / INTER_KEY))


def exists(directory: Path) -> bool:
    return any((directory / name).exists() for name in (META, ROOT_KEY, INTER_KEY))


def open_ca(directory: Path | str) -> CaMaterial:
    """Load a CA directory after checking its permissions; a clear CAError when anything is off."""
    directory = Path(directory)
    if not (directory / META).is_file():
        raise CAError(f"no CA in {directory} (run `secmesh ca init --dir {directory}`)", reason="no_ca")
    check_permissions(directory)
    try:
        meta = json.loads((directory / META).read_text())
        trust_domain = TrustDomain.parse(meta["trust_domain"])
        number = int(meta.get("generation", 1))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CAError(f"{directory / META} is unreadable: {exc}", reason="ca_unreadable") from None
    current = _read_generation(directory, number)
    roots_path = directory / ROOTS
    roots = tuple(load_pem_certificates(roots_path.read_bytes(), what=str(roots_path))) if roots_path.exists() \
        else (current.root_cert,)
    return CaMaterial(directory, trust_domain, current, roots)


def _write_generation(directory: Path, gen: Generation) -> None:
    from cryptography.hazmat.primitives import serialization

    write_private_key(directory / ROOT_KEY, gen.root_key)
    write_private_key(directory / INTER_KEY, gen.intermediate_key)
    write_atomic(directory / ROOT_CERT, gen.root_cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(directory / INTER_CERT, gen.intermediate_cert.public_bytes(serialization.Encoding.PEM))


def _new_generation(trust_domain: TrustDomain, number: int, now: _dt.datetime, root_ttl: _dt.timedelta,
                    intermediate_ttl: _dt.timedelta) -> Generation:
    root_key, inter_key = generate_p256(), generate_p256()
    root = build_root(trust_domain, root_key, now=now, ttl=root_ttl, generation=number)
    inter = build_intermediate(trust_domain, inter_key, root_cert=root, root_key=root_key, now=now,
                               ttl=intermediate_ttl, generation=number)
    return Generation(number, root, root_key, inter, inter_key)


def _write_meta(directory: Path, trust_domain: TrustDomain, number: int, now: _dt.datetime) -> None:
    meta = {"format": FORMAT, "trust_domain": trust_domain.name, "generation": number,
            "updated": now.isoformat()}
    write_atomic(directory / META, (json.dumps(meta, indent=2) + "\n").encode(), mode=0o644)


def init_ca(directory: Path | str, trust_domain: TrustDomain | str, *, now: _dt.datetime,
            root_ttl: _dt.timedelta = DEFAULT_ROOT_TTL,
            intermediate_ttl: _dt.timedelta = DEFAULT_INTERMEDIATE_TTL) -> CaMaterial:
    """Create a P-256 root and intermediate in `directory` (0700); never overwrite an existing CA."""
    directory = Path(directory)
    td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
    if exists(directory):
        raise CAError(f"a CA already exists in {directory}; refusing to overwrite it", reason="ca_exists")
    created = not directory.exists()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    elif _mode(directory) & 0o002:
        raise CAError(f"CA directory {directory} is world-writable; refusing to create keys in it",
                      reason="bad_permissions")
    gen = _new_generation(td, 1, now, root_ttl, intermediate_ttl)
    _write_generation(directory, gen)
    write_atomic(directory / ROOTS, certificates_pem([gen.root_cert]))
    _write_meta(directory, td, 1, now)
    return open_ca(directory)


def rotate_ca(directory: Path | str, *, now: _dt.datetime, root_ttl: _dt.timedelta = DEFAULT_ROOT_TTL,
              intermediate_ttl: _dt.timedelta = DEFAULT_INTERMEDIATE_TTL) -> CaMaterial:
    """A new root and a new intermediate under it; the old root stays in the bundle until it expires.

    Leaves already issued keep verifying: they carry the old intermediate in their chain and the
    bundle still holds the old root. The old generation moves to `retired/G<n>/`.
    """
    old = open_ca(directory)
    base = old.directory
    number = old.current.number + 1
    retired_dir = base / RETIRED / f"G{old.current.number}"
    retired_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(base / RETIRED, 0o700)
    _write_generation(retired_dir, old.current)
    new = _new_generation(old.trust_domain, number, now, root_ttl, intermediate_ttl)
    _write_generation(base, new)
    keep = [r for r in old.roots if r.not_valid_after_utc > now]
    write_atomic(base / ROOTS, certificates_pem([new.root_cert, *keep]))
    _write_meta(base, old.trust_domain, number, now)
    return open_ca(base)
