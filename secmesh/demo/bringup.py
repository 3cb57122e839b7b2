"""Step 0 of the demo: mint tokens, create the CA, start every process and wait until all are ready.

Long-running processes are started together and then polled in one loop, so the start-up costs
about as long as the slowest process rather than the sum (agents and sidecars retry their CA
and SDS connections with a short backoff, so start order does not matter).
"""

from __future__ import annotations

import sys

from secmesh.demo import configs
from secmesh.demo.layout import NAMESPACE, TRUST_DOMAIN, Layout, spiffe_id
from secmesh.demo.netns import Net
from secmesh.demo.procs import ProcessGroup, http_status, secmesh_argv, tcp_open
from secmesh.demo.summary import Reporter
from secmesh.demo.tokens import TokenMinter

READY_TIMEOUT = 45.0


def _ready(port: int, net: Net | None = None, pod: str | None = None):  # noqa: ANN202 - a predicate
    url = f"http://127.0.0.1:{port}/ready"
    if net is None:
        return lambda: http_status(url, timeout=0.5) == 200
    return lambda: net.call(pod, http_status, url, timeout=0.5) == 200


def bring_up(layout: Layout, net: Net, group: ProcessGroup, rep: Reporter, *, ttl: str, policies: bool) -> None:
    if net.enabled:
        rep.heading("0. Start the mesh (pods in their own network namespaces, joined by a veth pair)")
        rep.line(f"  frontend pod: netns {net.namespaces['frontend']} {net.address('frontend')}; "
                 f"orders pod: netns {net.namespaces['orders']} {net.address('orders')}; "
                 "CA and agents in the root namespace (node daemons)")
    else:
        rep.heading("0. Start the mesh (temporary directory, loopback ports, no privileges)")
    rep.line(f"  work directory: {layout.root}")
    minter = TokenMinter()
    minter.write_jwks(layout.jwks)
    for pod in layout.pods:
        minter.write_token(pod.token_file, NAMESPACE, pod.name)
    rep.ok(f"minted service-account tokens (ES256, aud istio-ca) for ns/{NAMESPACE}/sa/frontend and "
           f"ns/{NAMESPACE}/sa/orders; their JWKS is what the CA and the agents trust")

    with rep.status("creating the CA"):
        group.run("ca-init", secmesh_argv("ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir", str(layout.ca_dir)))
        bundle = group.run("ca-bundle", secmesh_argv("ca", "bundle", "--dir", str(layout.ca_dir)))
        layout.roots_pem.write_text(bundle.stdout)
        group.run("ca-issue", secmesh_argv("ca", "issue", spiffe_id("intruder"), "--dir", str(layout.ca_dir),
                                           "--ttl", "1h", "--out", str(layout.intruder_dir)))
    rep.command(f"secmesh ca init --trust-domain {TRUST_DOMAIN} --dir {layout.ca_dir}")
    rep.command(f"secmesh ca issue {spiffe_id('intruder')} --ttl 1h --out {layout.intruder_dir}"
                "    # for the denied step")

    configs.write_all(layout, policies)
    fe, od = layout.frontend, layout.orders
    ca = group.start("ca", configs.ca_serve_argv(layout))
    app = group.start("orders-app", net.argv("orders", [sys.executable, "-m", "secmesh.demo.backend", "--listen",
                                                         f"127.0.0.1:{layout.backend_port}", "--name", "orders"]))
    agents = {pod.name: group.start(f"{pod.name}-agent", configs.agent_argv(layout, pod, ttl)) for pod in layout.pods}
    sidecars = {pod.name: group.start(f"{pod.name}-sidecar", net.argv(pod.name, configs.sidecar_argv(pod)))
                for pod in layout.pods}
    waits = {"the CA": (ca, lambda: tcp_open("127.0.0.1", layout.ca_port)),
             "the orders app": (app, lambda: net.call("orders", tcp_open, "127.0.0.1", layout.backend_port))}
    for pod in layout.pods:
        waits[f"{pod.name} agent /ready"] = (agents[pod.name], _ready(pod.agent_admin))
        waits[f"{pod.name} sidecar /ready"] = (sidecars[pod.name], _ready(pod.sidecar_admin, net, pod.name))
    with rep.status("starting CA, 2 agents, the orders app and 2 sidecars; waiting for each to be ready"):
        group.wait_for(waits, timeout=READY_TIMEOUT)

    rows = [("ca", ca.pid, f"CreateCertificate on 127.0.0.1:{layout.ca_port} (TLS), trust domain {TRUST_DOMAIN}"),
            ("orders-app", app.pid, f"plain HTTP on 127.0.0.1:{layout.backend_port}"),
            ("frontend-agent", agents["frontend"].pid, f"SDS on {fe.agent_socket}, token sa/frontend, leaf TTL {ttl}"),
            ("orders-agent", agents["orders"].pid, f"SDS on {od.agent_socket}, token sa/orders, leaf TTL {ttl}"),
            ("frontend-sidecar", sidecars["frontend"].pid,
             f"outbound 127.0.0.1:{fe.port} → mTLS → {layout.orders_host}:{od.port}, expects {od.spiffe_id}"),
            ("orders-sidecar", sidecars["orders"].pid,
             f"inbound {layout.orders_host}:{od.port} (STRICT) → app; " +
             (f"policies {configs.policy_file(layout)}" if policies else f"allow {fe.spiffe_id}"))]
    for name, pid, what in rows:
        rep.ok(f"{name:<16} pid {pid:<7} {what}")
