"""Dogfood: the repository's own policies/ pass `policy lint --strict` and `policy test` (so `make test`
checks them), and every realistic scenario the docs promise is there with its tests."""

from __future__ import annotations

from tests.support.proc import REPO_ROOT, run_cli

POLICIES = REPO_ROOT / "policies"
SCENARIOS = ("examples", "namespace-isolation", "allow-by-principal", "jwt-admin", "deny-by-ip", "tcp-database")


def test_policies_lint_strict_clean() -> None:
    r = run_cli("policy", "lint", "--strict", str(POLICIES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "" and "0 errors, 0 warnings" in r.stderr


def test_policies_tests_pass_with_full_coverage() -> None:
    r = run_cli("policy", "test", "--coverage", str(POLICIES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout and "(100%)" in r.stdout


def test_every_scenario_has_policies_and_tests() -> None:
    for name in SCENARIOS:
        d = POLICIES / name
        assert any(p for p in d.glob("*.yaml") if not p.name.endswith(".test.yaml")), name
        assert list(d.glob("*.test.yaml")), name
