"""L7 configuration: routes, clusters and per-listener HTTP options (frozen dataclasses).

Loaded by `secmesh.configfile` as part of `SidecarConfig` (top-level `clusters`, each listener's
`http` section), so errors carry `file:line:col`. Defaults live here and are documented in
`configs/sidecar.yaml`. A listener without routes sends everything to its own `upstream`
(outbound: mTLS with the listener's `peer_ids`; inbound: plaintext to the app), so the L4
config keeps working unchanged when `protocol: http` is switched on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from secmesh.configfile import Duration
from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId

PROTOCOLS = ("auto", "http1", "http2")
LB_POLICIES = ("round_robin", "least_request")
NORMALIZATIONS = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
RETRY_BUFFER_DEFAULT = 64 * 1024        # Envoy's per_request_buffer_limit_bytes is of this order too
RETRY_BUFFER_MAX = 16 * 1024 * 1024     # a replay copy is held per request in flight: keep it bounded


def _retry_buffer(value: int, what: str) -> None:
    if not 0 <= value <= RETRY_BUFFER_MAX:
        raise ValueError(f"{what}: `retry_buffer_limit` must be within 0..{RETRY_BUFFER_MAX} bytes "
                         f"(16 MiB; 0 = never replay a body), got {value}")


def _host_port(text: str, what: str) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"`{what}`: expected HOST:PORT, got {text!r}")


@dataclass(frozen=True)
class HeaderMatchConfig:
    """One request-header condition; exactly one of exact / prefix / regex / present."""

    name: str = ""
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None
    invert: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a header match needs a `name`")
        object.__setattr__(self, "name", self.name.lower())
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"header match {self.name!r}: set exactly one of exact, prefix, regex, present")
        if self.regex is not None:
            _compile(self.regex, f"header {self.name!r} regex")


def check_peer_ids(owner: str, peer_ids: list[str]) -> None:
    """Every expected server ID must be a SPIFFE ID; the error names the listener or cluster."""
    for pid in peer_ids:
        try:
            SpiffeId.parse(pid)
        except InvalidSpiffeId as exc:
            raise ValueError(f"{owner}: peer_ids: {pid!r}: {exc}") from None


@dataclass(frozen=True)
class RouteConfig:
    """Request → cluster. Every given condition must hold; the first matching route wins."""

    name: str = ""
    authority: list[str] = field(default_factory=list)   # exact host, `*.suffix`, `prefix.*` or `*`
    path_exact: str = ""
    path_prefix: str = ""
    path_regex: str = ""
    methods: list[str] = field(default_factory=list)
    headers: list[HeaderMatchConfig] = field(default_factory=list)
    cluster: str = ""
    timeout: Duration | None = None     # request timeout for this route (None: the cluster's)
    retries: int | None = None          # max retries for this route (None: the cluster's); count only
    retry_buffer_limit: int | None = None   # request bytes kept for a replay (None: the cluster's)

    def __post_init__(self) -> None:
        if not self.cluster:
            raise ValueError(f"route {self.name or '?'}: needs a `cluster`")
        if sum(bool(p) for p in (self.path_exact, self.path_prefix, self.path_regex)) > 1:
            raise ValueError(f"route {self.name or self.cluster}: set at most one of "
                             "path_exact, path_prefix, path_regex")
        for p in (self.path_exact, self.path_prefix):
            if p and not p.startswith("/"):
                raise ValueError(f"route {self.name or self.cluster}: paths start with '/', got {p!r}")
        if self.path_regex:
            _compile(self.path_regex, f"route {self.name or self.cluster} path_regex")
        object.__setattr__(self, "authority", [a.lower() for a in self.authority])
        object.__setattr__(self, "methods", [m.upper() for m in self.methods])
        object.__setattr__(self, "headers", list(self.headers))
        if self.retries is not None and self.retries < 0:
            raise ValueError(f"route {self.name or self.cluster}: `retries` must be >= 0")
        if self.retry_buffer_limit is not None:
            _retry_buffer(self.retry_buffer_limit, f"route {self.name or self.cluster}")


@dataclass(frozen=True)
class ClusterConfig:
    """A set of upstream endpoints and how requests reach them."""

    name: str = ""
    endpoints: list[str] = field(default_factory=list)   # HOST:PORT
    tls: bool = False                   # originate mTLS with the workload certificate (to a peer sidecar)
    peer_ids: list[str] = field(default_factory=list)    # tls: SPIFFE IDs the server may present
    sni: str = ""
    protocol: str = "auto"              # auto (as the downstream speaks; gRPC always h2) | http1 | http2
    lb_policy: str = "round_robin"      # round_robin | least_request (power of two choices)
    connect_timeout: Duration = Duration(5.0)
    request_timeout: Duration = Duration(15.0)   # until the response ends; 0 = none
    idle_timeout: Duration = Duration(60.0)      # pooled connection unused this long is closed
    max_idle_per_endpoint: int = 1024            # HTTP/1.1 keep-alive connections kept idle per endpoint
    max_connections_per_endpoint: int = 1024     # HTTP/1.1 connections per endpoint; more requests wait…
    max_pending_requests: int = 1024             # …this many per endpoint; beyond, 503 upstream_overflow
    max_streams_per_connection: int = 100        # h2: open another connection above this
    retries: int = 2                    # on connect failure, reset before a response, 5xx (idempotent)
    retry_budget_percent: float = 20.0  # retries in flight at most this share of requests in flight…
    retry_min_concurrency: int = 3      # …but always allow this many
    outlier_consecutive_failures: int = 5        # connect failures / 5xx in a row → eject the endpoint
    outlier_base_ejection: Duration = Duration(30.0)   # ejected for this × times ejected
    outlier_max_ejection_percent: float = 50.0
    retry_buffer_limit: int = RETRY_BUFFER_DEFAULT   # request bytes kept for a replay; larger bodies stream, no retry
    h2_keepalive_interval: Duration = Duration(0.0)  # h2: PING a connection silent this long; 0 = off
    h2_keepalive_timeout: Duration = Duration(20.0)  # …and close it if nothing arrives within this

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a cluster needs a `name`")
        if not self.endpoints:
            raise ValueError(f"cluster {self.name}: needs at least one endpoint")
        for i, ep in enumerate(self.endpoints):
            _host_port(ep, f"clusters[{self.name}].endpoints[{i}]")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"cluster {self.name}: `protocol` must be one of {', '.join(PROTOCOLS)}")
        if self.lb_policy not in LB_POLICIES:
            raise ValueError(f"cluster {self.name}: `lb_policy` must be one of {', '.join(LB_POLICIES)}")
        if self.tls and not self.peer_ids:
            raise ValueError(f"cluster {self.name}: `tls: true` needs `peer_ids` (the server IDs to accept)")
        check_peer_ids(f"cluster {self.name}", self.peer_ids)
        if min(self.retries, self.max_idle_per_endpoint, self.max_pending_requests) < 0 or min(
                self.max_streams_per_connection, self.max_connections_per_endpoint) < 1:
            raise ValueError(f"cluster {self.name}: retries/max_idle_per_endpoint/max_pending_requests must be "
                             ">= 0, max_streams_per_connection/max_connections_per_endpoint >= 1")
        if not 0 <= self.outlier_max_ejection_percent <= 100 or not 0 <= self.retry_budget_percent <= 100:
            raise ValueError(f"cluster {self.name}: percentages must be within 0..100")
        _retry_buffer(self.retry_buffer_limit, f"cluster {self.name}")
        if self.h2_keepalive_interval < 0 or self.h2_keepalive_timeout < 0 or (
                self.h2_keepalive_interval and not self.h2_keepalive_timeout):
            raise ValueError(f"cluster {self.name}: `h2_keepalive_interval` must be >= 0 and, when set, "
                             "`h2_keepalive_timeout` > 0")
        object.__setattr__(self, "endpoints", list(self.endpoints))
        object.__setattr__(self, "peer_ids", list(self.peer_ids))


@dataclass(frozen=True)
class HttpConfig:
    """Per-listener L7 options (used when the listener's `protocol` is `http`)."""

    routes: list[RouteConfig] = field(default_factory=list)   # none: everything to the listener's upstream
    upstream_protocol: str = "auto"     # the implicit cluster's protocol (auto | http1 | http2)
    max_request_line: int = 8 * 1024    # request target bytes → 414
    max_header_bytes: int = 60 * 1024   # request head → 431
    max_headers: int = 100              # header fields → 431
    max_body: int = 0                   # request body bytes → 413; 0 = no limit (bodies stream)
    header_timeout: Duration = Duration(10.0)    # a started request head must complete within this (slowloris)
    deny_header: bool = True            # name the denying policy in `x-secmesh-denied-by`
    path_normalization: str = "BASE"    # how paths are normalized before policies match (Istio's default)
    h2_max_concurrent_streams: int = 100
    h2_initial_window: int = 256 * 1024  # per-stream receive window: bounds memory per slow stream
    h2_connection_window: int = 1024 * 1024
    h2_max_header_list: int = 64 * 1024
    h2_reset_limit: int = 100           # premature resets per 10 s before the connection is cut (rapid reset)

    def __post_init__(self) -> None:
        if self.upstream_protocol not in PROTOCOLS:
            raise ValueError(f"`http.upstream_protocol` must be one of {', '.join(PROTOCOLS)}")
        if self.path_normalization not in NORMALIZATIONS:
            raise ValueError(f"`http.path_normalization` must be one of {', '.join(NORMALIZATIONS)}")
        if min(self.max_request_line, self.max_header_bytes, self.max_headers, self.h2_max_concurrent_streams) < 1:
            raise ValueError("`http` limits must be positive")
        if not 65535 <= self.h2_initial_window < 1 << 31 or not 65535 <= self.h2_connection_window < 1 << 31:
            raise ValueError("`http.h2_initial_window` / `h2_connection_window` must be within 65535..2^31-1")
        object.__setattr__(self, "routes", list(self.routes))


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what}: invalid regular expression: {exc}") from None
