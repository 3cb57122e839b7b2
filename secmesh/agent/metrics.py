"""The agent's `secmesh_agent_*` metrics, on the one `secmesh.metrics.REGISTRY`.

Counters are module-level (one per process). Gauges that describe the cache (identities held,
seconds to expiry per identity and for the root) are computed at scrape time by a collector
that reads the live caches, so they can never go stale or leak label sets of evicted identities.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from secmesh.metrics import REGISTRY

TOKENS_REJECTED = Counter("secmesh_agent_tokens_rejected_total",
                          "Workload tokens refused by the agent, by reason", ["reason"], registry=REGISTRY)
CA_REQUESTS = Counter("secmesh_agent_ca_requests_total", "CreateCertificate calls by result",
                      ["result"], registry=REGISTRY)
CA_ERRORS = Counter("secmesh_agent_ca_errors_total", "Failed CreateCertificate calls by reason",
                    ["reason"], registry=REGISTRY)
CA_LATENCY = Histogram("secmesh_agent_ca_request_seconds", "CreateCertificate round trip (key + CSR + call)",
                       registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ROTATIONS = Counter("secmesh_agent_rotations_total", "Certificates replaced in the cache by rotation",
                    registry=REGISTRY)
SDS_STREAMS = Gauge("secmesh_agent_sds_streams", "Open SDS StreamSecrets streams", registry=REGISTRY)
SDS_REQUESTS = Counter("secmesh_agent_sds_requests_total",
                       "SDS DiscoveryRequests by kind (initial, ack, nack, stale, unsubscribe, more)",
                       ["kind"], registry=REGISTRY)
SDS_PUSHES = Counter("secmesh_agent_sds_pushes_total", "SDS responses sent, by trigger (request, push, fetch)",
                     ["trigger"], registry=REGISTRY)
SDS_NACKS = Counter("secmesh_agent_sds_nacks_total", "SDS responses rejected by the client (NACK)",
                    registry=REGISTRY)
SDS_ERRORS = Counter("secmesh_agent_sds_errors_total", "SDS calls ended with an error status, by reason",
                     ["reason"], registry=REGISTRY)
WORKLOAD_API = Counter("secmesh_agent_workload_api_calls_total", "SPIFFE Workload API calls by method and code",
                       ["method", "code"], registry=REGISTRY)

_caches: "weakref.WeakSet[Any]" = weakref.WeakSet()


class _CacheCollector(Collector):
    """Scrape-time gauges from every live `SecretCache` (normally exactly one per process)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        held = GaugeMetricFamily("secmesh_agent_identities", "Identities whose key and certificate the agent holds")
        expiry = GaugeMetricFamily("secmesh_agent_cert_expiry_seconds",
                                   "Seconds until the cached leaf certificate expires", labels=["spiffe_id"])
        root = GaugeMetricFamily("secmesh_agent_root_expiry_seconds",
                                 "Seconds until the earliest-expiring trusted root expires")
        count = 0
        root_min: float | None = None
        for cache in list(_caches):
            snapshot = cache.expiry_snapshot()
            count += len(snapshot.leaves)
            for spiffe_id, seconds in snapshot.leaves:
                expiry.add_metric([spiffe_id], seconds)
            if snapshot.root_seconds is not None:
                root_min = snapshot.root_seconds if root_min is None else min(root_min, snapshot.root_seconds)
        held.add_metric([], count)
        yield held
        yield expiry
        if root_min is not None:
            root.add_metric([], root_min)
        yield root


REGISTRY.register(_CacheCollector())


def track_cache(cache: Any) -> None:
    """Export `cache`'s identities and expiries; the cache needs an `expiry_snapshot()` method."""
    _caches.add(cache)
