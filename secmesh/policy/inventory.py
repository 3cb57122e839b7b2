"""What the linted tree says about workloads: which exist, and which of their ports are TCP.

Policies alone cannot tell whether a selector matches anything or whether port 3306 speaks
HTTP. The manifests that usually sit next to them can: Deployments (and other pod
templates) and Pods name workloads and their labels; Services select workloads and declare
each port's protocol the way Istio reads it (`appProtocol`, else the port name's prefix,
`tcp-db` → tcp); and `policy test` cases name the workloads they exercise and, with
`protocol: tcp`, which of their ports are TCP. Nothing here is guessed: with no manifest in
a namespace the linter stays silent about that namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from secmesh.policy.model import Pos, selector_matches
from secmesh.policy.yamlsrc import Node

# Istio's explicit protocol selection: everything but these is opaque (TCP) to authorization.
HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web", "h2c"})
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}


@dataclass(frozen=True, slots=True)
class KnownWorkload:
    """A workload some manifest declares. `partial`: labels are a subset (a Service selector)."""

    namespace: str
    labels: Mapping[str, str] = field(compare=False)
    origin: str
    partial: bool = False

    def matched_by(self, selector: Mapping[str, str] | None) -> bool:
        """Could a policy with `selector` select this workload?"""
        if not selector:
            return True
        if not self.partial:
            return selector_matches(selector, self.labels)
        return all(self.labels.get(k, v) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class TcpPort:
    workload: KnownWorkload
    port: int
    origin: str  # "Service data/mysql port tcp-mysql (db.yaml:20:7)"


@dataclass(slots=True)
class Inventory:
    workloads: list[KnownWorkload] = field(default_factory=list)
    tcp_ports: list[TcpPort] = field(default_factory=list)
    _by_ns: dict[str, list[KnownWorkload]] | None = None
    _indexed: int = -1

    def namespaces(self) -> set[str]:
        return {w.namespace for w in self.workloads}

    def in_namespace(self, namespace: str | None) -> list[KnownWorkload]:
        """Known workloads of one namespace (None: all), indexed on first use after changes."""
        if namespace is None:
            return self.workloads
        if self._by_ns is None or self._indexed != len(self.workloads):
            self._by_ns = {}
            for w in self.workloads:
                self._by_ns.setdefault(w.namespace, []).append(w)
            self._indexed = len(self.workloads)
        return self._by_ns.get(namespace, [])

    def add_test_workload(self, namespace: str, labels: Mapping[str, str], origin: str,
                          tcp_port: int | None = None) -> None:
        w = KnownWorkload(namespace, dict(labels), origin)
        self.workloads.append(w)
        if tcp_port is not None:
            self.tcp_ports.append(TcpPort(w, tcp_port, f"test case {origin} (protocol: tcp)"))


def _get(m: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(m, Mapping):
            return None
        m = m.get(key)
    return m


def _labels(m: Any) -> dict[str, str] | None:
    if not isinstance(m, Mapping):
        return None
    return {str(k): str(v) for k, v in m.items() if isinstance(v, (str, int, bool))}


def _where(kind: str, ns: str, name: Any, pos: Pos) -> str:
    return f"{kind} {ns}/{name} ({pos})"


def _is_tcp(port: Mapping[str, Any]) -> bool:
    app = port.get("appProtocol")
    if isinstance(app, str) and app:
        return app.lower() not in HTTP_PROTOCOLS and not app.lower().startswith("kubernetes.io/h2c")
    name = port.get("name")
    if isinstance(name, str) and name:
        proto = name.split("-", 1)[0].lower()
        return proto in ("tcp", "tls", "https", "mongo", "mysql", "redis", "udp")
    return False


def collect(nodes: Iterable[Node]) -> Inventory:
    """Read workloads and TCP ports from non-security Kubernetes objects."""
    inv = Inventory()
    for node in nodes:
        v = node.value
        kind, ns = v.get("kind"), _get(v, "metadata", "namespace") or "default"
        name = _get(v, "metadata", "name")
        if not isinstance(ns, str):
            continue
        origin = _where(kind, ns, name, node.pos)
        labels: dict[str, str] | None = None
        if kind in _POD_TEMPLATE_KINDS:
            labels = _labels(_get(v, "spec", "template", "metadata", "labels"))
        elif kind == "CronJob":
            labels = _labels(_get(v, "spec", "jobTemplate", "spec", "template", "metadata", "labels"))
        elif kind == "Pod":
            labels = _labels(_get(v, "metadata", "labels"))
        if labels is not None:
            inv.workloads.append(KnownWorkload(ns, labels, origin))
        elif kind == "Service":
            selector = _labels(_get(v, "spec", "selector"))
            if not selector:
                continue
            w = KnownWorkload(ns, selector, origin, partial=True)
            inv.workloads.append(w)
            for p in _get(v, "spec", "ports") or ():
                if not isinstance(p, Mapping) or not _is_tcp(p):
                    continue
                target = p.get("targetPort", p.get("port"))
                if isinstance(target, int) and not isinstance(target, bool):
                    inv.tcp_ports.append(TcpPort(w, target, f"Service {ns}/{name} port {p.get('name') or target} "
                                                            f"({node.pos})"))
    return inv
