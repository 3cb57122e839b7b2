"""Istio validation rules (ValidateAuthorizationPolicy & co.): what Istio rejects, we reject with file:line:col."""

from __future__ import annotations

import pytest

from secmesh.errors import PolicyError
from secmesh.policy.load import loads_policies
from tests.conformance.helpers import ap

BAD = [
    ("DENY action without `rules` is meaningless", ap("p", "action: DENY"), "DENY action without `rules`"),
    ("CUSTOM action without `rules` is meaningless", ap("p", "action: CUSTOM\nprovider: {name: x}"), "CUSTOM action"),
    ("`provider` must not be with non CUSTOM action", ap("p", "provider: {name: x}\nrules: [{}]"), "`provider`"),
    ("`from` must not be empty", ap("p", "rules: [{from: []}]"), "`from` must not be empty"),
    ("`to` must not be empty", ap("p", "rules: [{to: []}]"), "`to` must not be empty"),
    ("`from.source` must not be nil", ap("p", "rules: [{from: [{}]}]"), "`from.source` must not be nil"),
    ("`from.source` must not be empty", ap("p", "rules: [{from: [{source: {}}]}]"), "must not be empty"),
    ("`to.operation` must not be empty", ap("p", "rules: [{to: [{operation: {}}]}]"), "must not be empty"),
    ("cannot set serviceAccounts with namespaces or principals",
     ap("p", 'rules: [{from: [{source: {serviceAccounts: ["a"], namespaces: ["b"]}}]}]'), "serviceAccounts"),
    ("serviceAccounts: wildcard not allowed", ap("p", 'rules: [{from: [{source: {serviceAccounts: ["a*"]}}]}]'),
     "wildcard"),
    ("empty value not allowed", ap("p", 'rules: [{from: [{source: {principals: [""]}}]}]'), "empty value"),
    ("bad CIDR range", ap("p", 'rules: [{from: [{source: {ipBlocks: ["10.0.0.0/40"]}}]}]'), "bad CIDR"),
    ("bad port", ap("p", 'rules: [{to: [{operation: {ports: ["70000"]}}]}]'), "bad port"),
    ("{**} is not the last operator", ap("p", 'rules: [{to: [{operation: {paths: ["/{**}/{*}"]}}]}]'),
     "not the last operator"),
    ("'{' or '}' beyond a supported path template", ap("p", 'rules: [{to: [{operation: {paths: ["/{id}"]}}]}]'),
     "beyond a supported path template"),
    ("`key` must not be empty", ap("p", 'rules: [{when: [{key: "", values: ["a"]}]}]'), "`key` must not be empty"),
    ("at least one of `values` or `notValues` must be set", ap("p", "rules: [{when: [{key: source.ip}]}]"),
     "at least one of"),
    ("unknown attribute", ap("p", 'rules: [{when: [{key: source.name, values: ["a"]}]}]'), "unknown attribute"),
    ("destination.labels is replaced by the workload selector",
     ap("p", 'rules: [{when: [{key: "destination.labels[app]", values: ["a"]}]}]'), "workload selector"),
    ("bad key: should have format a[b]", ap("p", 'rules: [{when: [{key: "request.headers", values: ["a"]}]}]'),
     "should have format"),
    ("only one of targetRefs or workloadSelector can be set",
     ap("p", "selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Service, name: s}]"), "only one of"),
    ("wildcard is not supported in selector", ap("p", "selector: {matchLabels: {app: '*'}}"), "wildcard"),
    ("unknown field (with a did-you-mean)", ap("p", 'rules: [{to: [{operation: {path: ["/"]}}]}]'),
     "did you mean 'paths'"),
    ("snake_case field names are not the CRD's", ap("p", 'rules: [{from: [{source: {not_principals: ["a"]}}]}]'),
     "camelCase"),
    ("wrong type: a list where a string is expected", ap("p", "action: [ALLOW]"), "must be a string"),
    ("wrong type: ports are strings", ap("p", "rules: [{to: [{operation: {ports: [8080]}}]}]"), "quote it"),
    ("enum values", ap("p", "action: allow"), "upper case"),
    ("non-standard YAML tag", ap("p", "action: !foo ALLOW"), "non-standard YAML tag"),
    ("duplicate keys", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
                       "spec:\n  action: ALLOW\n  action: DENY\n", "duplicate key"),
    ("unsupported apiVersion", "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\n"
                               "metadata: {name: p}\n", "unsupported version"),
    ("PeerAuthentication: mesh/namespace policy cannot have port level mTLS",
     "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
     "spec:\n  portLevelMtls: {80: {mode: STRICT}}\n", "cannot have port level"),
    ("PeerAuthentication: port must be in range 1..65535",
     "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
     "spec:\n  selector: {matchLabels: {a: b}}\n  portLevelMtls: {0: {mode: STRICT}}\n", "1..65535"),
    ("RequestAuthentication: issuer or jwksUri must be non-empty",
     "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p}\n"
     "spec:\n  jwtRules: [{audiences: [a]}]\n", "issuer or jwksUri"),
    ("RequestAuthentication: jwksUri scheme must be http or https",
     "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p}\n"
     "spec:\n  jwtRules: [{issuer: i, jwksUri: 'file:///k.json'}]\n", "not supported"),
    ("RequestAuthentication: location header name must be non-empty",
     "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p}\n"
     "spec:\n  jwtRules: [{issuer: i, fromHeaders: [{prefix: 'Bearer '}]}]\n", "header name"),
]


@pytest.mark.parametrize("docs,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_rejected_with_location(docs: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        loads_policies(docs, "bad.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.yaml:")


def test_other_kinds_in_the_stream_are_skipped() -> None:
    ps = loads_policies("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n---\n"
                        + ap("p", "rules: [{}]") + "---\n# only a comment\n", "mixed.yaml")
    assert len(ps.authorization) == 1 and ps.skipped[0][0] == "Deployment"


def test_valid_examples_load() -> None:
    from secmesh.policy.load import load_policies
    ps = load_policies("policies/examples")
    assert len(ps.authorization) >= 5 and ps.peer_authentication
