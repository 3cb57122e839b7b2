"""PeerAuthentication conformance (istio.io security concepts, peer_authentication.proto)."""

from __future__ import annotations

import textwrap

import pytest

from secmesh.policy.load import loads_policies
from secmesh.policy.model import MtlsMode, Workload
from secmesh.policy.peerauth import mtls_mode
from tests.conformance.helpers import ap, decide, request

WL = Workload("default", {"app": "app"})


def pa(name: str, ns: str, body: str, ts: str | None = None) -> str:
    meta = f"  name: {name}\n  namespace: {ns}\n" + (f"  creationTimestamp: \"{ts}\"\n" if ts else "")
    spec = textwrap.indent(textwrap.dedent(body).strip(), "  ") if body.strip() else "  {}"
    return f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n{meta}spec:\n{spec}\n---\n"


def mode(docs: str, port: int = 8080, wl: Workload = WL) -> MtlsMode:
    return mtls_mode(loads_policies(docs, "pa.yaml"), wl, port)


MESH_STRICT = pa("default", "istio-system", "mtls: {mode: STRICT}")
NS_PERMISSIVE = pa("default", "default", "mtls: {mode: PERMISSIVE}")
WL_DISABLE = pa("app", "default", "selector: {matchLabels: {app: app}}\nmtls: {mode: DISABLE}")

CASES = [
    ("UNSET: inherit from parent; if no parent is set, treated as PERMISSIVE", "", 8080, MtlsMode.PERMISSIVE),
    ("mesh-wide policy: in the root namespace, no selector", MESH_STRICT, 8080, MtlsMode.STRICT),
    ("namespace-wide overrides mesh-wide", MESH_STRICT + NS_PERMISSIVE, 8080, MtlsMode.PERMISSIVE),
    ("workload-specific overrides namespace-wide", MESH_STRICT + NS_PERMISSIVE + WL_DISABLE, 8080, MtlsMode.DISABLE),
    ("UNSET at the namespace inherits the mesh mode",
     MESH_STRICT + pa("default", "default", "mtls: {mode: UNSET}"), 8080, MtlsMode.STRICT),
    ("a policy without mtls inherits (same as UNSET)",
     MESH_STRICT + pa("app", "default", "selector: {matchLabels: {app: app}}"), 8080, MtlsMode.STRICT),
    ("portLevelMtls overrides the workload mode for that port",
     MESH_STRICT + pa("app", "default", "selector: {matchLabels: {app: app}}\nportLevelMtls: {9000: {mode: DISABLE}}"),
     9000, MtlsMode.DISABLE),
    ("portLevelMtls does not affect other ports",
     MESH_STRICT + pa("app", "default", "selector: {matchLabels: {app: app}}\nportLevelMtls: {9000: {mode: DISABLE}}"),
     8080, MtlsMode.STRICT),
    ("portLevelMtls UNSET inherits the workload's effective mode",
     NS_PERMISSIVE + pa("app", "default", "selector: {matchLabels: {app: app}}\nmtls: {mode: STRICT}\n"
                                          "portLevelMtls: {9000: {mode: UNSET}}"), 9000, MtlsMode.STRICT),
    ("a selector that does not match the workload does not apply",
     MESH_STRICT + pa("other", "default", "selector: {matchLabels: {app: other}}\nmtls: {mode: DISABLE}"),
     8080, MtlsMode.STRICT),
    ("selector policies in the root namespace do not apply to other namespaces",
     pa("sel", "istio-system", "selector: {matchLabels: {app: app}}\nmtls: {mode: STRICT}"), 8080, MtlsMode.PERMISSIVE),
    ("among several workload-specific policies the oldest wins",
     pa("new", "default", "selector: {matchLabels: {app: app}}\nmtls: {mode: DISABLE}", "2024-02-01T00:00:00Z")
     + pa("old", "default", "selector: {matchLabels: {app: app}}\nmtls: {mode: STRICT}", "2024-01-01T00:00:00Z"),
     8080, MtlsMode.STRICT),
    ("without timestamps the first one in file order is the oldest",
     pa("a", "default", "selector: {matchLabels: {app: app}}\nmtls: {mode: DISABLE}")
     + pa("b", "default", "selector: {matchLabels: {app: app}}\nmtls: {mode: STRICT}"), 8080, MtlsMode.DISABLE),
]


@pytest.mark.parametrize("docs,port,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_peer_authentication_mode(docs: str, port: int, expected: MtlsMode) -> None:
    assert mode(docs, port) is expected


def test_strict_refuses_plaintext_before_authorization() -> None:
    d = decide(MESH_STRICT + ap("allow-all", "rules: [{}]"), request(principal=None))
    assert not d.allowed and d.reason.value == "mtls_strict_plaintext" and d.policy.name == "default"


def test_permissive_accepts_plaintext() -> None:
    assert decide(NS_PERMISSIVE + ap("allow-all", "rules: [{}]"), request(principal=None)).allowed


def test_strict_accepts_mtls_peer() -> None:
    assert decide(MESH_STRICT, request()).allowed


def test_disable_means_no_peer_identity() -> None:
    """DISABLE: connection is not tunneled, so principal-based rules cannot match."""
    d = decide(WL_DISABLE + ap("p", 'rules: [{from: [{source: {principals: ["*"]}}]}]'), request())
    assert not d.allowed
