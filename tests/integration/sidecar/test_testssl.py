"""`testssl` against an inbound mTLS listener: nothing below TLS 1.2 offered, TLS 1.3 offered.

testssl (Debian package testssl.sh) has no client-certificate option, so every handshake it
makes is refused after the ServerHello, which is all it needs for protocol detection. Its exit
code is non-zero even on a clean run, so the verdict comes from its `-p` (protocols) output.
testssl 3.0's pre-check ("Your OpenSSL cannot connect") fails on a TLS 1.3-only port that
requires a client certificate, so testssl scans the `--min-tls 1.2` configuration, and the
default (1.3 only) is checked with `openssl s_client` per protocol version.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.integration.sidecar.harness import start_sidecar
from tests.support.proc import free_port

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
pytestmark = pytest.mark.timeout(120)
PROTOCOLS = ("SSLv2", "SSLv3", "TLS 1", "TLS 1.1", "TLS 1.2", "TLS 1.3")


def _offered(port: int) -> dict[str, str]:
    assert TESTSSL is not None
    r = subprocess.run([TESTSSL, "--quiet", "--color", "0", "--warnings", "batch", "--fast", "-p",
                        f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=90)
    found = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*(SSLv2|SSLv3|TLS 1(?:\.[123])?)\s+(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    assert set(found) == set(PROTOCOLS), r.stdout + r.stderr
    return found


def _start(tmp_path, pki, echo, port: int, min_tls: str):
    return start_sidecar(tmp_path, f"inbound-{min_tls}", "inbound", "--listen", f"127.0.0.1:{port}", "--upstream",
                         echo.address, "--ca", str(pki.ca_pem), "--cert", str(pki.server_cert), "--key",
                         str(pki.server_key), "--allow-all", "--min-tls", min_tls)[0]


def test_default_inbound_offers_tls13_only(tmp_path, pki, echo):
    port = free_port()
    proc = _start(tmp_path, pki, echo, port, "1.3")
    try:
        seen = {}
        for flag in ("-tls1", "-tls1_1", "-tls1_2", "-tls1_3"):
            r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag,
                                "-CAfile", str(pki.ca_pem), "-cert", str(pki.client_cert), "-key", str(pki.client_key)],
                               input="", capture_output=True, text=True, timeout=20)
            seen[flag] = bool(re.search(r"New, TLSv1\.[0-3], Cipher is (?!\(NONE\))", r.stdout))
    finally:
        proc.stop()
    assert seen == {"-tls1": False, "-tls1_1": False, "-tls1_2": False, "-tls1_3": True}, seen


@pytest.mark.skipif(TESTSSL is None, reason="testssl not installed (Debian package testssl.sh)")
@pytest.mark.parametrize("min_tls", ["1.2"])
def test_inbound_offers_no_legacy_protocol(tmp_path, pki, echo, min_tls):
    port = free_port()
    proc = _start(tmp_path, pki, echo, port, min_tls)
    try:
        found = _offered(port)
    finally:
        proc.stop()
    for old in ("SSLv2", "SSLv3", "TLS 1", "TLS 1.1"):
        assert found[old].startswith("not offered"), (old, found)
    assert found["TLS 1.3"].startswith("offered"), found
    if min_tls == "1.3":
        assert found["TLS 1.2"].startswith("not offered"), found
    else:
        assert found["TLS 1.2"].startswith("offered"), found
