"""Semantic diff on hand-made before/after pairs whose answer is known."""

from __future__ import annotations

import textwrap

import pytest

from secmesh.policy.diff import diff, verify
from secmesh.policy.inventory import Inventory, KnownWorkload, TcpPort
from secmesh.policy.load import loads_policies

STRICT = ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, "
          "namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n")


def ap(spec: str, name: str = "api", ns: str = "shop") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n{body}\n---\n")


def run(old: str, new: str, **kw):
    o, n = loads_policies(STRICT + old, "old.yaml"), loads_policies(STRICT + new, "new.yaml")
    result = diff(o, n, **kw)
    assert verify(result, o, n, "istio-system") == []  # every listed request really changes decision
    return result


ALLOW_WEB = """
selector: {matchLabels: {app: api}}
rules:
- from: [{source: {namespaces: ["web"]}}]
  to: [{operation: {methods: ["GET"], paths: ["/items/*"]}}]
"""


def test_added_namespace_widens_exactly_that() -> None:
    r = run(ap(ALLOW_WEB), ap(ALLOW_WEB.replace('["web"]', '["web", "batch"]')))
    assert r.widened and not r.narrowed
    (c,) = r.changes
    assert (c.old, c.new) == ("DENY", "ALLOW")
    assert c.sources == "namespace batch" and c.operations == "method GET, path /items/*"
    assert c.request["source"]["principal"].startswith("spiffe://cluster.local/ns/batch/")
    assert c.request["request"]["method"] == "GET" and c.request["request"]["path"].startswith("/items/")
    assert c.to_dict()["workload"] == {"namespace": "shop", "labels": {"app": "api"}}


def test_removed_method_narrows() -> None:
    two = ALLOW_WEB.replace('["GET"]', '["GET", "DELETE"]')
    r = run(ap(two), ap(ALLOW_WEB))
    assert r.narrowed and not r.widened
    (c,) = r.changes
    assert c.operations == "method DELETE, path /items/*" and c.request["request"]["method"] == "DELETE"


def test_reformatting_is_no_change() -> None:
    flow = ('selector:\n  matchLabels:\n    app: api\nrules:\n- to:\n  - operation:\n      paths: ["/items/*"]\n'
            '      methods: ["GET"]\n  from:\n  - source:\n      namespaces: ["web"]\n')
    r = run(ap(ALLOW_WEB), "# moved\n" + ap(flow))
    assert r.changes == [] and not r.widened and not r.narrowed


def test_narrower_deny_ip_range_widens_the_gap() -> None:
    deny = 'action: DENY\nrules:\n- from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]\n'
    r = run(ap(deny), ap(deny.replace("10.0.0.0/8", "10.0.0.0/16")))
    assert r.widened and not r.narrowed
    assert {c.sources for c in r.changes} == {"any mTLS peer, source IP in 10.0.0.0/8"}
    ips = {c.request["source"]["ip"] for c in r.changes}
    assert all(ip.startswith("10.") and not ip.startswith("10.0.") for ip in ips)


def test_mtls_strict_to_permissive_lets_plaintext_in() -> None:
    o = loads_policies(STRICT + ap(ALLOW_WEB), "old.yaml")
    n = loads_policies(STRICT.replace("STRICT", "PERMISSIVE") + ap(ALLOW_WEB), "new.yaml")
    r = diff(o, n)
    assert verify(r, o, n, "istio-system") == []
    assert r.widened
    assert all(c.sources.startswith("plaintext") and "principal" not in c.request["source"] for c in r.changes)
    assert {c.workload.namespace for c in r.changes} >= {"shop", "other"}  # mesh-wide: other namespaces too


def test_first_allow_policy_narrows_everything_else() -> None:
    r = run("", ap(ALLOW_WEB))
    assert r.narrowed and not r.widened
    assert sorted((c.sources, c.operations) for c in r.changes) == [
        ("namespace web", "methods other than GET, path /items/*"),
        ("namespace web", "paths other than /items/*"),
        ("other mTLS peers", "any request")]
    assert all(c.workload.labels == {"app": "api"} for c in r.changes)


def test_deny_rule_on_paths() -> None:
    base = ap(ALLOW_WEB.replace('paths: ["/items/*"]', 'paths: ["/items/*", "/admin/*"]'))
    deny = ap("selector: {matchLabels: {app: api}}\naction: DENY\nrules:\n- to: [{operation: {paths: ['/admin/*']}}]",
              name="no-admin")
    r = run(base, base + deny)
    (c,) = r.changes
    assert (c.old, c.new) == ("ALLOW", "DENY") and c.operations == "method GET, path /admin/*"


def test_tcp_semantics_on_declared_tcp_ports() -> None:
    db = 'selector: {matchLabels: {app: db}}\nrules:\n- from: [{source: {principals: ["cluster.local/ns/shop/sa/a"]}}]\n'
    inv = Inventory()
    w = KnownWorkload("shop", {"app": "db"}, "Service shop/db", partial=True)
    inv.workloads.append(w)
    inv.tcp_ports.append(TcpPort(w, 5432, "Service shop/db port tcp-db"))
    # an HTTP-only rule changes nothing on the TCP port (Istio skips it there) ...
    r = run(ap(db, name="db"), ap(db + "- to: [{operation: {methods: ['GET']}}]\n", name="db"), inventory=inv)
    assert r.changes and all(c.protocol == "http" for c in r.changes)
    # ... while a new principal is a TCP change
    r = run(ap(db, name="db"), ap(db.replace('sa/a"]', 'sa/a", "cluster.local/ns/shop/sa/b"]'), name="db"),
            inventory=inv)
    tcp = [c for c in r.changes if c.protocol == "tcp"]
    assert tcp and tcp[0].request["destination"]["port"] == 5432 and "request" not in tcp[0].request
    assert tcp[0].sources == "principal cluster.local/ns/shop/sa/b"


@pytest.mark.parametrize("old,new", [
    (ap("rules:\n- when: [{key: 'request.headers[x-team]', values: [blue]}]"),
     ap("rules:\n- when: [{key: 'request.headers[x-team]', values: [blue, green]}]")),
    (ap("rules:\n- from: [{source: {requestPrincipals: ['https://idp/*']}}]"),
     ap("rules:\n- from: [{source: {requestPrincipals: ['https://idp/*']}}]\n  when: "
        "[{key: 'request.auth.claims[groups]', values: [admins]}]")),
    (ap("rules:\n- to: [{operation: {hosts: ['api.example.com'], ports: ['8443']}}]"),
     ap("rules:\n- to: [{operation: {hosts: ['*.example.com'], ports: ['8443']}}]")),
])
def test_every_listed_request_changes_decision(old: str, new: str) -> None:
    r = run(old, new)
    assert r.changes
