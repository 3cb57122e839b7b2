"""`policy test` core: test files (defaults, positions, errors), the runner, coverage, reports."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from secmesh.errors import PolicyError
from secmesh.policy import report_tests
from secmesh.policy.load import load_tree, loads_policies
from secmesh.policy.testfile import load_test_file
from secmesh.policy.testing import run_tests

POLICIES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/admin"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other, namespace: elsewhere}
spec:
  rules: [{}]
"""

TESTS = """\
defaults:
  workload: {namespace: shop, labels: {app: web}}
  source: {principal: spiffe://cluster.local/ns/shop/sa/frontend}
tests:
- name: frontend reads
  request:
    request: {method: GET, path: /}
  expect: ALLOW
  policy: shop/web
  rule: 0
- name: frontend writes
  request:
    request: {method: POST, path: /}
  expect: DENY
  reason: no_allow_match
- name: wrong expectation
  request:
    request: {method: GET, path: /}
  expect: DENY
- name: wrong policy
  request:
    request: {method: GET, path: /}
  expect: ALLOW
  policy: web2
"""


def _run(tmp_path: Path, tests: str = TESTS, coverage: bool = True):
    (tmp_path / "p.yaml").write_text(POLICIES)
    (tmp_path / "p.test.yaml").write_text(tests)
    tf = load_test_file(tmp_path / "p.test.yaml")
    return run_tests([tf], load_tree([tmp_path]), load_tree, coverage=coverage)


def test_results_and_coverage(tmp_path: Path) -> None:
    run = _run(tmp_path)
    assert [r.status for r in run.results] == ["pass", "pass", "fail", "fail"]
    assert run.results[0].decided_by == "shop/web[0]"
    assert "expected DENY, got ALLOW" in run.results[2].message
    assert "expected policy web2, got shop/web[0]" in run.results[3].message
    cov = run.coverage
    assert cov is not None and (cov.total, cov.covered) == (3, 1)
    assert [(u.policy, u.rule, u.why) for u in cov.uncovered] == [
        ("shop/web", 1, "no case matched it"), ("elsewhere/other", 0, "no case targets a workload in its scope")]


def test_table_junit_and_json(tmp_path: Path) -> None:
    run = _run(tmp_path)
    table = report_tests.table(run)
    assert table.rstrip().endswith("2 passed, 2 failed")
    assert "FAIL" in table and f"{tmp_path / 'p.test.yaml'}:16" in table
    root = ET.fromstring(report_tests.junit(run))
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "2"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == str(tmp_path / "p.test.yaml")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["frontend reads", "frontend writes", "wrong expectation",
                                               "wrong policy"]
    assert cases[2].find("failure") is not None and cases[0].find("failure") is None
    assert "coverage" in report_tests.as_json(run)


def test_defaults_keep_positions_for_errors(tmp_path: Path) -> None:
    bad = TESTS.replace("source: {principal: spiffe://cluster.local/ns/shop/sa/frontend}",
                        "source: {principal: not-a-spiffe-id}")
    with pytest.raises(PolicyError) as info:
        _run(tmp_path, bad)
    assert f"{tmp_path / 'p.test.yaml'}:3:" in str(info.value) and "SPIFFE" in str(info.value)


@pytest.mark.parametrize("text,fragment", [
    ("tests:\n- name: a\n  request: {protocol: udp}\n  expect: ALLOW\n", ":3:"),
    ("tests:\n- name: a\n  request: {request: {path: /}}\n  expect: MAYBE\n", ":4:11"),
    ("tests:\n- name: a\n  requests: {}\n  expect: ALLOW\n", "did you mean 'request'"),
    ("tests:\n- name: a\n  request: {request: {path: /}}\n  expect: ALLOW\n"
     "- name: a\n  request: {request: {path: /}}\n  expect: ALLOW\n", "duplicate test name"),
    ("- just a string\n", ":1:3"),
    ("tests: [\n", "YAML error"),
    ("tests:\n- name: a\n  request: {request: {path: /}, source: {ip: 300.1.1.1}}\n  expect: ALLOW\n",
     "not an IP address"),
])
def test_malformed_test_files(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "x.test.yaml"
    p.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_test_file(p)
    assert str(info.value).startswith(str(p)) and fragment in str(info.value)


def test_a_bare_list_of_cases(tmp_path: Path) -> None:
    p = tmp_path / "x.test.yaml"
    p.write_text("- name: plaintext tcp\n  request: {protocol: tcp, destination: {port: 5432}}\n  expect: ALLOW\n")
    run = run_tests([load_test_file(p)], loads_policies(""), load_tree)
    assert run.results[0].status == "pass" and run.results[0].case.check.protocol == "tcp"


def test_a_file_may_name_its_own_policies(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deny.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: default}\n"
        "spec:\n  action: DENY\n  rules: [{}]\n")
    p = tmp_path / "x.test.yaml"
    p.write_text("policies: [sub]\ntests:\n- name: all denied\n  request: {request: {path: /}}\n  expect: DENY\n"
                 "  policy: default/d\n")
    run = run_tests([load_test_file(p)], loads_policies(""), load_tree)
    assert run.results[0].status == "pass", run.results[0].message
