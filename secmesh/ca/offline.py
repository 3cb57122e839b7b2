"""The operator commands' cores (`ca issue`, `ca list/revoke`, `ca crl`), kept out of the CLI shell.

`ca issue` writes istio-agent's file names: `key.pem` (0600; not written when the caller
brings a CSR, because then the key never left the caller), `cert-chain.pem` (leaf, then the
intermediate; the root is not repeated), `root-cert.pem` (the whole trust bundle, so a holder
keeps verifying across a root rotation).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path
from typing import Any, Iterator

from cryptography.hazmat.primitives import serialization

from secmesh.ca.config import DEFAULT_LEAF_TTL, DEFAULT_MAX_TTL
from secmesh.ca.crl import DEFAULT_NEXT_UPDATE, build_crl
from secmesh.ca.ledger import IssuanceRecord, SqliteLedger, key_id
from secmesh.ca.signer import Signer, TtlPolicy
from secmesh.ca.store import open_ca
from secmesh.errors import CAError
from secmesh.identity.csr import parse_and_verify
from secmesh.identity.keys import generate_p256, write_atomic, write_private_key
from secmesh.identity.spiffe import SpiffeId

OPERATOR_SUBJECT = "operator"


@contextlib.contextmanager
def open_ledger(ca_dir: Path | str) -> Iterator[SqliteLedger]:
    material = open_ca(ca_dir)  # refuses bad permissions before touching the log
    ledger = SqliteLedger(material.ledger_path)
    try:
        yield ledger
    finally:
        ledger.close()


def issue_to_directory(ca_dir: Path | str, spiffe_id: str, *, ttl: _dt.timedelta, csr_file: Path | None,
                       out_dir: Path, now: _dt.datetime, max_ttl: _dt.timedelta = DEFAULT_MAX_TTL) -> dict[str, Any]:
    material = open_ca(ca_dir)
    sid = SpiffeId.parse(spiffe_id)
    if not sid.member_of(material.trust_domain):
        raise CAError(f"{sid} is not in this CA's trust domain {material.trust_domain}", reason="foreign_trust_domain")
    if sid.is_member_only:
        raise CAError("a leaf SVID needs a SPIFFE ID with a path", reason="bad_spiffe_id")
    key = None
    if csr_file is not None:
        public_key = parse_and_verify(csr_file.read_bytes()).public_key()
        if (out_dir / "key.pem").exists():
            raise CAError(f"{out_dir / 'key.pem'} exists and would not match a certificate for this CSR; "
                          "remove it or choose another --out", reason="stale_key")
    else:
        key = generate_p256()
        public_key = key.public_key()
    current = material.current
    signer = Signer(current.intermediate_cert, current.intermediate_key, root=current.root_cert,
                    ttl=TtlPolicy(DEFAULT_LEAF_TTL, max_ttl))
    issued = signer.sign(public_key, sid, now=now, ttl=signer.ttl.resolve(ttl.total_seconds()))
    with open_ledger(ca_dir) as ledger:
        ledger.record([IssuanceRecord(serial=issued.serial_hex, spiffe_id=str(sid), subject=OPERATOR_SUBJECT,
                                      issuer_kid=key_id(current.intermediate_cert), not_before=issued.not_before,
                                      not_after=issued.not_after, issued_at=now)])
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    if key is not None:
        write_private_key(out_dir / "key.pem", key)
        files["key"] = str(out_dir / "key.pem")
    write_atomic(out_dir / "cert-chain.pem", (issued.leaf_pem + signer.chain_tail[0]).encode())
    write_atomic(out_dir / "root-cert.pem", material.bundle(now).to_pem())
    files["cert_chain"] = str(out_dir / "cert-chain.pem")
    files["root_cert"] = str(out_dir / "root-cert.pem")
    return {"serial": issued.serial_hex, "spiffe_id": str(sid), "not_before": issued.not_before.isoformat(),
            "not_after": issued.not_after.isoformat(), "files": files}


def crl_pem(ca_dir: Path | str, *, now: _dt.datetime, generation: int | None = None,
            next_update: _dt.timedelta = DEFAULT_NEXT_UPDATE) -> bytes:
    """CRL of the given generation's intermediate (current by default) over the leaves it issued."""
    material = open_ca(ca_dir)
    gen = material.current
    if generation is not None and generation != gen.number:
        found = [g for g in material.retired() if g.number == generation]
        if not found:
            raise CAError(f"no generation {generation} in {ca_dir}", reason="not_found")
        gen = found[0]
    with open_ledger(ca_dir) as ledger:
        revoked = ledger.revoked(issuer_kid=key_id(gen.intermediate_cert))
    crl = build_crl(gen.intermediate_cert, gen.intermediate_key, revoked, now=now, next_update=next_update)
    return crl.public_bytes(serialization.Encoding.PEM)
