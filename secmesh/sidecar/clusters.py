"""Every upstream cluster of one worker: its endpoint pools, the idle sweep, the `/clusters` view.

The pools themselves (connections, HTTP/1.1 keep-alive, h2 multiplexing) are in `pool.py`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from secmesh.identity.spiffe import TrustDomain
from secmesh.sidecar.codec.http2 import H2Settings
from secmesh.sidecar.l7_flow import Flusher
from secmesh.sidecar.l7_tls import AlpnContexts
from secmesh.sidecar.pool import HTTP1, EndpointPool
from secmesh.sidecar.upstream import ClusterState, Endpoint


class ClusterManager:
    """Every cluster of one worker, with their pools; sweeps idle connections."""

    def __init__(self, clusters: dict[str, ClusterState], *, loop: asyncio.AbstractEventLoop, flusher: Flusher,
                 contexts: AlpnContexts | None, trust_domain: TrustDomain | None,
                 h2_settings: H2Settings = H2Settings(initial_window_size=256 * 1024)) -> None:
        self.clusters = clusters
        self.loop = loop
        self.flusher = flusher
        self.contexts = contexts
        self.trust_domain = trust_domain
        self.h2_settings = h2_settings
        self._pools: dict[tuple[str, str, str], EndpointPool] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def pool(self, cluster: ClusterState, endpoint: Endpoint, protocol: str) -> EndpointPool:
        key = (cluster.name, endpoint.address, protocol)
        p = self._pools.get(key)
        if p is None:
            p = self._pools[key] = EndpointPool(self, cluster, endpoint, protocol)
            if self._sweeper is None:
                self._schedule()
        return p

    def _schedule(self) -> None:
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for p in self._pools.values():
            p.sweep(now, float(p.cluster.cfg.idle_timeout))
        self._schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for p in self._pools.values():
            for c in p.idle + p.h2:
                if c.transport is not None:
                    c.transport.close()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        now = self.loop.time()
        for name, cs in self.clusters.items():
            out[name] = {"endpoints": [{"address": e.address, "active": e.active, "ejected": e.ejected(now),
                                        "times_ejected": e.times_ejected, **self._http1(name, e)}
                                       for e in cs.endpoints],
                         "requests_in_flight": cs.budget.requests, "retries_in_flight": cs.budget.retries}
        return out

    def _http1(self, cluster: str, ep: Endpoint) -> dict[str, int]:
        p = self._pools.get((cluster, ep.address, HTTP1))
        if p is None:
            return {"http1_connections": 0, "pending_requests": 0}
        return {"http1_connections": p.limit.live, "pending_requests": p.limit.pending}
