"""`secmesh policy diff` as a reviewer's CI runs it: directories and git ranges, the JSON contract,
and every listed request re-checked with `secmesh policy check` against OLD and NEW."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.proc import REPO_ROOT, run_cli

MESH = ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, "
        "namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")
OLD = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from: [{source: {namespaces: ["web"]}}]
    to: [{operation: {methods: ["GET", "DELETE"], paths: ["/items/*"]}}]
"""
# widens: namespace `batch` may GET items; narrows: nobody may DELETE any more
NEW = OLD.replace('["web"]', '["web", "batch"]').replace('["GET", "DELETE"]', '["GET"]')


def write(d: Path, policy: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "mesh.yaml").write_text(MESH)
    (d / "api.yaml").write_text(policy)
    return d


def check_decision(policies: Path, request: dict, tmp: Path) -> str:
    req = tmp / "req.json"
    req.write_text(json.dumps(request))
    r = run_cli("policy", "check", "--policies", str(policies), "--request", str(req))
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)["decision"]


def test_json_contract_and_every_request_really_changes(tmp_path: Path) -> None:
    old, new = write(tmp_path / "old", OLD), write(tmp_path / "new", NEW)
    r = run_cli("policy", "diff", str(old), str(new), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"widened", "narrowed", "changes"} and doc["widened"] is True and doc["narrowed"] is True
    for c in doc["changes"]:
        assert set(c) == {"workload", "request", "old", "new", "summary"}
        assert set(c["workload"]) == {"namespace", "labels"} and c["old"] != c["new"]
        assert check_decision(old, c["request"], tmp_path) == c["old"], c["summary"]
        assert check_decision(new, c["request"], tmp_path) == c["new"], c["summary"]
    gains = [c for c in doc["changes"] if c["new"] == "ALLOW"]
    losses = [c for c in doc["changes"] if c["new"] == "DENY"]
    assert len(gains) == 1 and "namespace batch" in gains[0]["summary"] and "path /items/*" in gains[0]["summary"]
    # DELETE is lost by `web` (and would have been by nobody else): one class, one row
    assert len(losses) == 1 and "namespace web" in losses[0]["summary"]
    assert losses[0]["request"]["request"]["method"] == "DELETE"


def test_text_markdown_and_fail_on(tmp_path: Path) -> None:
    old, new = write(tmp_path / "old", OLD), write(tmp_path / "new", NEW)
    text = run_cli("policy", "diff", str(old), str(new))
    assert text.returncode == 0 and "+ GAINS  shop (app=api)" in text.stdout and "- LOSES" in text.stdout
    md = run_cli("policy", "diff", str(old), str(new), "--format", "markdown", "--fail-on", "widen")
    assert md.returncode == 1
    assert md.stdout.startswith("### secmesh policy diff") and "| 🟢 gains |" in md.stdout
    assert run_cli("policy", "diff", str(new), str(new), "--fail-on", "any").returncode == 0
    narrow_only = run_cli("policy", "diff", str(old), str(write(tmp_path / "n2", OLD.replace('"DELETE"', '"PUT"'))),
                          "--fail-on", "narrow")
    assert narrow_only.returncode == 1


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
                               "HOME": str(repo), "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_range(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    write(repo / "policies", OLD)
    (repo / "policies" / "api.test.yaml").write_text("tests: [\n")  # test files are not policies
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    (repo / "policies" / "api.yaml").write_text(NEW)
    _git(repo, "commit", "-q", "-am", "change")
    r = run_cli("policy", "diff", "--git", "HEAD~1..HEAD", "policies", "--format", "json", cwd=repo)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["widened"] and doc["narrowed"] and len(doc["changes"]) == 2
    same = run_cli("policy", "diff", "--git", "main...HEAD", "policies", "--format", "json", cwd=repo)
    assert same.returncode == 0 and json.loads(same.stdout)["changes"] == []
    bad = run_cli("policy", "diff", "--git", "nope..HEAD", "policies", cwd=repo)
    assert bad.returncode == 2 and "unknown revision 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_input_exits_2_with_location(tmp_path: Path) -> None:
    old = write(tmp_path / "old", OLD)
    broken = write(tmp_path / "new", OLD.replace("rules:", "rules: [\n"))
    r = run_cli("policy", "diff", str(old), str(broken))
    assert r.returncode == 2 and f"{broken / 'api.yaml'}:" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("policy", "diff", str(old))
    assert r.returncode == 2 and "OLD and NEW" in r.stderr
    (tmp_path / "x.yaml").write_text("- not\n- an object\n")
    r = run_cli("policy", "diff", str(old), str(tmp_path / "x.yaml"))
    assert r.returncode == 2 and "x.yaml:1:1" in r.stderr


def test_examples_against_a_hand_edited_copy(tmp_path: Path) -> None:
    """The repository's examples: relaxing mesh-wide mTLS is reported for every workload scope."""
    src = REPO_ROOT / "policies" / "examples"
    new = tmp_path / "examples"
    shutil.copytree(src, new)
    (new / "mesh.yaml").write_text((src / "mesh.yaml").read_text().replace("mode: STRICT", "mode: PERMISSIVE"))
    r = run_cli("policy", "diff", str(src), str(new), "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["widened"] and not doc["narrowed"]
    assert all("principal" not in c["request"]["source"] for c in doc["changes"])
    for c in doc["changes"][:4]:
        assert check_decision(src, c["request"], tmp_path) == "DENY"
        assert check_decision(new, c["request"], tmp_path) == "ALLOW"
