"""PolicyAuthorizer (the engine behind ConnectionAuthorizer) and PolicySource reloads, without sockets."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from secmesh.errors import ConfigError, PolicyError
from secmesh.identity.spiffe import SpiffeId
from secmesh.sidecar.authz_l4 import ConnectionInfo
from secmesh.sidecar.authz_policy import PolicyAuthorizer, policy_label
from secmesh.sidecar.config import MtlsMode, load
from secmesh.sidecar.policy_source import PolicySource

POLICIES = textwrap.dedent("""\
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: default, namespace: istio-system}
    spec: {mtls: {mode: STRICT}}
    ---
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: web, namespace: prod}
    spec:
      selector: {matchLabels: {app: web}}
      portLevelMtls: {8081: {mode: DISABLE}, 8082: {mode: PERMISSIVE}}
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-front, namespace: prod}
    spec:
      selector: {matchLabels: {app: web}}
      rules:
      - from: [{source: {namespaces: ["front"]}}]
      - to: [{operation: {methods: ["GET"], ports: ["8080"]}}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-bad, namespace: prod}
    spec:
      action: DENY
      rules:
      - from: [{source: {principals: ["td/ns/front/sa/bad"]}}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: shadow, namespace: prod, annotations: {"istio.io/dry-run": "true"}}
    spec:
      action: DENY
      rules:
      - from: [{source: {principals: ["td/ns/front/sa/a"]}}]
    """)


def _config(tmp_path: Path, policies: Path, extra: str = "") -> Path:
    p = tmp_path / "sidecar.yaml"
    p.write_text(textwrap.dedent(f"""\
        trust_domain: td
        policies: {policies}
        workload: {{namespace: prod, labels: {{app: web}}}}
        listeners:
          - {{name: in, address: "127.0.0.1:15006", upstream: "127.0.0.1:8080", protocol: http}}
        """) + extra)
    return p


@pytest.fixture
def source(tmp_path):
    pfile = tmp_path / "p.yaml"
    pfile.write_text(POLICIES)
    cfg = load(_config(tmp_path, pfile))
    return PolicySource(cfg, PolicySource.load(cfg)), pfile


def info(principal: str | None, port: int = 15006) -> ConnectionInfo:
    return ConnectionInfo(SpiffeId.parse(principal) if principal else None, "10.0.0.1", 4444, "10.0.0.2", port)


@pytest.mark.parametrize("protocol, port, principal, allowed, code, policy", [
    ("tcp", 8080, "spiffe://td/ns/front/sa/a", True, "allow_policy", "ns[prod]-policy[allow-front]-rule[0]"),
    ("tcp", 8080, "spiffe://td/ns/front/sa/bad", False, "deny_policy", "ns[prod]-policy[deny-bad]-rule[0]"),
    ("tcp", 8080, "spiffe://td/ns/other/sa/a", False, "no_allow_match", ""),   # GET rule skipped on tcp
    ("http", 8080, "spiffe://td/ns/front/sa/a", True, "allow_policy", "ns[prod]-policy[allow-front]-rule[0]"),
    ("http", 8080, "spiffe://td/ns/other/sa/a", False, "needs_request_no_l7", ""),   # method decides
    ("http", 9090, "spiffe://td/ns/other/sa/a", False, "no_allow_match", ""),    # no rule can match port 9090
    ("tcp", 8080, None, False, "mtls_strict_plaintext", "ns[istio-system]-peerauthentication[default]"),
    ("tcp", 8082, None, False, "no_allow_match", ""),                         # PERMISSIVE: evaluated, no ALLOW
])
def test_connection_decisions(source, protocol, port, principal, allowed, code, policy):
    src, _ = source
    d = PolicyAuthorizer(src, listener="in", protocol=protocol, port=port).decide(info(principal))
    assert (d.allowed, d.code, d.policy) == (allowed, code, policy)
    assert d.residual is not None
    if code == "deny_policy":
        assert "deny-bad rule 0" in d.reason and "p.yaml:" in d.reason and d.ref.name == "deny-bad"


def test_needs_request_hands_the_residual_to_l7_when_available(source):
    src, _ = source
    authz = PolicyAuthorizer(src, listener="in", protocol="http", port=8080, l7_available=True)
    d = authz.decide(info("spiffe://td/ns/other/sa/a"))
    assert d.allowed and d.code == "needs_request" and d.residual is not None
    from secmesh.policy.attrs import RequestAttrs

    assert d.engine is src.current.engine
    assert d.engine.decide_request(d.residual, RequestAttrs("GET", "/")).allowed
    assert not d.engine.decide_request(d.residual, RequestAttrs("POST", "/")).allowed


def test_answers_are_reused_but_residuals_are_per_connection(source):
    src, _ = source
    authz = PolicyAuthorizer(src, listener="in", protocol="tcp", port=8080)
    a, b = authz.decide(info("spiffe://td/ns/front/sa/a")), authz.decide(info("spiffe://td/ns/front/sa/a"))
    assert a.reason is b.reason and a.residual is not b.residual


def test_peer_authentication_modes_per_port(source):
    src, _ = source
    snap = src.current
    assert snap.mode(8080)[0] is MtlsMode.STRICT
    assert snap.mode(8081)[0] is MtlsMode.DISABLE
    mode, ref = snap.mode(8082)
    assert mode is MtlsMode.PERMISSIVE and policy_label(ref) == "ns[prod]-peerauthentication[web]"


def test_reload_swaps_or_keeps_the_old_set(source):
    src, pfile = source

    async def scenario() -> None:
        authz = PolicyAuthorizer(src, listener="in", protocol="tcp", port=8080)
        assert authz.decide(info("spiffe://td/ns/front/sa/a")).allowed
        pfile.write_text(POLICIES.replace("td/ns/front/sa/bad", "td/ns/front/sa/a"))
        assert await src.reload() and src.current.version == 2
        assert authz.decide(info("spiffe://td/ns/front/sa/a")).code == "deny_policy"
        pfile.write_text(POLICIES + "---\nkind: AuthorizationPolicy\napiVersion: security.istio.io/v1\n"
                         "metadata: {name: x, namespace: prod}\nspec: {action: CUSTOM, provider: {name: ext}, "
                         "rules: [{}]}\n")
        assert not await src.reload()
        assert src.current.version == 2 and "CUSTOM" in (src.last_error or "")
        assert authz.decide(info("spiffe://td/ns/front/sa/a")).code == "deny_policy"   # old set still enforced
        pfile.write_text("kind: [unclosed\n")
        assert not await src.reload() and "p.yaml:" in (src.last_error or "")

    asyncio.run(scenario())


def test_poll_picks_up_changes(source):
    src, pfile = source
    src.poll_interval = 0.01

    async def scenario() -> None:
        task = asyncio.create_task(src.run())
        pfile.write_text(POLICIES.replace("8082: {mode: PERMISSIVE}", "8082: {mode: STRICT}"))
        for _ in range(500):
            if src.current.version == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert src.current.mode(8082)[0] is MtlsMode.STRICT

    asyncio.run(scenario())


def test_start_up_load_raises_on_custom(tmp_path):
    pfile = tmp_path / "p.yaml"
    pfile.write_text("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: x, namespace: prod}"
                     "\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}\n")
    with pytest.raises(PolicyError, match="CUSTOM"):
        PolicySource.load(load(_config(tmp_path, pfile)))


@pytest.mark.parametrize("extra, text", [
    ("    allow_all: true\n", "cannot be combined with `policies`"),
    ("    mtls_mode: STRICT\n", "PeerAuthentication in the policy files"),
    ("    protocol: udp\n", "tcp or http"),
])
def test_config_refuses_mixing(tmp_path, extra, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent("""\
        policies: /nonexistent
        listeners:
          - name: in
            address: 127.0.0.1:15006
            upstream: 127.0.0.1:8080
        """) + extra)
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        load(p)


def test_workload_port_defaults_to_the_upstream_port(tmp_path):
    cfg = load(_config(tmp_path, tmp_path / "p.yaml"))
    assert cfg.listeners[0].policy_port == 8080 and cfg.workload.labels == {"app": "web"}
