"""CA directory: init (modes, refusal to overwrite), permission refusal, rotation overlap."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography.x509.verification import PolicyBuilder, Store

from secmesh.ca.signer import Signer, TtlPolicy
from secmesh.ca.store import check_permissions, init_ca, open_ca, rotate_ca
from secmesh.clock import FakeClock
from secmesh.errors import CAError
from secmesh.identity.keys import generate_p256
from secmesh.identity.spiffe import SpiffeId


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_keys_0600_in_a_0700_dir(tmp_path: Path, clock: FakeClock) -> None:
    material = init_ca(tmp_path / "new" / "ca", "example.org", now=clock.now())
    d = material.directory
    assert _mode(d) == 0o700
    assert _mode(d / "root-key.pem") == 0o600 and _mode(d / "intermediate-key.pem") == 0o600
    assert material.trust_domain.name == "example.org" and material.current.number == 1
    assert [k for k in os.listdir(d) if k.endswith(".tmp")] == []


def test_init_refuses_to_overwrite(tmp_path: Path, clock: FakeClock) -> None:
    init_ca(tmp_path / "ca", "example.org", now=clock.now())
    before = (tmp_path / "ca" / "root-key.pem").read_bytes()
    with pytest.raises(CAError) as err:
        init_ca(tmp_path / "ca", "other.org", now=clock.now())
    assert err.value.reason == "ca_exists"
    assert (tmp_path / "ca" / "root-key.pem").read_bytes() == before


def test_group_readable_key_is_refused(material, tmp_path: Path) -> None:
    key = material.directory / "intermediate-key.pem"
    key.chmod(0o640)
    with pytest.raises(CAError) as err:
        open_ca(material.directory)
    assert err.value.reason == "bad_permissions" and "chmod 600" in err.value.message


def test_world_writable_dir_is_refused(material) -> None:
    material.directory.chmod(0o777)
    try:
        with pytest.raises(CAError, match="world-writable"):
            check_permissions(material.directory)
    finally:
        material.directory.chmod(0o700)


def test_missing_ca_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="secmesh ca init"):
        open_ca(tmp_path / "nothing")


def _verify(leaf, chain, roots, when):
    verifier = PolicyBuilder().store(Store(list(roots))).time(when).build_client_verifier()
    return verifier.verify(leaf, chain)


def test_rotate_overlaps_old_root_until_it_expires(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    old = init_ca(tmp_path / "ca", "example.org", now=clock.now(), root_ttl=dt.timedelta(days=30),
                  intermediate_ttl=dt.timedelta(days=30))
    ttl = TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=90))
    g1 = old.current
    sid = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
    old_leaf = Signer(g1.intermediate_cert, g1.intermediate_key, root=g1.root_cert, ttl=ttl).sign(
        generate_p256().public_key(), sid, now=clock.now(), ttl=dt.timedelta(hours=24))

    clock.advance(dt.timedelta(hours=1))
    new = rotate_ca(tmp_path / "ca", now=clock.now(), root_ttl=dt.timedelta(days=365),
                    intermediate_ttl=dt.timedelta(days=365))
    g2 = new.current
    assert g2.number == 2 and g2.root_cert != g1.root_cert
    assert g2.intermediate_cert.issuer == g2.root_cert.subject
    g2.intermediate_cert.verify_directly_issued_by(g2.root_cert)
    roots = new.trusted_roots(clock.now())
    assert roots == (g2.root_cert, g1.root_cert)  # both in the bundle, new first
    assert len(new.bundle(clock.now()).x509_authorities) == 2
    # an old leaf still verifies against the bundle; a new one too
    _verify(old_leaf.certificate, [g1.intermediate_cert], roots, clock.now())
    new_leaf = Signer(g2.intermediate_cert, g2.intermediate_key, root=g2.root_cert, ttl=ttl).sign(
        generate_p256().public_key(), sid, now=clock.now(), ttl=dt.timedelta(hours=24))
    _verify(new_leaf.certificate, [g2.intermediate_cert], roots, clock.now())
    # retired generation kept (for its CRL) with 0600 keys
    retired = new.retired()
    assert [g.number for g in retired] == [1] and retired[0].intermediate_cert == g1.intermediate_cert
    assert _mode(tmp_path / "ca" / "retired" / "G1" / "root-key.pem") == 0o600
    # once the old root has expired it leaves the bundle
    clock.advance(dt.timedelta(days=31))
    assert new.trusted_roots(clock.now()) == (g2.root_cert,)
    # and a later rotation drops it from roots.pem
    third = rotate_ca(tmp_path / "ca", now=clock.now())
    assert g1.root_cert not in third.roots and g2.root_cert in third.roots
