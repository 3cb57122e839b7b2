"""`secmesh inject` as a user runs it: files, stdin, -o, the summary, and every bad-input path.

Bad input exits 2 with one line naming file:line:col where there is one, and never a traceback.
The injection rules themselves are covered by the golden tests in tests/unit/deploy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.support.proc import REPO_ROOT, run_cli

GOLDEN = REPO_ROOT / "tests" / "unit" / "deploy" / "golden"
DEPLOYMENT = GOLDEN / "deployment.in.yaml"
IMAGE = ["--image", "secmesh:golden"]  # the image the golden files were made with


def test_stdin_file_and_output_file_agree(tmp_path: Path) -> None:
    from_file = run_cli("inject", "-q", "-f", str(DEPLOYMENT), *IMAGE)
    from_stdin = run_cli("inject", "-q", "-f", "-", *IMAGE, input=DEPLOYMENT.read_text())
    out = tmp_path / "out.yaml"
    to_file = run_cli("inject", "-q", "-f", str(DEPLOYMENT), "-o", str(out), *IMAGE)
    assert from_file.returncode == from_stdin.returncode == to_file.returncode == 0, from_stdin.stderr
    assert from_file.stdout == from_stdin.stdout == out.read_text() == (GOLDEN / "deployment.out.yaml").read_text()
    assert to_file.stdout == "" and [p.name for p in tmp_path.iterdir()] == ["out.yaml"]  # no temp file left


def test_summary_goes_to_stderr_and_stdout_stays_pure_yaml() -> None:
    result = run_cli("inject", "-f", str(GOLDEN / "multi.in.yaml"))
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "StatefulSet/db: injected", "DaemonSet/node-exporter: injected", "ReplicaSet/legacy: injected",
        "Pod/debug: injected", "Job/backfill: injected (native sidecar)", "CronJob/nightly: injected (native sidecar)",
    ]
    docs = [d for d in YAML(typ="safe").load_all(result.stdout) if d is not None]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod",
                                         "Job", "CronJob", "Rollout"]


def test_a_utf8_bom_is_accepted() -> None:
    result = run_cli("inject", "-q", "-f", "-", *IMAGE, input="\ufeff" + DEPLOYMENT.read_text())
    assert result.returncode == 0 and result.stdout == (GOLDEN / "deployment.out.yaml").read_text()


@pytest.mark.parametrize(("content", "expected"), [
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: [\n", "bad.yaml:7:1: not valid YAML"),
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  name: b\n", "bad.yaml:5:3: not valid YAML: found duplicate key"),
    ("just some words\n", "bad.yaml: document 1 is a string, not a Kubernetes object"),
    ("kind: Deployment\nspec: {}\n", "bad.yaml:1:1: document 1 is not a Kubernetes object (no `apiVersion`)"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n- a\n- b\n",
     "bad.yaml:5:1: document 2 is a list, not a Kubernetes object"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    spec:\n      containers: x\n",
     "bad.yaml:8:7: Deployment d: `spec.template.spec.containers` must be a list"),
    (b"\xff\xfe\x00binary", "bad.yaml: not UTF-8 text"),
])
def test_bad_input_exits_2_with_file_and_line(tmp_path: Path, content: str | bytes, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli("inject", "-f", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"secmesh inject: {expected}"), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("args", "expected"), [
    (["-f", "/nonexistent/deployment.yaml"], "/nonexistent/deployment.yaml: cannot read: No such file or directory"),
    (["-f", "/"], "/: is a directory"),
])
def test_unreadable_input_exits_2(args: list[str], expected: str) -> None:
    result = run_cli("inject", *args)
    assert result.returncode == 2 and result.stderr.startswith(f"secmesh inject: {expected}"), result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_exits_2(tmp_path: Path) -> None:
    result = run_cli("inject", "-f", str(DEPLOYMENT), "-o", str(tmp_path / "no" / "such" / "dir.yaml"))
    assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr


def test_missing_filename_is_a_usage_error() -> None:
    result = run_cli("inject")
    assert result.returncode == 2 and "Missing option '-f'" in result.stderr


def test_help_names_the_options() -> None:
    result = run_cli("inject", "--help")
    assert result.returncode == 0
    for option in ("--filename", "--output", "--image", "--config-map", "--socket-host-path"):
        assert option in result.stdout
