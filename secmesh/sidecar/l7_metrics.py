"""Metrics of the L7 data path (requests, local replies, codec errors, upstream pools).

Registered on the one `secmesh.metrics.REGISTRY`; label children are bound once and cached
(pitfall P17) — the per-request path only calls `.inc()` on a child it already holds.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable

from prometheus_client import Counter, Gauge

from secmesh.metrics import REGISTRY

REQUESTS = Counter(
    "secmesh_sidecar_http_requests", "HTTP requests finished, by listener, status class (2xx…5xx, or reset) "
    "and who answered (upstream or local).", ["listener", "status", "origin"], registry=REGISTRY)
L7_AUTHZ = Counter(
    "secmesh_sidecar_http_authz_decisions", "Per-request authorization decisions, by listener, decision, "
    "reason (closed set) and the policy that decided.", ["listener", "decision", "reason", "policy"],
    registry=REGISTRY)
CODEC_ERRORS = Counter(
    "secmesh_sidecar_http_codec_errors", "Downstream protocol errors, by listener and reason "
    "(smuggling, headers_too_large, rapid_reset, …); the connection is closed.", ["listener", "reason"],
    registry=REGISTRY)
UPSTREAM = Counter(
    "secmesh_sidecar_upstream_events", "Upstream pool events, by cluster and event (connect, connect_failed, "
    "reset, retry, retry_budget_exhausted, unbuffered, h2_keepalive_timeout, ejected, timeout).", ["cluster", "event"], registry=REGISTRY)
UPSTREAM_ACTIVE = Gauge("secmesh_sidecar_upstream_connections", "Upstream connections open, by cluster.",
                        ["cluster"], registry=REGISTRY, multiprocess_mode="livesum")


@lru_cache(maxsize=4096)
def requests(listener: str, status: str, origin: str) -> Counter:
    return REQUESTS.labels(listener, status, origin)


@lru_cache(maxsize=4096)
def authz(listener: str, decision: str, reason: str, policy: str) -> Counter:
    return L7_AUTHZ.labels(listener, decision, reason, policy)


@lru_cache(maxsize=None)
def codec_errors(listener: str, reason: str) -> Counter:
    return CODEC_ERRORS.labels(listener, reason)


@lru_cache(maxsize=None)
def upstream(cluster: str, event: str) -> Counter:
    return UPSTREAM.labels(cluster, event)


@lru_cache(maxsize=None)
def upstream_active(cluster: str) -> Gauge:
    return UPSTREAM_ACTIVE.labels(cluster)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if status else "reset"


def incrementer(child: Any) -> Callable[[], None]:
    """`child.inc` without its per-call checks: the value's own `inc(1)` (one frame, not two).

    For counters bumped on every request; falls back to `child.inc` if the client's internals differ."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return partial(inc, 1) if callable(inc) else child.inc
