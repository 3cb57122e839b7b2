"""The demo's checks: an allowed request, a forbidden path, a denied identity, plaintext on a STRICT port.

Each step drives a real client, then collects evidence from three independent places — what
the client got, what the sidecars counted (/metrics) and what they logged — and returns a
`StepResult` whose `ok` is true only if all of them agree with the claim.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from secmesh.demo.configs import DENY_POLICY, FORBIDDEN_PATH, PATH_POLICY
from secmesh.demo.layout import NAMESPACE, Layout, spiffe_id
from secmesh.demo.netns import Net
from secmesh.demo.probes import http_get, log_lines, metric, metric_samples, mtls_probe
from secmesh.demo.procs import http_text
from secmesh.demo.summary import Reporter, StepResult

AUTHZ = "secmesh_sidecar_authz_decisions_total"              # connection-time (L4) decisions
L7_AUTHZ = "secmesh_sidecar_http_authz_decisions_total"       # per-request (L7) decisions
DENIED_BY_HEADER = "x-secmesh-denied-by"
CONNECTIONS = "secmesh_sidecar_connections_total"
INBOUND = "inbound-orders"
OUTBOUND = "outbound-orders"


def scrape(net: Net, layout: Layout) -> str:
    """The orders sidecar's /metrics (its admin port is loopback-only, inside its pod)."""
    return net.call("orders", http_text, f"http://127.0.0.1:{layout.orders.sidecar_admin}/metrics")


def _poll(fn: Callable[[], Any], timeout: float = 3.0) -> Any:
    """`fn()` until it returns something truthy (log lines are written when a connection closes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _scrape_until(net: Net, layout: Layout, moved: Callable[[str], bool], timeout: float = 3.0) -> str:
    """Scrape /metrics until `moved(text)` (counters are bumped when the refused connection closes)."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(net, layout)
        if moved(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _access(path: Path, listener: str, peer_id: str) -> list[dict[str, Any]]:
    """Access-log lines of connections of `peer_id` that were forwarded (admitted and spliced)."""
    return [ln for ln in log_lines(path) if ln.get("logger") == "secmesh.sidecar.access"
            and ln.get("listener") == listener and ln.get("peer_id") == peer_id and ln.get("result") == "forwarded"]


def app_requests(layout: Layout) -> int:
    return sum(1 for ln in log_lines(layout.logs / "orders-app.log") if ln.get("msg") == "request")


def parse_xfcc(value: str | None) -> dict[str, str]:
    """The first element of an `x-forwarded-client-cert` value → {By, Hash, URI, …}. Pure.

    Envoy's format: `key=value` pairs joined by `;`, values optionally double-quoted; the
    elements of several hops are joined by `,` (the demo has one hop: the orders sidecar)."""
    out: dict[str, str] = {}
    if not value:
        return out
    element = value.split(",", 1)[0]
    for part in element.split(";"):
        key, sep, val = part.partition("=")
        if sep:
            out[key.strip()] = val.strip().strip('"')
    return out


def _requests(path: Path, listener: str, req_path: str) -> list[dict[str, Any]]:
    """Per-request (L7) access-log lines of `listener` for `req_path`."""
    return [ln for ln in log_lines(path) if ln.get("logger") == "secmesh.sidecar.access"
            and ln.get("msg") == "request" and ln.get("listener") == listener and ln.get("path") == req_path]


def allowed(layout: Layout, net: Net, rep: Reporter, *, use_curl: bool) -> StepResult:
    url = f"http://127.0.0.1:{layout.frontend.port}/orders/42"
    res = net.call("frontend", http_get, url, {"x-demo-step": "allowed"}, use_curl=use_curl)
    rep.command(res.command + f"    # as the frontend app, to its sidecar ({res.client})")
    echo: dict[str, Any] = {}
    if res.body:
        rep.block(res.body, limit=20)
        try:
            echo = json.loads(res.body)
        except ValueError:
            pass
    fid, oid = layout.frontend.spiffe_id, layout.orders.spiffe_id
    inbound = _poll(lambda: _access(layout.logs / "orders-sidecar.log", INBOUND, fid))
    outbound = _poll(lambda: _access(layout.logs / "frontend-sidecar.log", OUTBOUND, oid))
    request_lines = _poll(lambda: [ln for ln in _requests(layout.logs / "orders-sidecar.log", INBOUND, "/orders/42")
                                   if ln.get("status") == 200])
    xfcc = echo.get("x-forwarded-client-cert")
    fields = parse_xfcc(xfcc)
    evidence = [f"HTTP {res.status or '-'} from the orders app" + (f" ({res.error})" if res.error else ""),
                f"frontend sidecar verified the server: {oid}" if outbound else "no outbound access-log line",
                f"orders sidecar verified the client: {fid}" if inbound else "no inbound access-log line with "
                "the frontend's identity"]
    if xfcc:
        evidence.append(f"the app received x-forwarded-client-cert: URI={fields.get('URI')} (the caller), "
                        f"By={fields.get('By')} (the sidecar in front of it)")
    else:
        evidence.append("the app received no x-forwarded-client-cert")
    if request_lines:
        ln = request_lines[-1]
        evidence.append(f"orders sidecar access log: {ln.get('method')} {ln.get('path')} {ln.get('status')} "
                        f"peer_id={ln.get('peer_id')} decision={ln.get('decision')} policy={ln.get('policy') or '-'}")
    if inbound:
        ln = inbound[-1]
        evidence.append(f"orders sidecar connection log: src={ln.get('src')} tls={ln.get('tls_version')}")
    logged_id = request_lines[-1].get("peer_id") if request_lines else None
    xfcc_ok = fields.get("URI") == fid and fields.get("By") == oid and logged_id == fid
    ok = res.ok and echo.get("path") == "/orders/42" and echo.get("app") == "orders" and bool(inbound) \
        and bool(outbound) and xfcc_ok
    claim = f"{res.client} → frontend sidecar → mTLS → orders sidecar → app: 200, caller's ID in XFCC"
    data = {"client": res.client, "status": res.status, "echo": echo, "peer_id": fid if inbound else None,
            "server_id": oid if outbound else None, "xfcc": xfcc, "xfcc_uri": fields.get("URI"),
            "xfcc_by": fields.get("By"), "logged_peer_id": logged_id}
    return StepResult("allowed", "Allowed request", claim, ok, evidence, data)


def forbidden(layout: Layout, net: Net, rep: Reporter, *, use_curl: bool, policies: bool) -> StepResult:
    """A path the policies forbid: the orders sidecar answers 403 itself, naming the policy."""
    want = f"ns[{NAMESPACE}]-policy[{PATH_POLICY}]-rule[0]"
    url = f"http://127.0.0.1:{layout.frontend.port}{FORBIDDEN_PATH}"
    before = scrape(net, layout)
    app_before = app_requests(layout)
    res = net.call("frontend", http_get, url, use_curl=use_curl, include_head=True)
    rep.command(res.command + f"    # a path {PATH_POLICY} forbids, through the frontend sidecar")
    shown = "\n".join(ln for ln in res.head.splitlines() if not ln.lower().startswith("date:"))
    rep.block((shown + "\n\n" + res.body) if shown else res.body, limit=12)
    denies = lambda t: metric(t, L7_AUTHZ, listener=INBOUND, decision="deny", policy=want)  # noqa: E731
    after = _scrape_until(net, layout, lambda t: denies(t) > denies(before))
    delta = denies(after) - denies(before)
    reasons = [lb.get("reason") for lb, v in metric_samples(after, L7_AUTHZ) if lb.get("policy") == want and v]
    refusals = _poll(lambda: [ln for ln in log_lines(layout.logs / "orders-sidecar.log")
                              if ln.get("msg") == "request refused" and ln.get("path") == FORBIDDEN_PATH])
    access = _poll(lambda: _requests(layout.logs / "orders-sidecar.log", INBOUND, FORBIDDEN_PATH))
    reached_app = app_requests(layout) - app_before
    header = res.headers.get(DENIED_BY_HEADER)
    evidence = [f"HTTP {res.status or '-'} answered by the orders sidecar" + (f" ({res.error})" if res.error else ""),
                f"{DENIED_BY_HEADER}: {header or '(absent)'}",
                f"{L7_AUTHZ}{{decision=\"deny\",policy=\"{want}\"}} +{delta:g}"
                + (f" (reason=\"{reasons[0]}\")" if reasons else ""),
                f"requests that reached the app: {reached_app}"]
    source = ""
    if refusals:
        ln = refusals[-1]
        source = str(ln.get("policy_source") or "")
        evidence.append(f"orders sidecar log: {ln.get('detail')}")
    if access:
        ln = access[-1]
        evidence.append(f"orders sidecar access log: {ln.get('method')} {ln.get('path')} {ln.get('status')} "
                        f"origin={ln.get('origin')} peer_id={ln.get('peer_id')} decision={ln.get('decision')}")
    ok = (policies and res.status == 403 and header == want and delta >= 1 and reached_app == 0
          and bool(refusals) and bool(access) and access[-1].get("peer_id") == layout.frontend.spiffe_id)
    return StepResult("forbidden", "Forbidden path", f"GET {FORBIDDEN_PATH} → 403 from the orders sidecar, "
                      "naming the policy", ok, evidence,
                      {"status": res.status, "denied_by": header, "body": res.body, "deny_delta": delta,
                       "policy": want, "policy_source": source, "reached_app": reached_app,
                       "reason": reasons[0] if reasons else None})


def denied(layout: Layout, net: Net, rep: Reporter, *, policies: bool) -> StepResult:
    d = layout.intruder_dir
    before = scrape(net, layout)
    app_before = app_requests(layout)
    rep.line(f"  a workload holding the SVID of {spiffe_id('intruder')} (from `ca issue`) dials the orders "
             f"sidecar at {layout.orders_host}:{layout.orders.port} over mTLS and sends GET /orders/42 "
             "(Python ssl client)")
    probe = net.call("frontend", mtls_probe, layout.orders_host, layout.orders.port, d / "cert-chain.pem",
                     d / "key.pem", layout.roots_pem,
                     b"GET /orders/42 HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
    denies = lambda t: metric(t, AUTHZ, listener=INBOUND, decision="deny")  # noqa: E731
    after = _scrape_until(net, layout, lambda t: denies(t) > denies(before))
    delta = denies(after) - denies(before)
    old = {tuple(sorted(lb.items())): v for lb, v in metric_samples(before, AUTHZ)}
    moved = [lb for lb, v in metric_samples(after, AUTHZ)
             if lb.get("decision") == "deny" and v > old.get(tuple(sorted(lb.items())), 0.0)]
    refusals = _poll(lambda: [ln for ln in log_lines(layout.logs / "orders-sidecar.log")
                              if ln.get("msg") == "connection refused"
                              and str(ln.get("peer_id", "")).endswith("/sa/intruder")])
    reached_app = app_requests(layout) - app_before
    evidence = [f"handshake completed; the server presented {probe.server_id} (serial {probe.server_serial})"
                if probe.handshake else f"handshake failed: {probe.error}",
                "the orders sidecar closed the connection before reading a byte" if probe.refused_after_handshake
                else f"unexpected answer: {probe.reply!r} {probe.error}",
                f"secmesh_sidecar_authz_decisions_total{{decision=\"deny\"}} +{delta:g}"
                + (f" (policy=\"{moved[0].get('policy')}\", reason=\"{moved[0].get('reason')}\")" if moved else ""),
                f"requests that reached the app: {reached_app}"]
    policy_named = False
    if refusals:
        ln = refusals[-1]
        name = ln.get("policy_name") or ln.get("policy") or ""
        policy_named = DENY_POLICY in str(name) or DENY_POLICY in str(ln.get("policy", ""))
        evidence.append(f"orders sidecar log: {ln.get('reason')}")
    ok = (probe.refused_after_handshake and probe.server_id == layout.orders.spiffe_id and delta >= 1
          and bool(refusals) and reached_app == 0 and (policy_named or not policies))
    return StepResult("denied", "Denied identity", "sa/intruder is refused right after the mTLS handshake, "
                      "naming the policy", ok, evidence,
                      {"handshake": probe.handshake, "server_id": probe.server_id, "deny_delta": delta,
                       "policy": (moved[0].get("policy") if moved else None), "policy_named": policy_named,
                       "reached_app": reached_app})


def plaintext(layout: Layout, net: Net, rep: Reporter, *, use_curl: bool) -> StepResult:
    before = scrape(net, layout)
    url = f"http://{layout.orders_host}:{layout.orders.port}/orders/42"
    app_before = app_requests(layout)
    res = net.call("frontend", http_get, url, use_curl=use_curl)
    rep.command(res.command + "    # plaintext, straight at the orders sidecar's STRICT port")
    count = lambda t: metric(t, CONNECTIONS, listener=INBOUND, result="refused_plaintext")  # noqa: E731
    after = _scrape_until(net, layout, lambda t: count(t) > count(before))
    delta = count(after) - count(before)
    reached_app = app_requests(layout) - app_before
    evidence = [res.error or f"unexpected HTTP {res.status}",
                f"secmesh_sidecar_connections_total{{result=\"refused_plaintext\"}} +{delta:g}",
                f"requests that reached the app: {reached_app}"]
    ok = res.status == 0 and delta >= 1 and reached_app == 0
    return StepResult("plaintext", "Plaintext refused", "a plaintext connection to the STRICT inbound port is "
                      "closed", ok, evidence, {"error": res.error, "refused_delta": delta, "reached_app": reached_app})
