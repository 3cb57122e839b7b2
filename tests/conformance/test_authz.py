"""AuthorizationPolicy conformance: one case per documented rule, each citing the Istio text it checks.

Quotes are from istio.io "Authorization Policy" reference (security/v1 AuthorizationPolicy),
the "Authorization policy conditions" page, and the security concepts page; semantics as
summarized in shared/notes/reference.md §4.1.
"""

from __future__ import annotations

import pytest

from tests.conformance.helpers import CLIENT, ap, decide, request

ALLOW_WEB = ap("allow-web", """
    action: ALLOW
    rules:
    - from:
      - source:
          principals: ["cluster.local/ns/frontend/sa/web"]
""")
DENY_ADMIN = ap("deny-admin", """
    action: DENY
    rules:
    - to:
      - operation:
          paths: ["/admin*"]
""")

# (id = the documented sentence, policies, request overrides, expected decision)
CASES = [
    ("If there are no ALLOW policies for the workload, allow the request",
     DENY_ADMIN, {}, "ALLOW"),
    ("If there are any DENY policies that match the request, deny the request",
     DENY_ADMIN + ALLOW_WEB, {"path": "/admin/x"}, "DENY"),
    ("If any of the ALLOW policies match the request, allow the request",
     ALLOW_WEB, {}, "ALLOW"),
    ("Deny the request [when ALLOW policies exist and none matches]",
     ALLOW_WEB, {"principal": "spiffe://cluster.local/ns/other/sa/x"}, "DENY"),
    ("The deny policies are evaluated before the allow policies",
     DENY_ADMIN + ap("allow-all", "rules: [{}]"), {"path": "/admin"}, "DENY"),
    ("An empty rule is always matched [rules: [{}] allows all]",
     ap("allow-all", "rules: [{}]"), {"principal": None}, "ALLOW"),
    ("allow-nothing: spec {} is an ALLOW policy that matches nothing",
     ap("allow-nothing", ""), {}, "DENY"),
    ("deny-all: a DENY policy with an empty rule denies every request",
     ap("deny-all", "action: DENY\nrules: [{}]"), {}, "DENY"),
    ("A match occurs when at least one source, one operation and all conditions matches [all when must hold]",
     ap("p", """
        rules:
        - from: [{source: {namespaces: ["frontend"]}}]
          to: [{operation: {methods: ["GET"]}}]
          when:
          - {key: "request.headers[x-a]", values: ["1"]}
          - {key: "request.headers[x-b]", values: ["2"]}
     """), {"headers": {"x-a": "1"}}, "DENY"),
    ("Multiple values in a field are ORed [paths list]",
     ap("p", 'rules: [{to: [{operation: {paths: ["/a", "/b"]}}]}]'), {"path": "/b"}, "ALLOW"),
    ("Fields inside a source are ANDed [principal matches, ipBlocks does not]",
     ap("p", 'rules: [{from: [{source: {principals: ["cluster.local/ns/frontend/sa/web"], '
             'ipBlocks: ["192.168.0.0/16"]}}]}]'), {}, "DENY"),
    # --- string matching -----------------------------------------------------------------
    ("Prefix match: an exact string with a trailing * [principals]",
     ap("p", 'rules: [{from: [{source: {principals: ["cluster.local/ns/frontend/*"]}}]}]'), {}, "ALLOW"),
    ("Suffix match: an exact string with a leading * [principals]",
     ap("p", 'rules: [{from: [{source: {principals: ["*/sa/web"]}}]}]'), {}, "ALLOW"),
    ("Presence match: * matches any value but not empty [principals requires an identity]",
     ap("p", 'rules: [{from: [{source: {principals: ["*"]}}]}]'), {"principal": None}, "DENY"),
    ("notPrincipals: a negative match, satisfied by a plaintext peer",
     ap("p", 'rules: [{from: [{source: {notPrincipals: ["cluster.local/ns/frontend/sa/web"]}}]}]'),
     {"principal": None}, "ALLOW"),
    ("namespaces: the source namespace, derived from the peer identity",
     ap("p", 'rules: [{from: [{source: {namespaces: ["frontend"]}}]}]'), {}, "ALLOW"),
    ("notNamespaces: any namespace except the listed ones",
     ap("p", 'rules: [{from: [{source: {notNamespaces: ["frontend"]}}]}]'), {}, "DENY"),
    ("serviceAccounts: <namespace>/<serviceaccount>",
     ap("p", 'rules: [{from: [{source: {serviceAccounts: ["frontend/web"]}}]}]'), {}, "ALLOW"),
    ("serviceAccounts: a bare name means the policy's namespace",
     ap("p", 'rules: [{from: [{source: {serviceAccounts: ["web"]}}]}]', ns="frontend"),
     {"ns": "frontend"}, "ALLOW"),
    ("serviceAccounts do not match a longer name (web-admin is not web)",
     ap("p", 'rules: [{from: [{source: {serviceAccounts: ["frontend/web"]}}]}]'),
     {"principal": "spiffe://cluster.local/ns/frontend/sa/web-admin"}, "DENY"),
    ("ipBlocks: source IP in CIDR or single IP",
     ap("p", 'rules: [{from: [{source: {ipBlocks: ["10.0.0.0/24", "1.2.3.4"]}}]}]'), {}, "ALLOW"),
    ("notIpBlocks: the source IP must not be in the blocks",
     ap("p", 'rules: [{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}]'), {}, "DENY"),
    ("remoteIpBlocks: the original client IP (X-Forwarded-For / PROXY), not the peer IP",
     ap("p", 'rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]'),
     {"remote_ip": "203.0.113.9"}, "ALLOW"),
    ("ipBlocks: IPv6 CIDR",
     ap("p", 'rules: [{from: [{source: {ipBlocks: ["2001:db8::/32"]}}]}]'), {"ip": "2001:db8::1"}, "ALLOW"),
    ("hosts: matched case-insensitively",
     ap("p", 'rules: [{to: [{operation: {hosts: ["App.Default.SVC"]}}]}]'), {}, "ALLOW"),
    ("hosts: no port stripping ('example.com' does not match 'example.com:80')",
     ap("p", 'rules: [{to: [{operation: {hosts: ["app.default.svc"]}}]}]'), {"host": "app.default.svc:8080"}, "DENY"),
    ("ports: the destination port",
     ap("p", 'rules: [{to: [{operation: {ports: ["8080"]}}]}]'), {}, "ALLOW"),
    ("notPorts",
     ap("p", 'rules: [{to: [{operation: {notPorts: ["8080"]}}]}]'), {}, "DENY"),
    ("methods: exact, case-sensitive",
     ap("p", 'rules: [{to: [{operation: {methods: ["get"]}}]}]'), {}, "DENY"),
    ("notMethods",
     ap("p", 'rules: [{to: [{operation: {notMethods: ["DELETE"]}}]}]'), {"method": "POST"}, "ALLOW"),
    ("paths: exact match of the normalized path",
     ap("p", 'rules: [{to: [{operation: {paths: ["/public"]}}]}]'), {"path": "/public?x=1#f"}, "ALLOW"),
    ("paths: normalization resolves '..' before matching",
     DENY_ADMIN, {"path": "/public/../admin"}, "DENY"),
    ("paths: normalization decodes unreserved percent-encodings (%61 is 'a')",
     DENY_ADMIN, {"path": "/%61dmin"}, "DENY"),
    ("paths: backslashes are normalized to slashes",
     ap("p", 'action: DENY\nrules: [{to: [{operation: {paths: ["/a/admin"]}}]}]'), {"path": "/a\\admin"}, "DENY"),
    ("paths: BASE normalization does not merge slashes",
     ap("p", 'rules: [{to: [{operation: {paths: ["/a/b"]}}]}]'), {"path": "/a//b"}, "DENY"),
    ("paths: suffix match",
     ap("p", 'rules: [{to: [{operation: {paths: ["*.png"]}}]}]'), {"path": "/img/x.png"}, "ALLOW"),
    ("paths: {*} matches a single path segment",
     ap("p", 'rules: [{to: [{operation: {paths: ["/users/{*}/profile"]}}]}]'), {"path": "/users/42/profile"}, "ALLOW"),
    ("paths: {*} does not match across segments",
     ap("p", 'rules: [{to: [{operation: {paths: ["/users/{*}/profile"]}}]}]'), {"path": "/users/4/2/profile"},
     "DENY"),
    ("paths: {**} matches zero or more segments at the end",
     ap("p", 'rules: [{to: [{operation: {paths: ["/static/{**}"]}}]}]'), {"path": "/static/css/a.css"}, "ALLOW"),
    ("notPaths",
     ap("p", 'rules: [{to: [{operation: {notPaths: ["/private*"]}}]}]'), {"path": "/private/x"}, "DENY"),
    # --- request principals / JWT claims ---------------------------------------------------
    ("requestPrincipals: <ISS>/<SUB> of the validated JWT",
     ap("p", 'rules: [{from: [{source: {requestPrincipals: ["https://idp.example/alice"]}}]}]'),
     {"claims": {"iss": "https://idp.example", "sub": "alice"}}, "ALLOW"),
    ("requestPrincipals: * requires a request principal (no token → no match)",
     ap("p", 'rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]'), {}, "DENY"),
    ("requestPrincipals: * does not match an empty sub (istio/istio#22540)",
     ap("p", 'rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]'),
     {"claims": {"iss": "https://idp.example", "sub": ""}}, "DENY"),
    ("requestPrincipals: issuer prefix with any subject",
     ap("p", 'rules: [{from: [{source: {requestPrincipals: ["https://idp.example/*"]}}]}]'),
     {"claims": {"iss": "https://idp.example", "sub": "bob"}}, "ALLOW"),
    ("request.auth.claims: string claim",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[role]", values: ["admin"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "role": "admin"}}, "ALLOW"),
    ("request.auth.claims: a list claim matches if any element matches",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[groups]", values: ["dev"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "groups": ["ops", "dev"]}}, "ALLOW"),
    ("request.auth.claims: nested claims with [a][b]",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[realm][role]", values: ["admin"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "realm": {"role": "admin"}}}, "ALLOW"),
    ("request.auth.claims: scope is a space-delimited list",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[scope]", values: ["write"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "scope": "read write"}}, "ALLOW"),
    ("request.auth.audiences",
     ap("p", 'rules: [{when: [{key: request.auth.audiences, values: ["api"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "aud": ["web", "api"]}}, "ALLOW"),
    ("request.auth.presenter (azp)",
     ap("p", 'rules: [{when: [{key: request.auth.presenter, values: ["cli"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "azp": "cli"}}, "ALLOW"),
    ("request.auth.principal",
     ap("p", 'rules: [{when: [{key: request.auth.principal, values: ["i/s"]}]}]'),
     {"claims": {"iss": "i", "sub": "s"}}, "ALLOW"),
    # --- other when keys ---------------------------------------------------------------
    ("request.headers: header names are case-insensitive",
     ap("p", 'rules: [{when: [{key: "request.headers[X-Env]", values: ["prod"]}]}]'),
     {"headers": {"x-env": "prod"}}, "ALLOW"),
    ("request.headers: * is presence (an empty value is present)",
     ap("p", 'rules: [{when: [{key: "request.headers[x-env]", values: ["*"]}]}]'),
     {"headers": {"x-env": ""}}, "ALLOW"),
    ("request.headers: repeated headers are matched as the comma-joined value",
     ap("p", 'rules: [{when: [{key: "request.headers[x-env]", values: ["a,b"]}]}]'),
     {"headers": {"x-env": ["a", "b"]}}, "ALLOW"),
    ("request.headers notValues: a missing header satisfies notValues",
     ap("p", 'rules: [{when: [{key: "request.headers[x-env]", notValues: ["prod"]}]}]'), {}, "ALLOW"),
    ("source.ip", ap("p", 'rules: [{when: [{key: source.ip, values: ["10.0.0.0/16"]}]}]'), {}, "ALLOW"),
    ("remote.ip", ap("p", 'rules: [{when: [{key: remote.ip, values: ["10.0.0.1"]}]}]'), {}, "ALLOW"),
    ("source.namespace", ap("p", 'rules: [{when: [{key: source.namespace, values: ["front*"]}]}]'), {}, "ALLOW"),
    ("source.principal", ap("p", 'rules: [{when: [{key: source.principal, values: ["cluster.local/ns/frontend/sa/web"]}]}]'),
     {}, "ALLOW"),
    ("source.serviceAccount", ap("p", 'rules: [{when: [{key: source.serviceAccount, values: ["frontend/web"]}]}]'),
     {}, "ALLOW"),
    ("destination.ip", ap("p", 'rules: [{when: [{key: destination.ip, values: ["10.0.0.2"]}]}]'), {}, "ALLOW"),
    ("destination.port", ap("p", 'rules: [{when: [{key: destination.port, values: ["9090"]}]}]'), {}, "DENY"),
    ("connection.sni", ap("p", 'rules: [{when: [{key: connection.sni, values: ["*.example.com"]}]}]'),
     {"sni": "api.example.com"}, "ALLOW"),
    # --- TCP ------------------------------------------------------------------------------
    ("TCP: an ALLOW rule with HTTP-only fields is skipped (a smaller allow): TCP traffic is denied",
     ap("p", 'rules: [{to: [{operation: {methods: ["GET"]}}]}]'), {"protocol": "tcp"}, "DENY"),
    ("TCP: ALLOW rules with only TCP fields still apply",
     ap("p", 'rules: [{from: [{source: {namespaces: ["frontend"]}}], to: [{operation: {ports: ["8080"]}}]}]'),
     {"protocol": "tcp"}, "ALLOW"),
    ("TCP: a DENY rule with only HTTP attributes will deny all traffic to TCP ports",
     ap("p", 'action: DENY\nrules: [{to: [{operation: {methods: ["POST"]}}]}]'), {"protocol": "tcp"}, "DENY"),
    ("TCP: a DENY rule drops its HTTP fields but keeps the TCP ones (a wider deny)",
     ap("p", 'action: DENY\nrules: [{to: [{operation: {methods: ["POST"], ports: ["9999"]}}]}]'),
     {"protocol": "tcp"}, "ALLOW"),
    # --- scope -------------------------------------------------------------------------------
    ("A policy in the root namespace applies to all workloads in the mesh",
     ap("root-deny", "action: DENY\nrules: [{}]", ns="istio-system"), {}, "DENY"),
    ("The selector limits a policy to the workloads whose labels match",
     ap("p", "selector: {matchLabels: {app: other}}\naction: DENY\nrules: [{}]"), {}, "ALLOW"),
    ("A policy in another namespace does not apply",
     ap("p", "action: DENY\nrules: [{}]", ns="elsewhere"), {}, "ALLOW"),
    ("targetRefs policies attach to gateways/services, not to a sidecar workload",
     ap("p", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\naction: DENY\nrules: [{}]"),
     {}, "ALLOW"),
    ("security.istio.io/v1beta1 is accepted with the same semantics",
     ap("p", "action: DENY\nrules: [{}]", api="v1beta1"), {}, "DENY"),
]

# Fields and keys not covered above; each id quotes (or closely paraphrases) the istio.io
# AuthorizationPolicy reference or the "Authorization Policy Conditions" page.
CASES += [
    ("ipBlocks: populated from the source address of the IP packet [not from X-Forwarded-For]",
     ap("p", 'rules: [{from: [{source: {ipBlocks: ["203.0.113.0/24"]}}]}]'),
     {"ip": "10.0.0.1", "remote_ip": "203.0.113.9"}, "DENY"),
    ("remoteIpBlocks: populated from X-Forwarded-For header or proxy protocol [the peer IP is not used]",
     ap("p", 'rules: [{from: [{source: {remoteIpBlocks: ["10.0.0.0/8"]}}]}]'),
     {"ip": "10.0.0.1", "remote_ip": "198.51.100.7"}, "DENY"),
    ("notRemoteIpBlocks: a list of negative match of remote IP blocks",
     ap("p", 'action: DENY\nrules: [{from: [{source: {notRemoteIpBlocks: ["198.51.100.0/24"]}}]}]'),
     {"remote_ip": "198.51.100.7"}, "ALLOW"),
    ("remoteIpBlocks: without a forwarded address the remote IP is the peer IP",
     ap("p", 'rules: [{from: [{source: {remoteIpBlocks: ["10.0.0.1"]}}]}]'), {}, "ALLOW"),
    ("remote.ip: original client IP address as determined by X-Forwarded-For header or Proxy Protocol",
     ap("p", 'rules: [{when: [{key: remote.ip, values: ["198.51.100.0/24"]}]}]'),
     {"ip": "10.0.0.1", "remote_ip": "198.51.100.7"}, "ALLOW"),
    ("remote.ip notValues",
     ap("p", 'rules: [{when: [{key: remote.ip, notValues: ["198.51.100.0/24"]}]}]'),
     {"remote_ip": "198.51.100.7"}, "DENY"),
    ("notRequestPrincipals: a list of negative match of request identities",
     ap("p", 'rules: [{from: [{source: {notRequestPrincipals: ["https://idp.example/mallory"]}}]}]'),
     {"claims": {"iss": "https://idp.example", "sub": "mallory"}}, "DENY"),
    ("notRequestPrincipals: a request without a token is not one of the listed identities",
     ap("p", 'rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]'), {}, "ALLOW"),
    ("requestPrincipals: suffix match on <ISS>/<SUB> ('*/alice')",
     ap("p", 'rules: [{from: [{source: {requestPrincipals: ["*/alice"]}}]}]'),
     {"claims": {"iss": "https://any.example", "sub": "alice"}}, "ALLOW"),
    ("notHosts: a list of negative match of hosts",
     ap("p", 'rules: [{to: [{operation: {notHosts: ["*.internal"]}}]}]'), {"host": "db.internal"}, "DENY"),
    ("hosts: prefix match",
     ap("p", 'rules: [{to: [{operation: {hosts: ["app.*"]}}]}]'), {}, "ALLOW"),
    ("hosts: * matches any host",
     ap("p", 'rules: [{to: [{operation: {hosts: ["*"]}}]}]'), {}, "ALLOW"),
    ("notServiceAccounts: a list of negative match of service accounts",
     ap("p", 'rules: [{from: [{source: {notServiceAccounts: ["frontend/web"]}}]}]'), {}, "DENY"),
    ("trustDomains: the trust domain of the peer identity",
     ap("p", 'rules: [{from: [{source: {trustDomains: ["cluster.local"]}}]}]'), {}, "ALLOW"),
    ("notTrustDomains",
     ap("p", 'rules: [{from: [{source: {notTrustDomains: ["cluster.local"]}}]}]'), {}, "DENY"),
    ("request.experimental.inline.headers: header name is surrounded by brackets (same as request.headers)",
     ap("p", 'rules: [{when: [{key: "request.experimental.inline.headers[x-env]", values: ["prod"]}]}]'),
     {"headers": {"x-env": "prod"}}, "ALLOW"),
    ("source.namespace: requires mutual TLS enabled [a plaintext peer has no namespace]",
     ap("p", 'rules: [{when: [{key: source.namespace, values: ["frontend"]}]}]'), {"principal": None}, "DENY"),
    ("source.principal notValues: a plaintext peer is not the listed principal",
     ap("p", 'rules: [{when: [{key: source.principal, notValues: ["cluster.local/ns/frontend/sa/web"]}]}]'),
     {"principal": None}, "ALLOW"),
    ("request.auth.claims: nested claim can also be used [a missing intermediate claim does not match]",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[realm][role]", values: ["admin"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "realm": "admin"}}, "DENY"),
    ("request.auth.claims: three levels deep",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[a][b][c]", values: ["x*"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "a": {"b": {"c": "xyz"}}}}, "ALLOW"),
    ("request.auth.claims: only support claim of type string or list of string [a number never matches]",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[level]", values: ["3"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "level": 3}}, "DENY"),
    ("request.auth.claims notValues: a list claim with a listed element is excluded",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[groups]", notValues: ["banned"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "groups": ["dev", "banned"]}}, "DENY"),
    ("request.auth.claims: permission is a space-delimited list like scope",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[permission]", values: ["write"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "permission": "read write"}}, "ALLOW"),
    ("request.auth.claims: other string claims are not split on spaces",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[name]", values: ["Ada"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "name": "Ada Lovelace"}}, "DENY"),
    ("request.auth.claims: requires request authentication [no token, no claims]",
     ap("p", 'rules: [{when: [{key: "request.auth.claims[role]", values: ["*"]}]}]'), {}, "DENY"),
    ("request.auth.audiences: constructed from the JWT claim <aud> (a single string)",
     ap("p", 'rules: [{when: [{key: request.auth.audiences, values: ["api"]}]}]'),
     {"claims": {"iss": "i", "sub": "s", "aud": "api"}}, "ALLOW"),
    ("request.headers: values support prefix match ('Mozilla/*')",
     ap("p", 'rules: [{when: [{key: "request.headers[User-Agent]", values: ["Mozilla/*"]}]}]'),
     {"headers": {"user-agent": "Mozilla/5.0"}}, "ALLOW"),
    ("paths: * is a presence match for any path",
     ap("p", 'rules: [{to: [{operation: {paths: ["*"]}}]}]'), {"path": "/anything"}, "ALLOW"),
    ("paths: {**} matches the rest of the path, including nothing",
     ap("p", 'rules: [{to: [{operation: {paths: ["/static/{**}"]}}]}]'), {"path": "/static/"}, "ALLOW"),
    ("ports: notPorts on a TCP port still applies (ports are a TCP attribute)",
     ap("p", 'rules: [{to: [{operation: {notPorts: ["8080"]}}]}]'), {"protocol": "tcp"}, "DENY"),
    ("TCP: a DENY rule's HTTP-only when key is dropped, its TCP from-fields kept",
     ap("p", 'action: DENY\nrules: [{from: [{source: {namespaces: ["other"]}}], '
             'when: [{key: "request.headers[x]", values: ["1"]}]}]'), {"protocol": "tcp"}, "ALLOW"),
    ("targetRefs: a policy naming a Service attaches to its waypoint, not to the sidecar workload",
     ap("p", "targetRefs: [{kind: Service, group: '', name: app}]\naction: DENY\nrules: [{}]"), {}, "ALLOW"),
    ("targetRef (singular, deprecated) is treated like targetRefs",
     ap("p", "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\naction: DENY\nrules: [{}]"),
     {}, "ALLOW"),
]


@pytest.mark.parametrize("policies,overrides,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_authorization_policy(policies: str, overrides: dict, expected: str) -> None:
    assert decide(policies, request(**overrides)).action == expected


def test_root_namespace_is_configurable() -> None:
    policy = ap("mesh-deny", "action: DENY\nrules: [{}]", ns="mesh-root")
    assert decide(policy, request()).allowed
    assert not decide(policy, request(), root="mesh-root").allowed


def test_audit_never_affects_the_decision_but_is_reported() -> None:
    """AUDIT: 'does not affect whether requests are allowed or denied'."""
    d = decide(ap("audit", "action: AUDIT\nrules: [{to: [{operation: {methods: [GET]}}]}]"), request())
    assert d.allowed and d.audit and d.audit_policy is not None and d.audit_policy.name == "audit"


def test_dry_run_is_reported_as_shadow_and_not_enforced() -> None:
    """istio.io/dry-run: 'true' — the policy is evaluated and logged, not enforced."""
    d = decide(ap("dry", "action: DENY\nrules: [{}]", annotations='    istio.io/dry-run: "true"\n'), request())
    assert d.allowed
    assert [(s.action, s.result, s.policy.name) for s in d.dry_run] == [("DENY", "denied", "dry")]


def test_decision_names_policy_and_rule() -> None:
    d = decide(DENY_ADMIN + ALLOW_WEB, request(path="/admin"))
    assert (d.policy.namespace, d.policy.name, d.policy.rule) == ("default", "deny-admin", 0)
    assert d.policy.envoy_id == "ns[default]-policy[deny-admin]-rule[0]"
    assert str(d.policy.pos).startswith("policy.yaml:")


def test_effective_policy_is_the_first_in_envoy_name_order() -> None:
    two = ap("b-allow", "rules: [{}]") + ap("a-allow", "rules: [{}]")
    assert decide(two, request()).policy.name == "a-allow"


def test_custom_action_is_unsupported() -> None:
    from secmesh.policy.compile import UnsupportedPolicy
    with pytest.raises(UnsupportedPolicy):
        decide(ap("ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"), request())


def test_client_constant_is_what_requests_carry() -> None:
    assert request()["source"]["principal"] == CLIENT
