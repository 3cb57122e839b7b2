"""PeerAuthentication: which mTLS mode applies to a workload's port, and which policy said so.

Precedence (istio.io security concepts): a workload-specific policy beats the namespace-wide
one, which beats the mesh-wide one (no selector, in the root namespace). Among several
candidates at one level the *oldest* wins (creationTimestamp; file order when absent).
`UNSET` inherits from the level above, and with nothing set at all the mode is PERMISSIVE.
`portLevelMtls` (workload policies only) overrides for that workload port; an UNSET port
entry inherits the workload's effective mode. A selector policy in the root namespace only
concerns workloads of the root namespace itself.
"""

from __future__ import annotations

import datetime as _dt

from secmesh.policy.decision import RuleRef
from secmesh.policy.model import (ROOT_NAMESPACE_DEFAULT, MtlsMode, PeerAuthentication, PolicySet, Workload,
                                  selector_matches)

_FAR_FUTURE = _dt.datetime.max.replace(tzinfo=_dt.timezone.utc)


def _created(pa: PeerAuthentication) -> tuple[_dt.datetime, int]:
    ts = pa.meta.creation_timestamp
    when = _FAR_FUTURE
    if ts:
        try:
            when = _dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            when = _FAR_FUTURE
    return when, pa.meta.order


def _oldest(candidates: list[PeerAuthentication]) -> PeerAuthentication | None:
    return min(candidates, key=_created) if candidates else None


def _ref(pa: PeerAuthentication, mode: MtlsMode) -> RuleRef:
    return RuleRef("PeerAuthentication", pa.meta.namespace, pa.meta.name, None, mode.value, pa.meta.pos)


class PeerAuthResolver:
    """Resolves the effective mode per port once, then answers from a small dict."""

    def __init__(self, policies: PolicySet, workload: Workload, root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> None:
        mesh = [p for p in policies.peer_authentication if p.meta.namespace == root_namespace and not p.selector]
        ns = [p for p in policies.peer_authentication if p.meta.namespace == workload.namespace and not p.selector]
        wl = [p for p in policies.peer_authentication
              if p.meta.namespace == workload.namespace and p.selector and selector_matches(p.selector, workload.labels)]
        self.mesh, self.namespace, self.workload = _oldest(mesh), _oldest(ns), _oldest(wl)
        mode, source = MtlsMode.PERMISSIVE, None
        for level in (self.mesh, self.namespace, self.workload):
            if level is not None and level.mode not in (None, MtlsMode.UNSET):
                mode, source = level.mode, level
        self.default_mode = mode
        self.default_ref = _ref(source, mode) if source else None
        self._ports: dict[int, tuple[MtlsMode, RuleRef]] = {}
        if self.workload is not None:
            for pm in self.workload.port_level:
                if pm.mode is not MtlsMode.UNSET:
                    self._ports[pm.port] = (pm.mode, _ref(self.workload, pm.mode))

    def resolve(self, port: int | None) -> tuple[MtlsMode, RuleRef | None]:
        hit = self._ports.get(port) if port is not None else None
        return hit if hit is not None else (self.default_mode, self.default_ref)

    def mode(self, port: int | None) -> MtlsMode:
        return self.resolve(port)[0]


def mtls_mode(policies: PolicySet, workload: Workload, port: int | None,
              root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> MtlsMode:
    """STRICT | PERMISSIVE | DISABLE for traffic to `port` of `workload`."""
    return PeerAuthResolver(policies, workload, root_namespace).mode(port)
