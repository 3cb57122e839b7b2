"""`secmesh policy check` as a user runs it: a real process, the example policies, the exit-code contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.proc import REPO_ROOT, run_cli

EXAMPLES = REPO_ROOT / "policies" / "examples"
REQUESTS = EXAMPLES / "requests"

# request file -> (exit code, decision, policy name or None, reason code)
EXPECTED = {
    "productpage-allow.json": (0, "ALLOW", "productpage-viewer", "allow_policy"),
    "productpage-debug-deny.json": (1, "DENY", "block-debug", "deny_policy"),
    "productpage-plaintext.json": (1, "DENY", "default", "mtls_strict_plaintext"),
    "reviews-jwt.json": (0, "ALLOW", "reviews-jwt", "allow_policy"),
    "mysql-tcp.json": (0, "ALLOW", "db-allow-reviews", "allow_policy"),
    "mysql-tcp-other.json": (1, "DENY", None, "no_allow_match"),
}


def check(policies: Path | str, request: Path | str, *extra: str):
    return run_cli("policy", "check", "--policies", str(policies), "--request", str(request), *extra)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_examples(name: str) -> None:
    code, decision, policy, reason = EXPECTED[name]
    result = check(EXAMPLES, REQUESTS / name)
    assert result.returncode == code, result.stderr
    out = json.loads(result.stdout)
    assert out["decision"] == decision
    assert out["reason"]["code"] == reason
    assert out["reason"].get("name") == policy
    assert isinstance(out["audit"], bool)


def test_audit_and_dry_run_are_reported() -> None:
    out = json.loads(check(EXAMPLES, REQUESTS / "reviews-jwt.json").stdout)
    assert out["audit"] is True and out["audit_policy"]["name"] == "audit-writes"
    assert out["dry_run"] == [{"action": "DENY", "result": "denied", "policy": out["dry_run"][0]["policy"]}]
    assert out["reason"]["source"].endswith("reviews.yaml:12:5")


def test_invalid_policy_exits_2_with_location(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n"
                   "spec:\n  rules:\n  - to:\n    - operation:\n        pathz: [/a]\n")
    result = check(bad, REQUESTS / "productpage-allow.json")
    assert result.returncode == 2 and result.stdout == ""
    assert f"{bad}:8:9" in result.stderr and "did you mean 'paths'" in result.stderr


def test_custom_action_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "custom.yaml"
    p.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: default}\n"
                 "spec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n")
    result = check(p, REQUESTS / "productpage-allow.json")
    assert result.returncode == 2 and "CUSTOM" in result.stderr and f"{p}:1:1" in result.stderr


def test_invalid_request_exits_2(tmp_path: Path) -> None:
    r = tmp_path / "r.json"
    r.write_text('{"workload": {"namespace": "default"},\n "protocol": "http",\n "request": {"path": "/a%00"}}\n')
    result = check(EXAMPLES, r)
    assert result.returncode == 2 and f"{r}:3:" in result.stderr


def test_root_namespace_option(tmp_path: Path) -> None:
    p = tmp_path / "mesh.yaml"
    p.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: all, namespace: mesh}\n"
                 "spec:\n  action: DENY\n  rules: [{}]\n")
    assert check(p, REQUESTS / "productpage-allow.json").returncode == 0
    assert check(p, REQUESTS / "productpage-allow.json", "--root-namespace", "mesh").returncode == 1
