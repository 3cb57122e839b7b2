"""Clusters, pure part: endpoints, load balancing, passive outlier ejection, the retry budget.

No sockets and no clock of its own: `now` comes in, randomness is injected (`rng`), so every
decision is reproducible in a unit test. The connection pools that use these decisions live in
`pool.py`.

- **Load balancing**: round robin, or least request by Envoy's "power of two choices" (pick two
  endpoints at random, take the one with fewer requests in flight).
- **Outlier ejection** (Envoy's consecutive-5xx / consecutive-gateway-failure, passive): an
  endpoint that fails `consecutive_failures` times in a row (connect failure, reset, 5xx) is
  taken out of rotation for `base_ejection × times ejected`; at most `max_ejection_percent` of
  the endpoints are out at once (but one always may be). If every endpoint is ejected, all are
  used again (Envoy's panic mode): refusing everything helps nobody.
- **Retry budget** (Envoy's `retry_budget`): retries in flight may be at most `percent` of the
  requests in flight, and at least `min_concurrency`; it stops a retry storm from multiplying
  load on an upstream that is already failing. It is per cluster, as Envoy's
  `circuit_breakers.thresholds.retry_budget`: a route's `retries` only sets the count.
- **HTTP/2 keepalive** (Envoy's `connection_keepalive`): when to PING a quiet connection and when
  a PING left unanswered means the peer is gone (`Keepalive.step`).
"""

from __future__ import annotations

import random
from typing import Iterable

from secmesh.sidecar.l7_config import ClusterConfig

WAIT, PING, DEAD = "wait", "ping", "dead"
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


class Endpoint:
    __slots__ = ("host", "port", "address", "active", "failures", "ejected_until", "times_ejected")

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port, self.address = host.strip("[]"), int(port), address
        self.active = 0             # requests in flight
        self.failures = 0           # consecutive
        self.ejected_until = 0.0
        self.times_ejected = 0

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def __repr__(self) -> str:
        return f"Endpoint({self.address}, active={self.active})"


class Balancer:
    def __init__(self, endpoints: list[Endpoint], policy: str = "round_robin",
                 rng: random.Random | None = None) -> None:
        self.endpoints = endpoints
        self.policy = policy
        self._rng = rng or random.Random()
        self._next = 0

    def pick(self, now: float, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        eps = self.endpoints
        if len(eps) == 1 and not exclude:
            return eps[0]
        skip = set(exclude)
        live = [e for e in eps if e not in skip and not e.ejected(now)]
        if not live:
            live = [e for e in eps if e not in skip] or list(eps)   # panic: everything ejected
        if len(live) == 1:
            return live[0]
        if self.policy == "least_request":
            a, b = self._rng.sample(live, 2)
            return a if a.active <= b.active else b
        self._next += 1
        return live[self._next % len(live)]


class OutlierDetector:
    def __init__(self, endpoints: list[Endpoint], consecutive: int, base_ejection: float,
                 max_percent: float) -> None:
        self.endpoints = endpoints
        self.consecutive = consecutive
        self.base = base_ejection
        self.max_percent = max_percent

    def success(self, ep: Endpoint) -> None:
        ep.failures = 0

    def failure(self, ep: Endpoint, now: float) -> bool:
        """Count one failure; True if the endpoint was ejected now."""
        ep.failures += 1
        if self.consecutive <= 0 or ep.failures < self.consecutive or ep.ejected(now):
            return False
        out = sum(1 for e in self.endpoints if e.ejected(now))
        if out >= max(1, int(len(self.endpoints) * self.max_percent / 100)):
            return False
        ep.times_ejected += 1
        ep.ejected_until = now + self.base * ep.times_ejected
        ep.failures = 0
        return True


class RetryBudget:
    def __init__(self, percent: float, min_concurrency: int) -> None:
        self.percent = percent
        self.min_concurrency = min_concurrency
        self.requests = 0           # in flight
        self.retries = 0            # in flight

    def allows(self) -> bool:
        return self.retries < max(self.min_concurrency, self.requests * self.percent / 100.0)


class Keepalive:
    """PING a connection that received nothing for `interval`; dead if then nothing for `timeout`.

    Any bytes received after the PING count as an answer (Envoy extends the timeout on every frame),
    so a PING ACK queued behind a large response never cuts a healthy connection."""

    __slots__ = ("interval", "timeout", "ping_at", "pings")

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval, self.timeout = interval, timeout
        self.ping_at = 0.0          # when the unanswered PING went out; 0: none
        self.pings = 0

    def step(self, now: float, last_rx: float) -> tuple[str, float]:
        """(WAIT | PING | DEAD, seconds until the next step)."""
        if self.ping_at:
            if last_rx >= self.ping_at:
                self.ping_at = 0.0
            elif now - self.ping_at >= self.timeout:
                return DEAD, 0.0
            else:
                return WAIT, self.ping_at + self.timeout - now
        quiet = now - last_rx
        if quiet < self.interval:
            return WAIT, self.interval - quiet
        self.ping_at = now
        self.pings += 1
        return PING, self.timeout


class ClusterState:
    """One cluster's endpoints and the decisions about them (shared by all its pools)."""

    def __init__(self, cfg: ClusterConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.endpoints = [Endpoint(a) for a in cfg.endpoints]
        self.balancer = Balancer(self.endpoints, cfg.lb_policy, rng)
        self.outlier = OutlierDetector(self.endpoints, cfg.outlier_consecutive_failures,
                                       float(cfg.outlier_base_ejection), cfg.outlier_max_ejection_percent)
        self.budget = RetryBudget(cfg.retry_budget_percent, cfg.retry_min_concurrency)

    def may_retry(self, method: bytes, *, attempt: int, max_retries: int, sent: bool, status: int | None,
                  replayable: bool) -> bool:
        """Retry policy: connect failures always (nothing reached the app); a reset or a 5xx only
        for idempotent methods; never when the request body can no longer be replayed."""
        if attempt > max_retries or not replayable or not self.budget.allows():
            return False
        if not sent:
            return True
        return method in IDEMPOTENT and (status is None or status >= 500)
