"""`secmesh demo` from start to finish: bring-up → steps → summary → clean-up.

Clean-up always runs — after success, a failed step, a setup error, Ctrl-C or SIGTERM: every
process the demo started is ended by its PID, a final /metrics of each is saved next to the
logs, and the temporary directory is removed unless `--keep`. The exit status is 0 only if
every step did what it claims (1 otherwise, 130 when interrupted).
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secmesh.demo import configs, rotation, steps
from secmesh.demo.bringup import bring_up
from secmesh.demo.layout import Layout
from secmesh.demo.netns import Net
from secmesh.demo.probes import curl_path, metric, metric_samples
from secmesh.demo.procs import DemoError, ProcessGroup, http_text
from secmesh.demo.summary import Reporter, StepResult, document, table

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
STEPS = 5                      # allowed, forbidden, denied, plaintext, rotation


@dataclass(frozen=True)
class Options:
    ttl: str = "8s"
    rotations: int = 1
    keep: bool = False
    json_mode: bool = False
    interactive: bool = True
    client: str = "auto"           # auto | curl | python
    workdir: Path | None = None    # parent of the temporary directory (default: $TMPDIR)
    netns: bool = False            # pods in their own network namespaces (root + ip)

    @property
    def ttl_seconds(self) -> float:
        from secmesh.configfile import parse_duration

        return float(parse_duration(self.ttl))


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _final_metrics(layout: Layout, net: Net) -> dict[str, Any]:
    """Scrape every admin endpoint once (raw text saved to logs/<name>.prom) and extract the headline counters."""
    ports = {"ca": (None, layout.ca_admin), "frontend-agent": (None, layout.frontend.agent_admin),
             "orders-agent": (None, layout.orders.agent_admin),
             "frontend-sidecar": ("frontend", layout.frontend.sidecar_admin),
             "orders-sidecar": ("orders", layout.orders.sidecar_admin)}
    texts = {}
    for name, (pod, port) in ports.items():
        texts[name] = net.call(pod, http_text, f"http://127.0.0.1:{port}/metrics")
        if texts[name]:
            (layout.logs / f"{name}.prom").write_text(texts[name])
    orders = texts["orders-sidecar"]
    deny_by_policy: dict[str, float] = {}
    for labels, value in metric_samples(orders, steps.AUTHZ):
        if labels.get("decision") == "deny" and value:
            key = labels.get("policy") or labels.get("reason", "")
            deny_by_policy[key] = deny_by_policy.get(key, 0.0) + value
    return {
        "ca_certificates_issued": metric(texts["ca"], "secmesh_ca_certificates_issued_total"),
        "agent_rotations": {n: metric(texts[f"{n}-agent"], "secmesh_agent_rotations_total")
                            for n in ("frontend", "orders")},
        "sidecar_cert_updates_applied": {n: metric(texts[f"{n}-sidecar"], "secmesh_sidecar_cert_updates_total",
                                                   result="applied") for n in ("frontend", "orders")},
        "orders_authz_denied": metric(orders, steps.AUTHZ, decision="deny"),
        "orders_authz_allowed": metric(orders, steps.AUTHZ, decision="allow"),
        "orders_authz_denied_by_policy": deny_by_policy,
        "orders_http_authz_denied": metric(orders, steps.L7_AUTHZ, decision="deny"),
        "orders_http_authz_allowed": metric(orders, steps.L7_AUTHZ, decision="allow"),
        "orders_refused_plaintext": metric(orders, steps.CONNECTIONS, result="refused_plaintext"),
        "frontend_upstream_failed": metric(texts["frontend-sidecar"], steps.CONNECTIONS, result="upstream_failed"),
        "scraped": sorted(n for n, t in texts.items() if t),
    }


def _run_steps(layout: Layout, net: Net, rep: Reporter, opts: Options, policies: bool,
               results: list[StepResult]) -> None:
    use_curl = opts.client != "python" and (opts.client == "curl" or curl_path() is not None)
    if opts.client == "curl" and curl_path() is None:
        raise DemoError("--client curl, but curl is not installed")
    rep.heading("1. An allowed request: frontend → orders")
    results.append(steps.allowed(layout, net, rep, use_curl=use_curl))
    rep.result(results[-1])

    rep.heading("2. A forbidden path: frontend → orders /admin/…")
    results.append(steps.forbidden(layout, net, rep, use_curl=use_curl, policies=policies))
    rep.result(results[-1])

    rep.heading("3. A denied identity: sa/intruder → orders")
    results.append(steps.denied(layout, net, rep, policies=policies))
    rep.result(results[-1])

    rep.heading("4. Plaintext to the STRICT inbound port")
    results.append(steps.plaintext(layout, net, rep, use_curl=use_curl))
    rep.result(results[-1])

    rep.heading(f"5. Rotation: leaves live {opts.ttl} and are renewed at half-life, under load")
    results.append(rotation.run(layout, net, rep, want=opts.rotations, deadline=max(20.0, 2.5 * opts.ttl_seconds
                                                                                * opts.rotations)))
    rep.result(results[-1])


def run(opts: Options) -> int:
    rep = Reporter(json_mode=opts.json_mode, interactive=opts.interactive)
    started = time.monotonic()
    results: list[StepResult] = []
    error: str | None = None
    interrupted = False
    metrics: dict[str, Any] = {}
    exits: list[tuple[str, int | None]] = []
    try:
        net = Net.create() if opts.netns else Net()
    except OSError as exc:
        rep.fail(f"cannot create the network namespaces: {exc}")
        return EXIT_FAILED
    network = {"netns": dict(net.namespaces), "addresses": dict(net.addresses)}
    layout = Layout.create(opts.workdir, orders_host=net.address("orders"))
    group = ProcessGroup(layout.logs)
    policies = configs.sidecar_supports_policies()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        bring_up(layout, net, group, rep, ttl=opts.ttl, policies=policies)
        _run_steps(layout, net, rep, opts, policies, results)
    except KeyboardInterrupt:
        interrupted, error = True, "interrupted"
    except DemoError as exc:
        error = str(exc)
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)   # let clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if not interrupted and group.children:
                metrics = _final_metrics(layout, net)
            exits = group.stop_all()
            net.destroy()
            if layout.separate_sockets:     # only sockets and their lock files: useless once stopped
                shutil.rmtree(layout.sockets, ignore_errors=True)
            if not opts.keep:
                shutil.rmtree(layout.root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, previous)
    ok = error is None and len(results) == STEPS and all(r.ok for r in results)
    _report(rep, results, layout, opts, error, ok)
    if opts.json_mode:
        procs = [{"name": c.name, "pid": c.pid, "exit": code} for c, (_, code) in zip(group.children, exits)]
        doc = document(results, ok=ok, elapsed=time.monotonic() - started, workdir=str(layout.root), kept=opts.keep,
                       layout=layout.to_json(), metrics=metrics | {"processes": procs}, error=error,
                       network=network)
        print(doc, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if ok else EXIT_FAILED


def _report(rep: Reporter, results: list[StepResult], layout: Layout, opts: Options, error: str | None,
            ok: bool) -> None:
    rep.console.print()
    if results:
        rep.console.print(table(results))
    if error:
        rep.fail(f"demo stopped: {error}")
    where = f"{layout.logs}/*.log, final metrics in *.prom"
    if opts.keep:
        rep.line(f"logs: {where} (kept: remove {layout.root} when done)")
    else:
        rep.line(f"logs were in {layout.logs} (removed with the temporary directory; run with --keep to keep them)")
    rep.line("every process the demo started has been stopped")
    if ok:
        rep.ok("every step did what it claims")
    elif error == "interrupted":
        rep.fail("interrupted before every step ran")
    else:
        rep.fail("not every step did what it claims")
