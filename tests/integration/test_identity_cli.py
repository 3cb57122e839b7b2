"""`secmesh spiffe parse` and `secmesh svid verify|inspect` run as real processes.

Chains come from the test CA helper (fixed clock, so `--at` pins the verification time) and
from the real `openssl` binary (valid around the wall clock, so verified at "now").
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from secmesh.identity.bundle import TrustBundle
from secmesh.identity.spiffe import TrustDomain
from tests.support.proc import run_cli
from tests.unit.identity.svidca import DAY, NOW, make_intermediate, make_leaf, make_root, pem, rsa_key

AT = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- spiffe parse -------------------------------------------------------------------------------

@pytest.mark.parametrize(("spiffe_id", "td", "path"), [
    ("spiffe://example.org/ns/foo/sa/bar", "example.org", "/ns/foo/sa/bar"),
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://cluster.local/Upper/Case", "cluster.local", "/Upper/Case"),
])
def test_spiffe_parse_valid(spiffe_id: str, td: str, path: str) -> None:
    result = run_cli("spiffe", "parse", spiffe_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == json.dumps({"valid": True, "trust_domain": td, "path": path})


@pytest.mark.parametrize(("spiffe_id", "error"), [
    ("SPIFFE://example.org/x", "scheme"),
    ("spiffe://Example.org/x", "lowercase"),
    ("spiffe://example.org/a/", "trailing slash"),
    ("spiffe://example.org/a/../b", "dot segments"),
    ("spiffe://example.org:443/x", "port"),
    ("spiffe://example.org/a?b", "query"),
    ("spiffe://example.org/a%2Fb", "percent"),
    ("spiffe://example.org/ü", "path segment"),
    ("", "empty"),
    ("-x", "scheme"),
])
def test_spiffe_parse_invalid(spiffe_id: str, error: str) -> None:
    args = ("spiffe", "parse", "--", spiffe_id) if spiffe_id.startswith("-") else ("spiffe", "parse", spiffe_id)
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert out["valid"] is False and error in out["error"]
    assert set(out) == {"valid", "error"}


@pytest.mark.parametrize("args", [(), ("a", "b"), ("--bogus", "spiffe://x/y")])
def test_spiffe_parse_usage_errors(args: tuple[str, ...]) -> None:
    assert run_cli("spiffe", "parse", *args).returncode == 2


# --- svid verify on chains from the test CA -----------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("svid")
    root = make_root("example.org")
    inter = make_intermediate(root)
    other_root = make_root("other.org")
    rogue = make_intermediate(make_root("example.org"))
    out = {
        "root": root.pem(),
        "other_root": other_root.pem(),
        "good": make_leaf(inter).chain_pem(),
        "good_rsa": make_leaf(root, "spiffe://example.org/ns/a/sa/rsa", key=rsa_key()).chain_pem(),
        "other_good": make_leaf(other_root, "spiffe://other.org/ns/x/sa/y").chain_pem(),
        "expired": make_leaf(inter, not_before=NOW - 2 * DAY, not_after=NOW - DAY).chain_pem(),
        "two_uris": make_leaf(inter, uris=["spiffe://example.org/a", "spiffe://example.org/b"]).chain_pem(),
        "leaf_ca": make_leaf(inter, ca=True).chain_pem(),
        "server_only": make_leaf(inter, eku=[ExtendedKeyUsageOID.SERVER_AUTH]).chain_pem(),
        "foreign": make_leaf(rogue).chain_pem(),
        "no_intermediate": pem(make_leaf(inter).cert),
        "garbage": b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
        "empty": b"",
    }
    paths = {}
    for name, data in out.items():
        paths[name] = d / f"{name}.pem"
        paths[name].write_bytes(data)
    jwks = TrustBundle(TrustDomain("example.org"), (root.cert,)).to_spiffe_jwks()
    paths["root_jwks"] = d / "root.jwks.json"
    paths["root_jwks"].write_text(json.dumps(jwks))
    return paths


def _verify(files: dict[str, Path], chain: str, *bundles: str, at: str | None = AT):
    args = ["svid", "verify", "--chain", str(files[chain])]
    for spec in bundles:
        td, name = spec.split("=")
        args += ["--bundle", f"{td}={files[name]}"]
    if at:
        args += ["--at", at]
    return run_cli(*args)


@pytest.mark.parametrize(("chain", "bundles", "spiffe_id"), [
    ("good", ["example.org=root"], "spiffe://example.org/ns/default/sa/web"),
    ("good_rsa", ["example.org=root"], "spiffe://example.org/ns/a/sa/rsa"),
    ("good", ["other.org=other_root", "example.org=root"], "spiffe://example.org/ns/default/sa/web"),
    ("other_good", ["other.org=other_root", "example.org=root"], "spiffe://other.org/ns/x/sa/y"),
    ("good", ["example.org=root_jwks"], "spiffe://example.org/ns/default/sa/web"),  # SPIFFE JWKS bundle
])
def test_svid_verify_valid(files, chain, bundles, spiffe_id) -> None:
    result = _verify(files, chain, *bundles)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout) == {"valid": True, "spiffe_id": spiffe_id}


@pytest.mark.parametrize(("chain", "bundles", "reason"), [
    ("expired", ["example.org=root"], "expired"),
    ("two_uris", ["example.org=root"], "multiple_uri_sans"),
    ("leaf_ca", ["example.org=root"], "leaf_is_ca"),
    ("server_only", ["example.org=root"], "bad_eku"),
    ("foreign", ["example.org=root"], "untrusted"),
    ("no_intermediate", ["example.org=root"], "untrusted"),
    ("good", ["other.org=other_root"], "no_bundle_for_trust_domain"),
    ("good", ["other.org=root"], "no_bundle_for_trust_domain"),  # right roots, wrong domain label
    ("garbage", ["example.org=root"], "malformed"),
    ("empty", ["example.org=root"], "empty_chain"),
])
def test_svid_verify_invalid(files, chain, bundles, reason) -> None:
    result = _verify(files, chain, *bundles)
    assert result.returncode == 1, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["valid"] is False and out["reason"] == reason and out["error"]


def test_svid_verify_uses_the_wall_clock_by_default(files) -> None:
    # The test CA's certificates are pinned to NOW (2026-03-01); without --at they are judged at real time.
    result = _verify(files, "good", "example.org=root", at=None)
    out = json.loads(result.stdout)
    assert (result.returncode, out["valid"]) == ((0, True) if out["valid"] else (1, False))


@pytest.mark.parametrize("bundle_arg", [
    "example.org",                    # no '='
    "=ROOT",                          # empty trust domain
    "Example.org=ROOT",               # invalid trust domain
    "example.org=/nonexistent/root.pem",
    "example.org=GARBAGE",            # a bundle that is not a bundle
    "example.org=EMPTY",
])
def test_svid_verify_usage_errors(files, bundle_arg: str) -> None:
    bundle_arg = (bundle_arg.replace("ROOT", str(files["root"])).replace("GARBAGE", str(files["garbage"]))
                  .replace("EMPTY", str(files["empty"])))
    result = run_cli("svid", "verify", "--chain", str(files["good"]), "--bundle", bundle_arg, "--at", AT)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--bundle" in result.stderr


def test_svid_verify_missing_options_and_unreadable_chain(files) -> None:
    assert run_cli("svid", "verify", "--chain", str(files["good"])).returncode == 2
    assert run_cli("svid", "verify", "--bundle", f"example.org={files['root']}").returncode == 2
    result = run_cli("svid", "verify", "--chain", "/nonexistent.pem", "--bundle", f"example.org={files['root']}")
    assert result.returncode == 2 and "--chain" in result.stderr
    assert run_cli("svid", "verify", "--chain", str(files["good"]), "--bundle",
                   f"example.org={files['root']}", "--at", "yesterday").returncode == 2


def test_svid_inspect(files) -> None:
    result = run_cli("svid", "inspect", str(files["good_rsa"]))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["spiffe_id"] == "spiffe://example.org/ns/a/sa/rsa"
    assert out["key_type"] == "RSA 2048"
    assert out["issuer"].startswith("CN=root example.org")
    assert out["not_after"] == (NOW + DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run_cli("svid", "inspect", str(files["empty"])).returncode == 1
    assert run_cli("svid", "inspect", "/nonexistent.pem").returncode == 2


# --- svid verify on a chain issued by the openssl binary ----------------------------------------

OPENSSL = shutil.which("openssl")

LEAF_EXT = """
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = critical, URI:{uri}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[inter]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectAltName = URI:spiffe://example.org
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[badleaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyCertSign
subjectAltName = critical, URI:spiffe://example.org/ns/openssl/sa/bad
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if OPENSSL is None:
        pytest.skip("openssl binary not installed")
    d = tmp_path_factory.mktemp("openssl")
    (d / "ext.cnf").write_text(LEAF_EXT.replace("{uri}", "spiffe://example.org/ns/openssl/sa/leaf"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "root.key", "-out", "root.pem", "-days", "30",
             "-subj", "/O=example.org/CN=openssl root", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectAltName=URI:spiffe://example.org",
             cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "inter.key", "-out", "inter.csr", "-subj",
             "/O=example.org/CN=openssl intermediate", cwd=d)
    _openssl("x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey", "root.key", "-set_serial", "0x1001",
             "-days", "10", "-extfile", "ext.cnf", "-extensions", "inter", "-out", "inter.pem", cwd=d)
    for name, section in (("leaf", "leaf"), ("bad", "badleaf")):
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "inter.pem", "-CAkey", "inter.key",
                 "-set_serial", "0x2002" if name == "leaf" else "0x2003", "-days", "1", "-extfile", "ext.cnf",
                 "-extensions", section, "-out", f"{name}.pem", cwd=d)
        (d / f"{name}-chain.pem").write_bytes((d / f"{name}.pem").read_bytes() + (d / "inter.pem").read_bytes())
    return d


def test_openssl_issued_chain_verifies(openssl_pki: Path) -> None:
    result = run_cli("svid", "verify", "--chain", str(openssl_pki / "leaf-chain.pem"),
                     "--bundle", f"example.org={openssl_pki / 'root.pem'}")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout) == {"valid": True, "spiffe_id": "spiffe://example.org/ns/openssl/sa/leaf"}
    # and openssl agrees that the same chain is sound
    proc = subprocess.run([OPENSSL, "verify", "-CAfile", str(openssl_pki / "root.pem"), "-untrusted",
                           str(openssl_pki / "inter.pem"), str(openssl_pki / "leaf.pem")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_openssl_issued_bad_leaf_is_refused(openssl_pki: Path) -> None:
    result = run_cli("svid", "verify", "--chain", str(openssl_pki / "bad-chain.pem"),
                     "--bundle", f"example.org={openssl_pki / 'root.pem'}")
    assert result.returncode == 1
    assert json.loads(result.stdout)["reason"] == "bad_key_usage"


def test_openssl_chain_against_the_wrong_root(openssl_pki: Path, files) -> None:
    result = run_cli("svid", "verify", "--chain", str(openssl_pki / "leaf-chain.pem"),
                     "--bundle", f"example.org={files['root']}")
    assert result.returncode == 1
    assert json.loads(result.stdout)["reason"] == "untrusted"
