"""The one Prometheus registry every `secmesh_*` metric is registered on.

Each component defines its own metrics next to its code (`secmesh/ca/metrics.py`,
`secmesh/agent/metrics.py`, …) on this registry, so admin endpoints export exactly ours and
several components in one test process do not collide with the global default registry.
Bind label children once and keep them (pitfall P17): `labels()` costs ~1.5 µs, a bound
child ~0.36 µs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)


def exposition() -> bytes:
    """Prometheus text format of every secmesh metric."""
    return generate_latest(REGISTRY)
