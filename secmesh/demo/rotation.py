"""Rotation under load: requests keep flowing while both pods' certificates are replaced.

Two kinds of traffic run through the frontend sidecar while the agents rotate their short-lived
leaves: a new connection per request (each one a fresh mTLS handshake, so after a rotation it
must use the new certificate) and one long-lived keep-alive connection opened before the first
rotation (it must survive: existing connections finish on the context they were made with).
Serial numbers are sampled from each agent's /identities; the sidecars' /certs versions show
that SDS delivered every new certificate. The loop ends once every pod has rotated at least
`want` times and a few requests have used the newest certificates, or at the deadline.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field

from secmesh.demo.layout import Layout, Pod
from secmesh.demo.netns import Net
from secmesh.demo.procs import http_text
from secmesh.demo.summary import Reporter, StepResult

SAMPLE_EVERY = 0.2
AFTER_LAST_CHANGE = 0.5     # keep sending this long after the last new certificate arrived
REQUEST_EVERY = 0.01        # pace the loop (≤ 100 requests/s): the point is continuity, not load


@dataclass
class PodTrace:
    serials: list[str] = field(default_factory=list)
    sidecar_versions: list[int] = field(default_factory=list)
    last_change: float = 0.0

    @property
    def rotations(self) -> int:
        return max(0, len(self.serials) - 1)

    @property
    def sidecar_followed(self) -> bool:
        """The sidecar applied (at least) as many certificate updates as the agent issued certificates."""
        return len(self.sidecar_versions) >= len(self.serials)


def _own_serial(pod: Pod) -> str | None:
    try:
        ids = json.loads(http_text(f"http://127.0.0.1:{pod.agent_admin}/identities") or "[]")
    except ValueError:
        return None
    for entry in ids:
        if entry.get("spiffe_id") == pod.spiffe_id:
            return entry.get("serial")
    return None


def _sidecar_version(net: Net, pod: Pod) -> int | None:
    text = net.call(pod.name, http_text, f"http://127.0.0.1:{pod.sidecar_admin}/certs")
    try:
        return json.loads(text or "{}").get("version")
    except ValueError:
        return None


def _sample(net: Net, pods: dict[str, Pod], traces: dict[str, PodTrace], now: float) -> bool:
    changed = False
    for name, pod in pods.items():
        t = traces[name]
        serial = _own_serial(pod)
        if serial and (not t.serials or t.serials[-1] != serial):
            t.serials.append(serial)
            t.last_change = now
            changed = True
        version = _sidecar_version(net, pod)
        if version is not None and (not t.sidecar_versions or t.sidecar_versions[-1] != version):
            t.sidecar_versions.append(version)
            t.last_change = now
    return changed


class _KeepAlive:
    """One HTTP/1.1 connection through the frontend sidecar, reused for every request."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.reconnects = 0

    def get(self, path: str) -> bool:
        try:
            self.conn.request("GET", path, headers={"x-demo-step": "rotation-keepalive"})
            resp = self.conn.getresponse()
            resp.read()
            return resp.status == 200
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.reconnects += 1
            return False

    def close(self) -> None:
        self.conn.close()


def _new_connection_get(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"x-demo-step": "rotation", "connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def run(layout: Layout, net: Net, rep: Reporter, *, want: int, deadline: float) -> StepResult:
    pods = {"frontend": layout.frontend, "orders": layout.orders}
    traces = {name: PodTrace() for name in pods}
    port = layout.frontend.port
    started = time.monotonic()
    _sample(net, pods, traces, started)
    keep = _KeepAlive(port)
    fe = "frontend"      # requests are sent from inside the frontend pod (its app's view)
    sent = failed = keep_sent = keep_failed = 0
    next_sample = next_request = started
    rep.line(f"  requests through 127.0.0.1:{port} (new connection each) + 1 keep-alive connection; "
             f"serials from each agent's /identities")
    with rep.status("sending requests while the certificates rotate"):
        while True:
            now = time.monotonic()
            if now >= next_sample:
                if _sample(net, pods, traces, now):
                    for name, t in traces.items():
                        if t.last_change == now and t.rotations:
                            rep.line(f"  {now - started:5.1f}s  {name}: new certificate, serial {t.serials[-1]} "
                                     f"(rotation {t.rotations}); {sent} requests so far, {failed} failed")
                next_sample = now + SAMPLE_EVERY
            done = all(t.rotations >= want and t.sidecar_followed for t in traces.values()) and \
                now - max(t.last_change for t in traces.values()) >= AFTER_LAST_CHANGE
            if done or now - started > deadline:
                break
            if now < next_request:
                time.sleep(next_request - now)     # pacing, not waiting for readiness
            next_request = time.monotonic() + REQUEST_EVERY
            sent += 1
            failed += not net.call(fe, _new_connection_get, port, f"/orders/{sent}")
            if sent % 5 == 0:
                keep_sent += 1
                keep_failed += not net.call(fe, keep.get, f"/orders/keepalive/{keep_sent}")
    net.call(fe, keep.close)
    elapsed = time.monotonic() - started
    rotations = {name: t.rotations for name, t in traces.items()}
    evidence = [f"{name}: serials {' → '.join(t.serials)} ({t.rotations} rotation(s)); sidecar cert versions "
                f"{' → '.join(map(str, t.sidecar_versions))}" for name, t in traces.items()]
    evidence.append(f"{sent} requests on new connections in {elapsed:.1f}s: {failed} failed")
    evidence.append(f"{keep_sent} requests on one keep-alive connection across the rotation: {keep_failed} failed"
                    f"{f', {keep.reconnects} reconnect(s)' if keep.reconnects else ''}")
    sidecars_followed = all(t.sidecar_followed for t in traces.values())
    ok = all(r >= want for r in rotations.values()) and failed == 0 and keep_failed == 0 and sent > 0 \
        and sidecars_followed
    return StepResult("rotation", "Rotation under load", f"certificates rotate while requests run: {failed} failed",
                      ok, evidence, {"serials": {n: t.serials for n, t in traces.items()}, "rotations": rotations,
                                     "sidecar_versions": {n: t.sidecar_versions for n, t in traces.items()},
                                     "requests": sent, "failed": failed, "keepalive_requests": keep_sent,
                                     "keepalive_failed": keep_failed, "seconds": round(elapsed, 2)})
