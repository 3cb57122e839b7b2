"""TLS-vs-plaintext sniffing and PeerAuthentication admission."""

from __future__ import annotations

import pytest

from secmesh.sidecar.config import MtlsMode
from secmesh.sidecar.detect import Wire, admit, classify, sniff


@pytest.mark.parametrize("first, wire", [
    (b"\x16\x03\x01", Wire.TLS), (b"\x16\x03\x03\x02\x00", Wire.TLS), (b"GET", Wire.PLAINTEXT),
    (b"PRI", Wire.PLAINTEXT), (b"\x16\x04\x01", Wire.PLAINTEXT), (b"\x16\x03\x09", Wire.PLAINTEXT),
    (b"", Wire.UNKNOWN), (b"\x16", Wire.UNKNOWN), (b"\x16\x03", Wire.UNKNOWN),
])
def test_sniff(first, wire):
    assert sniff(first) is wire


def test_classify_decides_on_short_input():
    assert classify(b"\x16") is Wire.TLS and classify(b"G") is Wire.PLAINTEXT and classify(b"") is Wire.UNKNOWN


@pytest.mark.parametrize("mode, wire, ok", [
    (MtlsMode.STRICT, Wire.TLS, True), (MtlsMode.STRICT, Wire.PLAINTEXT, False),
    (MtlsMode.PERMISSIVE, Wire.TLS, True), (MtlsMode.PERMISSIVE, Wire.PLAINTEXT, True),
    (MtlsMode.DISABLE, Wire.PLAINTEXT, True), (MtlsMode.DISABLE, Wire.TLS, True),
])
def test_admit(mode, wire, ok):
    assert admit(mode, wire)[0] is ok
