"""`secmesh policy lint` as CI runs it: a process over fixture trees, every format, every exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.proc import run_cli

GOOD = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]
"""
BAD = """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: api
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        pathz: ["/admin"]
        ports: ["99999"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: "%weird,name: x"
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/debug"]
"""


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    return tmp_path


def lint(*args: str, cwd: Path | None = None):
    return run_cli("policy", "lint", *args, cwd=cwd)


def test_text_format_and_exit_1(tree: Path) -> None:
    r = lint(str(tree))
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (f"{tree / 'bad.yaml'}:11:9: error E006 spec.rules[0].to[0].operation.pathz: unknown field "
                        "'pathz' in Operation (did you mean 'paths'?)")
    assert all(re.match(r"^.+:\d+:\d+: (error|warning) [EW]\d{3} .+$", line) for line in lines)
    assert f"{tree / 'bad.yaml'}:12:17: error E012" in r.stdout
    assert "W103" in r.stdout  # the second policy is valid, so its warnings are reported
    assert "2 errors, 1 warning in 2 files" in r.stderr


def test_clean_tree_exits_0_and_strict_fails_on_warnings(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    assert lint(str(tmp_path)).returncode == 0
    (tmp_path / "warn.yaml").write_text(GOOD.split("---\n")[1].replace("/v1\n", "/v1beta1\n").replace("web", "w2"))
    r = lint(str(tmp_path))
    assert r.returncode == 0 and "W107" in r.stdout
    r = lint("--strict", str(tmp_path))
    assert r.returncode == 1 and "W107" in r.stdout


def test_json_is_the_stable_contract(tree: Path) -> None:
    r = lint("--format", "json", str(tree))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert set(doc) == {"diagnostics"}
    for d in doc["diagnostics"]:
        assert set(d) == {"file", "line", "column", "severity", "code", "message"}
        assert d["severity"] in ("error", "warning") and d["line"] >= 1 and d["column"] >= 1
    assert {"file": str(tree / "bad.yaml"), "line": 12, "column": 17, "severity": "error", "code": "E012",
            "message": "spec.rules[0].to[0].operation.ports[0]: bad port (99999)"} in doc["diagnostics"]


def test_sarif_2_1_0_required_fields(tree: Path) -> None:
    """The required properties of the SARIF 2.1.0 schema, object by object."""
    r = lint("--format", "sarif", ".", cwd=tree)
    assert r.returncode == 1
    log = json.loads(r.stdout)
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    assert isinstance(log["runs"], list) and len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "secmesh-policy-lint" and driver["version"]
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["defaultConfiguration"]["level"] in ("error", "warning")
    assert run["results"]
    for res in run["results"]:
        assert res["message"]["text"]
        assert res["ruleId"] in rule_ids and rule_ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in ("none", "note", "warning", "error")
        (loc,) = res["locations"]
        phys = loc["physicalLocation"]
        assert phys["artifactLocation"]["uri"] in ("bad.yaml", "good.yaml")  # relative to the checkout
        assert phys["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert phys["region"]["startLine"] >= 1 and phys["region"]["startColumn"] >= 1
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"].startswith("file://")


def test_github_annotations(tree: Path) -> None:
    r = lint("--format", "github", str(tree))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"::error file={tree / 'bad.yaml'},line=11,col=9,title=E006 unknown-field::")
    assert any(line.startswith("::warning ") and "title=W103 deny-http-only::" in line for line in lines)
    # message text is escaped: `%` and newlines cannot break the command
    w103 = next(line for line in lines if "W103" in line)
    assert "%25weird" in w103 and "\n" not in w103


def test_output_file(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "lint.sarif"
    r = lint("--format", "sarif", "-o", str(out), str(tree))
    assert r.returncode == 1 and r.stdout == "" and json.loads(out.read_text())["version"] == "2.1.0"


@pytest.mark.parametrize("content,where", [
    ("apiVersion: v1\nkind: [\n", ":3:1: error E001"),
    ("- a\n- b\n", ":1:1: error E004"),
    ("just: text\n", ":1:1: error E004 not a Kubernetes object"),
])
def test_unreadable_input_exits_2_with_location(tmp_path: Path, content: str, where: str) -> None:
    p = tmp_path / "x.yaml"
    p.write_text(content)
    r = lint(str(p))
    assert r.returncode == 2 and f"{p}{where}" in r.stdout and "Traceback" not in r.stderr


def test_missing_path_exits_2(tmp_path: Path) -> None:
    r = lint(str(tmp_path / "nope"))
    assert r.returncode == 2 and "E024" in r.stdout and "no such file" in r.stdout and "Traceback" not in r.stderr
