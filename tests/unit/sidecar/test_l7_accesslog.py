"""The per-request access log line: valid JSON, the same keys and values as `request_record`, escaping
of whatever a client sent, batching with one write per flush."""

from __future__ import annotations

import io
import json
import time
import types

import pytest

from secmesh.sidecar.accesslog import AccessLog, request_record
from secmesh.sidecar.authz_l7 import ALLOW_NO_AUTHZ, Verdict
from secmesh.sidecar.codec.stream import RequestHeaders


class Loop:
    def __init__(self) -> None:
        self.timers: list = []

    def call_later(self, delay, fn):  # noqa: ANN001
        self.timers.append(fn)
        return types.SimpleNamespace(cancel=lambda: None)


def exchange(verdict, path=b"/ok", tried=True, route=True):
    req = RequestHeaders(1, b"GET", b"svc:80", path, b"http", [], True)
    s = types.SimpleNamespace(protocol="http2", peer_id="spiffe://cluster.local/ns/a/sa/b", client_ip="10.0.0.1")
    return types.SimpleNamespace(
        s=s, req=req, verdict=verdict, env=types.SimpleNamespace(name="in"), status=403, origin="local",
        t0=time.monotonic(), bytes_in=5, bytes_out=7, rid=b"rid-1",
        route=types.SimpleNamespace(name="r") if route else None,
        cluster=types.SimpleNamespace(name="c") if route else None,
        tried=[types.SimpleNamespace(address="127.0.0.1:1")] if tried else [], attempt=1, reason="why")


@pytest.mark.parametrize("verdict", [ALLOW_NO_AUTHZ, None,
                                     Verdict(False, 403, "deny_policy", "ns[a]-policy[b]-rule[0]", "m", "iss/sub")])
@pytest.mark.parametrize("path", [b"/ok", b'/q"uo\\te\n\x00\xff\xe9', b"/" + b"a" * 5000])
def test_line_is_the_record_as_json(verdict, path):
    ex = exchange(verdict, path, tried=verdict is not None, route=verdict is not None)
    line = AccessLog(Loop(), clock=lambda: 1_800_000_000.25).line(ex)
    assert line.endswith("\n") and line.count("\n") == 1
    got = json.loads(line)
    assert list(got)[:4] == ["ts", "level", "logger", "msg"]
    assert got["ts"] == "2027-01-15T08:00:00.250+00:00" and got["msg"] == "request"
    want = request_record(ex)
    got["duration_ms"] = want["duration_ms"] = 0
    assert {k: got[k] for k in want} == want and len(got) == len(want) + 4
    assert len(got["path"]) == 2048 or path != b"/" + b"a" * 5000


def test_batches_until_flush():
    out = io.StringIO()
    loop = Loop()
    log = AccessLog(loop, out)
    log.enabled = True
    for _ in range(3):
        log.emit(exchange(ALLOW_NO_AUTHZ))
    assert out.getvalue() == "" and len(loop.timers) == 1      # one timer for the batch
    loop.timers[0]()
    assert out.getvalue().count("\n") == 3
