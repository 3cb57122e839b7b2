"""Engine: partial evaluation (L4 then L7), the index, and decisions that say why."""

from __future__ import annotations

from secmesh.policy.attrs import ConnAttrs, RequestAttrs
from secmesh.policy.decision import Outcome
from secmesh.policy.engine import Engine
from secmesh.policy.load import loads_policies
from secmesh.policy.model import Workload

WL = Workload("default", {"app": "api"})
P = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: default}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/web"]}}]
    to: [{operation: {paths: ["/api/*"], methods: [GET]}}]
  - from: [{source: {principals: ["cluster.local/ns/a/sa/batch"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["evil"]}}]
  - to: [{operation: {paths: ["/admin*"]}}]
"""
WEB = "spiffe://cluster.local/ns/a/sa/web"


def engine() -> Engine:
    return Engine(loads_policies(P), WL)


def test_l4_deny_before_any_request() -> None:
    cd = engine().decide_connection(ConnAttrs("spiffe://cluster.local/ns/evil/sa/x", "10.0.0.1", dest_port=80))
    assert cd.outcome is Outcome.DENY and cd.decision.policy.name == "deny"


def test_l4_deny_when_no_allow_rule_can_match() -> None:
    cd = engine().decide_connection(ConnAttrs("spiffe://cluster.local/ns/b/sa/other", "10.0.0.1", dest_port=80))
    assert cd.outcome is Outcome.DENY and cd.decision.reason.value == "no_allow_match"


def test_needs_request_then_decided_per_request() -> None:
    e = engine()
    cd = e.decide_connection(ConnAttrs(WEB, "10.0.0.1", dest_port=80))
    assert cd.outcome is Outcome.NEEDS_REQUEST
    ok = e.decide_request(cd.residual, RequestAttrs("GET", "/api/x"))
    assert ok.allowed and (ok.policy.name, ok.policy.rule) == ("allow", 0)
    assert not e.decide_request(cd.residual, RequestAttrs("POST", "/api/x")).allowed
    denied = e.decide_request(cd.residual, RequestAttrs("GET", "/admin/x"))
    assert not denied.allowed and denied.policy.name == "deny" and denied.policy.rule == 1


def test_tcp_is_decided_at_connection_time() -> None:
    e = engine()
    assert e.decide_connection(ConnAttrs(WEB, "10.0.0.1", dest_port=80), "tcp").outcome is Outcome.DENY
    # the DENY rule on /admin* loses its HTTP field on TCP and denies everything
    assert e.decide_connection(ConnAttrs("spiffe://cluster.local/ns/a/sa/batch", dest_port=80), "tcp").outcome \
        is Outcome.DENY


def test_index_is_used_instead_of_scanning() -> None:
    e = engine()
    assert "principal" in e.http.l4_index.kinds() and "ns" in e.http.l4_index.kinds()
    assert e.http.l4_scan == frozenset()
    assert e.http.l4_index.lookup(ConnAttrs("spiffe://cluster.local/ns/z/sa/z")) == set()


def test_decisions_are_shared_objects() -> None:
    e = engine()
    a = e.decide_connection(ConnAttrs("spiffe://cluster.local/ns/evil/sa/x")).decision
    b = e.decide_connection(ConnAttrs("spiffe://cluster.local/ns/evil/sa/y")).decision
    assert a is b and a.to_dict()["reason"]["id"] == "ns[default]-policy[deny]-rule[0]"


def test_many_rules_compile_and_decide() -> None:
    docs = []
    for i in range(300):
        docs.append(f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}}}\n"
                    f"spec:\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/n{i}/sa/s]}}}}]\n"
                    f"    to: [{{operation: {{paths: [/p{i}]}}}}]\n---\n")
    e = Engine(loads_policies("".join(docs)), Workload("default", {}))
    cd = e.decide_connection(ConnAttrs("spiffe://cluster.local/ns/n7/sa/s"))
    assert len(cd.residual.pending) == 1
    assert e.decide_request(cd.residual, RequestAttrs("GET", "/p7")).policy.name == "p7"
    assert not e.decide_request(cd.residual, RequestAttrs("GET", "/p8")).allowed


def test_of_decoded_matches_the_general_constructor() -> None:
    """The proxy's shortcut (names already lower-cased, repeats joined) builds the same attributes."""
    headers = {"x-team": "a,b", "user-agent": "curl"}
    claims = {"iss": "i", "scope": "read write"}
    fast = RequestAttrs.of_decoded("GET", "/p", "Example.COM", dict(headers), claims)
    slow = RequestAttrs("GET", "/p", "Example.COM", {"X-Team": ["a", "b"], "User-Agent": "curl"}, claims)
    assert (fast.method, fast.path, fast.host, fast.headers, fast.claims) == \
        (slow.method, slow.path, slow.host, slow.headers, slow.claims)
    assert RequestAttrs.of_decoded("GET", "/", None, {"host": "H"}).host == "h"
