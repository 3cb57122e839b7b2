"""The root command: help lists every group without importing them, version works, unknown groups fail."""

from tests.support.proc import run_cli


def test_help_lists_every_group():
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ("ca", "spiffe", "svid", "policy", "agent", "sidecar", "inject", "demo"):
        assert group in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert "secmesh" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2
