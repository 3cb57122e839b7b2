"""Sidecar configuration: frozen dataclasses loaded with `secmesh.configfile.load_config`.

Defaults live here and nowhere else; `configs/sidecar.yaml` documents each one. Validation
happens in `__post_init__`, so a bad value is reported with the `file:line:col` of its
mapping by the config loader and the sidecar refuses to start instead of guessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from secmesh.configfile import Duration, load_config
from secmesh.identity.spiffe import InvalidSpiffeId, TrustDomain
from secmesh.sidecar.l7_config import ClusterConfig, HttpConfig, check_peer_ids

DEFAULT_SDS_SOCKET = "/var/run/secrets/workload-spiffe-uds/socket"
DEFAULT_TOKEN_FILE = "/var/run/secrets/tokens/istio-token"   # the pod's projected service-account token


class MtlsMode(str, Enum):
    """Istio PeerAuthentication `mtls.mode` for one port."""

    STRICT = "STRICT"          # mTLS only; plaintext is refused
    PERMISSIVE = "PERMISSIVE"  # sniff the first bytes: TLS ClientHello → mTLS, anything else → plaintext
    DISABLE = "DISABLE"        # plaintext only, passed through


def split_host_port(text: str, *, what: str) -> tuple[str, int]:
    """`127.0.0.1:15006`, `[::1]:80` or `host:port` → (host, port); errors name `what`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"`{what}`: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class AdminConfig:
    address: str = "127.0.0.1:15000"   # loopback only; empty string disables the admin server
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.enabled and self.address:
            host, _ = split_host_port(self.address, what="admin.address")
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise ValueError("`admin.address` must be a loopback address (the admin port is unauthenticated)")


@dataclass(frozen=True)
class SdsConfig:
    socket: str = DEFAULT_SDS_SOCKET
    cert_resource: str = "default"
    root_resource: str = "ROOTCA"
    backoff_initial: Duration = Duration(0.5)
    backoff_max: Duration = Duration(30.0)
    # sent as `authorization: Bearer …` on StreamSecrets (a per-node agent tells pods apart by it);
    # re-read on every (re)connect; "" disables; the default path is optional, any other must exist
    token_file: str = DEFAULT_TOKEN_FILE

    def token_path(self) -> str | None:
        """The token file to send now, or None (disabled, or the default path is absent)."""
        if not self.token_file:
            return None
        if self.token_file == DEFAULT_TOKEN_FILE and not os.path.exists(self.token_file):
            return None
        return self.token_file


@dataclass(frozen=True)
class FileSourceConfig:
    cert: str = ""            # PEM chain: leaf first, then intermediates
    key: str = ""             # PEM private key (PKCS#8 or SEC1)
    bundle: str = ""          # PEM trust bundle (roots of the trust domain)
    poll_interval: Duration = Duration(1.0)


@dataclass(frozen=True)
class CertsConfig:
    source: str = "sds"       # "sds" (agent over the UDS) or "file"
    sds: SdsConfig = field(default_factory=SdsConfig)
    file: FileSourceConfig = field(default_factory=FileSourceConfig)

    def __post_init__(self) -> None:
        if self.source not in ("sds", "file"):
            raise ValueError(f"`certs.source` must be `sds` or `file`, got {self.source!r}")
        if self.source == "file" and not (self.file.cert and self.file.key and self.file.bundle):
            raise ValueError("`certs.file` needs `cert`, `key` and `bundle` when `certs.source` is `file`")
        tok = self.sds.token_file
        if self.source == "sds" and tok and tok != DEFAULT_TOKEN_FILE and not os.path.isfile(tok):
            raise ValueError(f"`certs.sds.token_file`: {tok} does not exist (set it to \"\" to send no token)")


@dataclass(frozen=True)
class TlsConfig:
    min_version: str = "1.3"          # "1.3" (default) or "1.2"; nothing older is ever offered
    handshake_timeout: Duration = Duration(10.0)
    ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20"   # only used when min_version is 1.2
    session_resumption: bool = True   # TLS 1.3 tickets between sidecars (see configs/sidecar.yaml)

    def __post_init__(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise ValueError(f"`tls.min_version` must be \"1.2\" or \"1.3\", got {self.min_version!r}")


@dataclass(frozen=True)
class ListenerConfig:
    name: str = ""
    kind: str = "inbound"              # inbound: mTLS in → plaintext to the app; outbound: the reverse
    address: str = ""                  # HOST:PORT to listen on
    upstream: str = ""                 # HOST:PORT to forward to
    mtls_mode: MtlsMode | None = None  # inbound, without `policies`: STRICT (the default), PERMISSIVE or DISABLE
    protocol: str = "tcp"              # `tcp` (L4 splice), `http` (L7: HTTP/1.1, h2, gRPC; per-request authz)
                                       # or `auto` (per connection: ALPN / first bytes → http, else tcp)
    protocol_detection_timeout: Duration = Duration(0.1)   # auto: no (conclusive) first bytes by then → tcp
    workload_port: int = 0             # inbound: the port policies name (portLevelMtls, to.ports); 0 = upstream's port
    allow_principals: list[str] = field(default_factory=list)  # inbound: SPIFFE ID patterns (`*` one segment, `**` the rest)
    allow_all: bool = False            # inbound: admit any verified peer when allow_principals is empty
    peer_ids: list[str] = field(default_factory=list)     # outbound: the server SPIFFE IDs accepted (at least one)
    sni: str = ""                      # outbound: SNI to send (empty: none)
    max_connections: int = 10000       # per worker; beyond it new connections are closed at once
    idle_timeout: Duration = Duration(3600.0)
    send_timeout: Duration = Duration(300.0)   # a client that takes nothing of what we queued this long is cut; 0 = off
    connect_timeout: Duration = Duration(5.0)
    http: HttpConfig = field(default_factory=HttpConfig)   # protocol http: routes, limits, HTTP/2 settings

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a listener needs a `name`")
        if self.kind not in ("inbound", "outbound"):
            raise ValueError(f"listener {self.name}: `kind` must be inbound or outbound, got {self.kind!r}")
        split_host_port(self.address, what=f"listeners[{self.name}].address")
        split_host_port(self.upstream, what=f"listeners[{self.name}].upstream")
        if self.protocol not in ("tcp", "http", "auto"):
            raise ValueError(f"listener {self.name}: `protocol` must be auto, tcp or http, got {self.protocol!r}")
        if self.protocol_detection_timeout < 0:
            raise ValueError(f"listener {self.name}: `protocol_detection_timeout` must be 0 (no timeout) or more")
        if not 0 <= self.workload_port <= 65535:
            raise ValueError(f"listener {self.name}: `workload_port` must be in 0..65535")
        if isinstance(self.mtls_mode, str) and not isinstance(self.mtls_mode, MtlsMode):
            try:
                object.__setattr__(self, "mtls_mode", MtlsMode(self.mtls_mode.upper()))
            except ValueError:
                raise ValueError(f"listener {self.name}: `mtls_mode` must be STRICT, PERMISSIVE or DISABLE, "
                                 f"got {self.mtls_mode!r}") from None
        # lists, not tuples: configfile re-validates `dataclasses.asdict()` output, which keeps tuples
        object.__setattr__(self, "allow_principals", list(self.allow_principals))
        object.__setattr__(self, "peer_ids", list(self.peer_ids))
        if self.allow_all and self.allow_principals:
            raise ValueError(f"listener {self.name}: set either `allow_principals` or `allow_all`, not both")
        if self.kind == "outbound":
            if not self.peer_ids:
                raise ValueError(f"listener {self.name}: an outbound listener needs `peer_ids`")
            check_peer_ids(f"listener {self.name}", self.peer_ids)
        if self.max_connections < 1:
            raise ValueError(f"listener {self.name}: `max_connections` must be at least 1")
        if self.send_timeout < 0:
            raise ValueError(f"listener {self.name}: `send_timeout` must be 0 (off) or more")

    @property
    def is_l7(self) -> bool:
        """Does this listener need the L7 runtime (HTTP sessions, routes, clusters)? `http` and `auto` do."""
        return self.protocol in ("http", "auto")

    @property
    def static_mode(self) -> MtlsMode:
        """The port's mode when no policy files are configured (STRICT unless set)."""
        return self.mtls_mode or MtlsMode.STRICT

    @property
    def policy_port(self) -> int:
        """The destination port policies see: the workload (app) port, as behind Istio's iptables redirect."""
        return self.workload_port or self.upstream_addr[1]

    @property
    def listen(self) -> tuple[str, int]:
        return split_host_port(self.address, what="address")

    @property
    def upstream_addr(self) -> tuple[str, int]:
        return split_host_port(self.upstream, what="upstream")


@dataclass(frozen=True)
class WorkloadConfig:
    """Who this sidecar protects, as Istio policy scoping sees it (namespace + pod labels)."""

    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError("`workload.namespace` must not be empty")
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in dict(self.labels).items()})


@dataclass(frozen=True)
class SidecarConfig:
    trust_domain: str = "cluster.local"   # peers must carry an ID of this domain; "" = any verified domain
    workers: int = 0                      # processes sharing each port (SO_REUSEPORT); 0 = one per core
    log_level: str = "info"
    access_log: bool = True               # one JSON line per connection when it closes
    drain_timeout: Duration = Duration(5.0)
    hot_restart_socket: str = ""          # UDS: take the listening sockets from the process serving it (any workers)
    buffer_high_water: int = 262144       # bytes queued towards one side before the other side is paused
    buffer_low_water: int = 65536         # … and resumed
    policies: str = ""                    # Istio YAML (file or directory): Authorization + PeerAuthentication
    root_namespace: str = "istio-system"  # meshConfig.rootNamespace: policies there apply mesh-wide
    policy_poll_interval: Duration = Duration(1.0)   # how often `policies` is checked for changes
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    certs: CertsConfig = field(default_factory=CertsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    listeners: list[ListenerConfig] = field(default_factory=list)
    clusters: list[ClusterConfig] = field(default_factory=list)   # upstreams that `http` listeners' routes name

    def __post_init__(self) -> None:
        if self.trust_domain:
            try:
                TrustDomain.parse(self.trust_domain)
            except InvalidSpiffeId as exc:
                raise ValueError(f"`trust_domain`: {exc}") from None
        if self.workers < 0:
            raise ValueError("`workers` must be 0 (one per core) or more")
        if not 0 < self.buffer_low_water <= self.buffer_high_water:
            raise ValueError("need 0 < buffer_low_water <= buffer_high_water")
        listeners = list(self.listeners)
        names = [lst.name for lst in listeners]
        if len(set(names)) != len(names):
            raise ValueError("listener names must be unique")
        object.__setattr__(self, "listeners", listeners)
        clusters = list(self.clusters)
        cnames = [c.name for c in clusters]
        if len(set(cnames)) != len(cnames):
            raise ValueError("cluster names must be unique")
        object.__setattr__(self, "clusters", clusters)
        for lst in listeners:
            if not lst.is_l7:
                continue
            for r in lst.http.routes:
                if r.cluster not in cnames:
                    raise ValueError(f"listener {lst.name}: route {r.name or r.cluster!r} names unknown cluster "
                                     f"{r.cluster!r} (clusters: {', '.join(cnames) or 'none'})")
        if self.policies:
            for lst in listeners:
                if lst.kind != "inbound":
                    continue
                if lst.allow_principals or lst.allow_all:
                    raise ValueError(f"listener {lst.name}: `allow_principals`/`allow_all` cannot be combined with "
                                     "`policies` (the AuthorizationPolicies decide); remove one of them")
                if lst.mtls_mode is not None:
                    raise ValueError(f"listener {lst.name}: `mtls_mode` cannot be combined with `policies` "
                                     "(PeerAuthentication in the policy files sets each port's mode)")
        if not self.root_namespace:
            raise ValueError("`root_namespace` must not be empty")

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


def load(path: Path | str | None, *, env: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None) -> SidecarConfig:
    """defaults < YAML < SECMESH_* env < flags (see `secmesh.configfile`)."""
    config = load_config(SidecarConfig, path, env=env, flags=flags)
    if not config.listeners:
        from secmesh.errors import ConfigError

        raise ConfigError("no listeners configured", location=str(path) if path else None, field="listeners")
    return config
