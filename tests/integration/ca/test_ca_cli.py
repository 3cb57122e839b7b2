"""The offline `secmesh ca` commands as a user runs them: init, issue, list, revoke, crl, bundle, rotate."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from secmesh.identity.csr import build_csr
from secmesh.identity.keys import generate_p256
from tests.support.proc import run_cli

TD = "example.org"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _ok(*args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def _openssl_verify(root: Path, chain: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain), str(chain)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "ca"
    summary = json.loads(_ok("ca", "init", "--trust-domain", TD, "--dir", str(d)).stdout)
    assert summary["trust_domain"] == TD
    return d


def test_init_modes_and_refusal_to_overwrite(ca_dir: Path) -> None:
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "root-key.pem") == 0o600 and _mode(ca_dir / "intermediate-key.pem") == 0o600
    before = (ca_dir / "root-key.pem").read_bytes()
    again = run_cli("ca", "init", "--trust-domain", TD, "--dir", str(ca_dir))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (ca_dir / "root-key.pem").read_bytes() == before


def test_issue_writes_istio_agent_files(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = json.loads(_ok("ca", "issue", f"spiffe://{TD}/ns/a/sa/b", "--dir", str(ca_dir), "--ttl", "2h",
                             "--out", str(out)).stdout)
    assert summary["spiffe_id"] == f"spiffe://{TD}/ns/a/sa/b"
    assert _mode(out / "key.pem") == 0o600
    chain = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())
    leaf = chain[0]
    assert format(leaf.serial_number, "x") == summary["serial"]
    assert leaf.not_valid_after_utc.isoformat() == summary["not_after"]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 2 * 3600 + 120
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    assert key.public_key() == leaf.public_key()
    assert _openssl_verify(out / "root-cert.pem", out / "cert-chain.pem").returncode == 0


def test_issue_with_csr_writes_no_key(ca_dir: Path, tmp_path: Path) -> None:
    key = generate_p256()
    (tmp_path / "req.csr").write_bytes(build_csr(key, f"spiffe://{TD}/ns/x/sa/y"))
    out = tmp_path / "out"
    _ok("ca", "issue", f"spiffe://{TD}/ns/c/sa/d", "--dir", str(ca_dir), "--csr", str(tmp_path / "req.csr"),
        "--out", str(out))
    assert not (out / "key.pem").exists()
    leaf = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())[0]
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/ns/c/sa/d"]


@pytest.mark.parametrize("spiffe_id, message", [("spiffe://other.org/ns/a/sa/b", "trust domain"),
                                                 (f"spiffe://{TD}", "path"), ("not-an-id", "scheme")])
def test_issue_refuses_bad_ids(ca_dir: Path, tmp_path: Path, spiffe_id: str, message: str) -> None:
    result = run_cli("ca", "issue", spiffe_id, "--dir", str(ca_dir), "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and message in result.stderr


def test_issue_ttl_over_max_and_bad_duration(ca_dir: Path, tmp_path: Path) -> None:
    result = run_cli("ca", "issue", f"spiffe://{TD}/ns/a/sa/b", "--dir", str(ca_dir), "--ttl", "91d",
                     "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and "greater than the max allowed TTL 90d" in result.stderr
    result = run_cli("ca", "issue", f"spiffe://{TD}/ns/a/sa/b", "--dir", str(ca_dir), "--ttl", "1y",
                     "--out", str(tmp_path / "o"))
    assert result.returncode == 2


def test_list_revoke_crl(ca_dir: Path, tmp_path: Path) -> None:
    summary = json.loads(_ok("ca", "issue", f"spiffe://{TD}/ns/r/sa/v", "--dir", str(ca_dir),
                             "--out", str(tmp_path / "o")).stdout)
    table = _ok("ca", "list", "--dir", str(ca_dir)).stdout
    assert summary["serial"] in table and "valid" in table
    _ok("ca", "revoke", summary["serial"], "--reason", "superseded", "--dir", str(ca_dir))
    rows = json.loads(_ok("ca", "list", "--dir", str(ca_dir), "--json").stdout)
    row = next(r for r in rows if r["serial"] == summary["serial"])
    assert row["revoked"] and row["reason"] == "superseded" and row["subject"] == "operator"
    bad = run_cli("ca", "revoke", summary["serial"], "--reason", "lost", "--dir", str(ca_dir))
    assert bad.returncode == 1 and "keyCompromise" in bad.stderr
    crl_file = tmp_path / "crl.pem"
    _ok("ca", "crl", "--dir", str(ca_dir), "--out", str(crl_file))
    text = subprocess.run(["openssl", "crl", "-in", str(crl_file), "-noout", "-text"], capture_output=True,
                          text=True)
    assert text.returncode == 0 and "Superseded" in text.stdout
    assert summary["serial"].upper() in text.stdout.replace(":", "")


def test_bundle_formats(ca_dir: Path) -> None:
    pem = _ok("ca", "bundle", "--dir", str(ca_dir)).stdout
    roots = x509.load_pem_x509_certificates(pem.encode())
    assert roots and all(r.issuer == r.subject for r in roots)
    jwks = json.loads(_ok("ca", "bundle", "--dir", str(ca_dir), "--format", "jwks").stdout)
    assert all(k["use"] == "x509-svid" and len(k["x5c"]) == 1 and "kid" not in k for k in jwks["keys"])


def test_rotate_keeps_old_leaves_verifying(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    _ok("ca", "init", "--trust-domain", TD, "--dir", str(d))
    _ok("ca", "issue", f"spiffe://{TD}/ns/old/sa/leaf", "--dir", str(d), "--out", str(tmp_path / "old"))
    rotated = json.loads(_ok("ca", "rotate", "--dir", str(d)).stdout)
    assert rotated["generation"] == 2 and rotated["bundle_roots"] == 2
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(_ok("ca", "bundle", "--dir", str(d)).stdout)
    assert len(x509.load_pem_x509_certificates(bundle.read_bytes())) == 2
    assert _openssl_verify(bundle, tmp_path / "old" / "cert-chain.pem").returncode == 0
    _ok("ca", "issue", f"spiffe://{TD}/ns/new/sa/leaf", "--dir", str(d), "--out", str(tmp_path / "new"))
    assert _openssl_verify(bundle, tmp_path / "new" / "cert-chain.pem").returncode == 0
    new_inter = x509.load_pem_x509_certificates((tmp_path / "new" / "cert-chain.pem").read_bytes())[1]
    assert "G2" in new_inter.subject.rfc4514_string()
    # the retired intermediate can still sign the CRL for its own leaves
    crl = _ok("ca", "crl", "--dir", str(d), "--generation", "1").stdout
    assert x509.load_pem_x509_crl(crl.encode()).issuer.rfc4514_string().endswith("G1,O=example.org")


def test_commands_refuse_a_missing_ca(tmp_path: Path) -> None:
    for cmd in (["list"], ["crl"], ["bundle"], ["rotate"]):
        result = run_cli("ca", *cmd, "--dir", str(tmp_path / "none"))
        assert result.returncode == 1 and "secmesh ca init" in result.stderr, cmd
