"""`secmesh policy test` as CI runs it: table, exit codes, --junit, --coverage, bad input → exit 2."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.proc import run_cli

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/items/*"]}}]
  - from: [{source: {namespaces: ["ops"]}}]
    to: [{operation: {paths: ["/admin"]}}]
"""
CASES = """\
defaults:
  workload: {namespace: shop, labels: {app: api}}
  destination: {port: 8080}
tests:
- name: web lists items
  request:
    source: {principal: spiffe://cluster.local/ns/shop/sa/web}
    request: {method: GET, path: /items/1}
  expect: ALLOW
  policy: shop/api
- name: web cannot delete
  request:
    source: {principal: spiffe://cluster.local/ns/shop/sa/web}
    request: {method: DELETE, path: /items/1}
  expect: DENY
"""


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / "api.yaml").write_text(POLICY)
    (tmp_path / "api.test.yaml").write_text(CASES)
    return tmp_path


def test(*args: str, cwd: Path | None = None):
    return run_cli("policy", "test", *args, cwd=cwd)


test.__test__ = False  # type: ignore[attr-defined]


def test_all_pass_with_junit_and_coverage(tree: Path, tmp_path: Path) -> None:
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()
    r = test(str(tree), "--junit", str(junit), "--coverage")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS    web lists items" in r.stdout and "2 passed, 0 failed" in r.stdout
    assert "coverage: 1/2 rules" in r.stdout
    assert f"{tree / 'api.yaml'}:9:5: ALLOW shop/api rule 1: no case matched it" in r.stdout
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "0"
    assert [c.get("name") for c in root.iter("testcase")] == ["web lists items", "web cannot delete"]


def test_a_failing_case_exits_1_and_is_in_the_junit(tree: Path, tmp_path: Path) -> None:
    (tree / "api.test.yaml").write_text(CASES.replace("expect: DENY", "expect: ALLOW"))
    junit = tmp_path / "junit.xml"
    r = test(str(tree), "--junit", str(junit))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "1 passed, 1 failed" in r.stdout
    assert f"{tree / 'api.test.yaml'}:11: web cannot delete: expected ALLOW, got DENY" in r.stdout
    failure = ET.parse(junit).getroot().find("testsuite/testcase[@name='web cannot delete']/failure")
    assert failure is not None and "expected ALLOW, got DENY" in failure.get("message", "")


def test_json_format(tree: Path) -> None:
    r = test(str(tree), "--format", "json", "--coverage")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["passed"] == 2 and doc["failed"] == 0 and doc["coverage"]["total"] == 2


def test_default_path_is_the_working_directory(tree: Path) -> None:
    r = test(cwd=tree)
    assert r.returncode == 0 and "2 passed" in r.stdout


def test_separate_policies_option(tree: Path, tmp_path: Path) -> None:
    tests_dir = tmp_path / "cases"
    tests_dir.mkdir()
    (tests_dir / "api.test.yaml").write_text(CASES)
    (tree / "api.test.yaml").unlink()
    r = test(str(tests_dir), "--policies", str(tree))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name,content,where", [
    ("api.test.yaml", CASES.replace("method: DELETE", "method: [DELETE]"), "api.test.yaml:14:23"),
    ("api.test.yaml", CASES.replace("principal: spiffe://cluster.local/ns/shop/sa/web}\n    request: {method: GET",
                                    "principal: web}\n    request: {method: GET"), "api.test.yaml:7:"),
    ("api.test.yaml", "tests: [\n", "api.test.yaml:2:1"),
    ("api.yaml", POLICY.replace('methods: ["GET"]', 'methods: "GET"'), "api.yaml:8:32"),
    ("api.yaml", "kind: AuthorizationPolicy\n", "api.yaml:1:1"),
    ("api.yaml", "rules: []\n", "api.yaml:1:1: not a Kubernetes object"),
])
def test_bad_input_exits_2_with_location(tree: Path, name: str, content: str, where: str) -> None:
    (tree / name).write_text(content)
    r = test(str(tree))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and r.stderr.startswith("error: ") and where in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_no_test_files_exits_2(tmp_path: Path) -> None:
    r = test(str(tmp_path))
    assert r.returncode == 2 and "no *.test.yaml files" in r.stderr
