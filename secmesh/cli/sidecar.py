"""`secmesh sidecar`: the mTLS sidecar, from a config file or ghostunnel-style flags.

    secmesh sidecar --config configs/sidecar.yaml [--workers N]
    secmesh sidecar inbound  --listen H:P --upstream H:P --ca CA --cert C --key K --allow-principal ID…
    secmesh sidecar outbound --listen H:P --upstream H:P --ca CA --cert C --key K --peer-id ID…
    … [--protocol http [--upstream-protocol auto|http1|http2]]   (L7; inbound may use --policies FILE)

Heavy imports (uvloop, grpc, the Envoy protos) happen inside the commands.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from secmesh.errors import ConfigError


def _fail(exc: ConfigError) -> None:
    click.echo(f"secmesh sidecar: {exc}", err=True)
    sys.exit(2)


def _load_policies(config: Any) -> Any:
    """Compile the policy files once, before forking: a broken or unsupported set stops start-up (exit 2)."""
    if not config.policies:
        return None
    from secmesh.errors import SecmeshError
    from secmesh.sidecar.policy_source import PolicySource

    try:
        return PolicySource.load(config)
    except SecmeshError as exc:
        what = "unsupported policy" if exc.reason == "unsupported" else "invalid policy"
        click.echo(f"secmesh sidecar: {what}: {exc.message} (refusing to start: fail closed)", err=True)
        sys.exit(2)


def _take_over(config: Any, count: int) -> Any:
    """Hot restart: the previous process's listening sockets (those whose address still matches), or None.

    Names are `admin`, `<listener>` (a single-worker predecessor) or `<listener>/<i>` (worker i of a
    supervisor). A single-worker successor keeps worker 0's socket of each listener.
    """
    if not config.hot_restart_socket:
        return None
    from secmesh.sidecar.config import split_host_port
    from secmesh.sidecar.hot_restart import split_name, take_over

    try:
        inherited = take_over(config.hot_restart_socket)
    except (OSError, ValueError, KeyError) as exc:
        click.echo(f"secmesh sidecar: hot restart: cannot take the sockets from {config.hot_restart_socket}: "
                   f"{exc!r}", err=True)
        sys.exit(1)
    if inherited is None:
        return None
    wanted = {lst.name: lst.address for lst in config.listeners}
    if config.admin.enabled and config.admin.address:
        wanted["admin"] = config.admin.address
    for name, sock in list(inherited.sockets.items()):
        base, index = split_name(name)
        address = wanted.get(base)
        if address is None or split_host_port(address, what=base)[1] not in (0, sock.getsockname()[1]) or \
                (count == 1 and index != 0):
            sock.close()                      # renamed or moved: bind afresh; the old process drains it
            del inherited.sockets[name]
        elif count == 1 and name != base:
            inherited.sockets[base] = inherited.sockets.pop(name)
    return inherited


def _start(config: Any) -> None:
    from secmesh import log as slog

    slog.setup(config.log_level)
    count = config.worker_count
    runtime = None
    if count > 1:   # whole-sidecar /metrics and /ready: set up before anything imports the metrics
        from secmesh.sidecar.worker_state import RuntimeDir

        runtime = RuntimeDir.create(count)
    try:
        code = _serve(config, count, runtime)
    finally:
        if runtime is not None:
            runtime.remove()
    sys.exit(code)


def _serve(config: Any, count: int, runtime: Any) -> int:
    from secmesh.sidecar.app import run_worker
    from secmesh.sidecar.hot_restart import split_name
    from secmesh.sidecar.preflight import check_ports

    policies = _load_policies(config)
    inherited = _take_over(config, count)
    skip = frozenset(split_name(n)[0] for n in inherited.sockets) if inherited is not None else frozenset()
    problem = check_ports(config, skip=skip)
    if problem is not None:
        click.echo(f"secmesh sidecar: {problem}", err=True)
        sys.exit(1)
    if runtime is None:
        return run_worker(config, 0, policies, inherited)
    return _supervise(config, count, runtime, policies, inherited)


def _supervise(config: Any, count: int, runtime: Any, policies: Any, inherited: Any) -> int:
    """N > 1: bind every socket here, fork N workers on them, and (hot restart) swap them as a whole."""
    import logging
    import os

    from prometheus_client.multiprocess import mark_process_dead

    from secmesh.log import log_event
    from secmesh.sidecar.app import run_worker
    from secmesh.sidecar.hot_restart import SupervisorHandOver
    from secmesh.sidecar.preflight import describe_bind_error
    from secmesh.sidecar.workers import Supervisor, bind_all, worker_sockets

    try:
        sockets = bind_all(config, count, inherited.sockets if inherited is not None else {})
    except OSError as exc:
        click.echo(f"secmesh sidecar: {describe_bind_error('listeners', 'a configured address', exc)}", err=True)
        sys.exit(1)
    def worker(index: int) -> int:   # runs in the forked child
        if inherited is not None:
            inherited.conn.close()       # the hand-over conversation is the supervisor's
        return run_worker(config, index, policies, sockets=worker_sockets(sockets, index), runtime=runtime)

    sup = Supervisor(count, worker, on_exit=runtime.forget)
    handover = None
    if config.hot_restart_socket:
        def handed_over() -> None:            # the successor serves: our workers drain without the admin port
            runtime.mark_handed_over()
            sup.stop()

        handover = SupervisorHandOver(config.hot_restart_socket, sockets, inherited, runtime.all_ready, handed_over)
        sup.on_started = handover.start
    mark_process_dead(os.getpid(), runtime.path)   # the supervisor's own (import-time) gauges are nobody's
    log_event(logging.getLogger("secmesh.sidecar.workers"), logging.INFO, "runtime directory (readiness, metrics)",
              runtime_dir=runtime.path, workers=count)
    try:
        return sup.run()
    finally:
        if handover is not None:
            handover.close()
        for sock in sockets.values():
            sock.close()


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (configs/sidecar.yaml).")
@click.option("--workers", type=int, help="Processes sharing each port (SO_REUSEPORT); 0 = one per core.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--admin", "admin_address", help="Admin HOST:PORT (loopback).")
@click.option("--policies", help="Istio policy YAML (file or directory): AuthorizationPolicy + PeerAuthentication.")
@click.option("--root-namespace", help="Mesh-wide policy namespace [istio-system].")
@click.option("--hot-restart-socket", help="UDS for hot restart: take the listening sockets from the process "
              "serving it, then make it drain (with several workers, the supervisor hands over all of them).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, workers: int | None, log_level: str | None,
        admin_address: str | None, policies: str | None, root_namespace: str | None,
        hot_restart_socket: str | None) -> None:
    """The mTLS sidecar proxy: inbound terminates mTLS, outbound originates it (L4 or, with protocol http, L7)."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("give --config FILE, or use `secmesh sidecar inbound|outbound …`")
    from secmesh.sidecar import config as sconfig

    flags: dict[str, Any] = {"workers": workers, "log_level": log_level, "policies": policies,
                             "root_namespace": root_namespace, "hot_restart_socket": hot_restart_socket}
    if admin_address is not None:
        flags["admin"] = {"address": admin_address, "enabled": bool(admin_address)}
    try:
        config = sconfig.load(config_path, flags=flags)
    except ConfigError as exc:
        _fail(exc)
    _start(config)


def _common(fn: Any) -> Any:
    options = [
        click.option("--listen", required=True, help="HOST:PORT to accept on."),
        click.option("--upstream", required=True, help="HOST:PORT to forward to."),
        click.option("--ca", required=True, type=click.Path(exists=True, dir_okay=False), help="Trust bundle PEM."),
        click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False), help="Cert chain PEM."),
        click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="Private key PEM."),
        click.option("--workers", default=1, show_default=True, type=int, help="Processes (SO_REUSEPORT)."),
        click.option("--trust-domain", default=None,
                     help="Peers' trust domain (default: taken from the first allowed/expected ID)."),
        click.option("--min-tls", type=click.Choice(["1.2", "1.3"]), default="1.3", show_default=True),
        click.option("--session-resumption/--no-session-resumption", default=True, show_default=True,
                     help="TLS 1.3 session tickets between sidecars (per certificate version)."),
        click.option("--admin", "admin_address", default="", help="Admin HOST:PORT (loopback); off if empty."),
        click.option("--access-log/--no-access-log", default=True, show_default=True),
        click.option("--idle-timeout", default="1h", show_default=True),
        click.option("--send-timeout", default="5m", show_default=True,
                     help="Cut a client that takes none of the bytes queued for it this long (0 = off)."),
        click.option("--handshake-timeout", default="10s", show_default=True),
        click.option("--max-connections", default=10000, show_default=True, type=int),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"),
        click.option("--protocol", type=click.Choice(["tcp", "http", "auto"]), default="tcp", show_default=True,
                     help="tcp: L4 splice; http: L7 (HTTP/1.1, HTTP/2, gRPC) with per-request authz."),
        click.option("--upstream-protocol", type=click.Choice(["auto", "http1", "http2"]), default="auto",
                     show_default=True, help="protocol http: what to speak upstream (auto: as the client does; "
                     "gRPC always h2)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _flag_config(kind: str, ids: tuple[str, ...], kw: dict[str, Any], *, policies: str = "", **listener: Any) -> Any:
    from secmesh.configfile import Duration, parse_duration
    from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId
    from secmesh.sidecar.config import (AdminConfig, CertsConfig, FileSourceConfig, ListenerConfig,
                                        SidecarConfig, TlsConfig)
    from secmesh.sidecar.l7_config import HttpConfig

    td = kw["trust_domain"]
    if td is None:
        td = ""
        for pid in ids:
            try:
                td = SpiffeId.parse(pid.replace("/**", "/x").replace("/*", "/x")).trust_domain.name
                break
            except InvalidSpiffeId:
                continue
    try:
        return SidecarConfig(
            trust_domain=td, workers=kw["workers"], log_level=kw["log_level"], access_log=kw["access_log"],
            policies=policies,
            admin=AdminConfig(address=kw["admin_address"], enabled=bool(kw["admin_address"])),
            certs=CertsConfig(source="file", file=FileSourceConfig(cert=kw["cert"], key=kw["key"], bundle=kw["ca"])),
            tls=TlsConfig(min_version=kw["min_tls"], handshake_timeout=Duration(parse_duration(kw["handshake_timeout"])),
                          session_resumption=kw["session_resumption"]),
            listeners=[ListenerConfig(name=kind, kind=kind, address=kw["listen"], upstream=kw["upstream"],
                                      max_connections=kw["max_connections"],
                                      idle_timeout=Duration(parse_duration(kw["idle_timeout"])),
                                      send_timeout=Duration(parse_duration(kw["send_timeout"])),
                                      protocol=kw["protocol"],
                                      http=HttpConfig(upstream_protocol=kw["upstream_protocol"]), **listener)])
    except ValueError as exc:
        _fail(ConfigError(str(exc), location="flags"))


@cli.command()
@_common
@click.option("--allow-principal", "allow", multiple=True, help="Allowed peer SPIFFE ID; `*` = one segment, "
              "`**` = the rest (repeatable).")
@click.option("--allow-all", is_flag=True, help="Admit any peer whose certificate verifies.")
@click.option("--mtls-mode", type=click.Choice(["STRICT", "PERMISSIVE", "DISABLE"], case_sensitive=False),
              default=None, help="PeerAuthentication mode of the port [STRICT] (not with --policies).")
@click.option("--policies", "policy_path", default="", help="Istio policy YAML (file or directory) instead of an "
              "allow list: AuthorizationPolicy, PeerAuthentication, RequestAuthentication.")
def inbound(allow: tuple[str, ...], allow_all: bool, mtls_mode: str | None, policy_path: str, **kw: Any) -> None:
    """Terminate mTLS on --listen, authorize the peer, forward plaintext to --upstream."""
    if not allow and not allow_all and not policy_path:
        raise click.UsageError("give --allow-principal ID (repeatable), --allow-all or --policies FILE "
                               "(fail closed otherwise)")
    from secmesh.sidecar.config import MtlsMode

    mode = MtlsMode(mtls_mode.upper()) if mtls_mode else (None if policy_path else MtlsMode.STRICT)
    _start(_flag_config("inbound", allow, kw, policies=policy_path, allow_principals=list(allow),
                        allow_all=allow_all, mtls_mode=mode))


@cli.command()
@_common
@click.option("--peer-id", "peer_ids", multiple=True, required=True, help="Expected server SPIFFE ID (repeatable).")
@click.option("--sni", default="", help="SNI to send (default none).")
def outbound(peer_ids: tuple[str, ...], sni: str, **kw: Any) -> None:
    """Accept plaintext on --listen, originate mTLS to --upstream, check the server's SPIFFE ID."""
    _start(_flag_config("outbound", peer_ids, kw, peer_ids=list(peer_ids), sni=sni))
