"""deploy/Dockerfile read as text (no Docker engine here): what the image promises.

Slim Python 3.11 base, the package installed from the repository with the project's
constraints, a numeric non-root user, `secmesh` as the entry point, and a final stage that
holds the virtualenv and nothing from the build. The ignore file is checked against the real
tree with Docker's matching rules (last match wins, a match on a parent directory counts).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from secmesh import inject
from tests.support.proc import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
IGNORE = REPO_ROOT / "deploy" / "Dockerfile.dockerignore"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) from a Dockerfile; continuation lines are joined."""
    logical, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        logical.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((op, rest))
        elif op == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def test_slim_python_311_base_for_every_stage() -> None:
    assert len(STAGES) == 2
    for stage in STAGES:
        base = ARGS[stage.base[2:-1]] if stage.base.startswith("${") else stage.base
        assert re.fullmatch(r"python:3\.11-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", base), base


def test_installed_from_the_repo_with_the_constraints() -> None:
    build = STAGES[0]
    runs = " && ".join(build.all("RUN"))
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", runs), runs
    copied = {src for line in build.all("COPY") for src in shlex.split(line)[:-1]}
    assert {"pyproject.toml", "constraints.txt", "secmesh"} <= copied
    for src in copied:
        assert (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"
    readme = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"].get("readme")
    assert readme is None or readme in copied, "setuptools needs the readme named in pyproject.toml"
    assert "secmesh --version" in runs  # the entry point is smoke-tested while building


def test_final_stage_is_non_root_numeric_with_the_secmesh_entry_point() -> None:
    (user,) = FINAL.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0))
    assert int(uid) == inject.SIDECAR_UID  # the agent socket's group and the injected runAsUser
    runs = " ".join(FINAL.all("RUN"))
    assert f"--uid {uid}" in runs and "--shell /usr/sbin/nologin" in runs
    (entrypoint,) = FINAL.all("ENTRYPOINT")
    assert entrypoint == '["secmesh"]'  # exec form: signals reach secmesh, not a shell
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["secmesh"] == "secmesh.cli.main:main"
    assert any(e.startswith("PATH=/opt/venv/bin:") for e in " ".join(FINAL.all("ENV")).split())


def test_no_build_tools_in_the_final_stage() -> None:
    final = " ".join(arg for _, arg in FINAL.instructions)
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "pip install", "python3-dev"):
        assert tool not in final, tool
    copies = FINAL.all("COPY")
    assert copies == [f"--from={STAGES[0].name} /opt/venv /opt/venv"]
    assert "PIP_ONLY_BINARY=:all:" in " ".join(STAGES[0].all("ENV"))  # nothing is compiled anywhere


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    def regex(p: str) -> re.Pattern[str]:
        out = re.escape(p.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.compile(out.replace(r"\?", "[^/]"))
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        if any(regex(raw.lstrip("!")).fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(("path", "ignored"), [
    ("pyproject.toml", False), ("constraints.txt", False), ("README.md", False),
    ("secmesh/cli/main.py", False), ("secmesh/proto/ca_pb2.pyi", False), ("secmesh/__pycache__/log.cpython-311.pyc", True),
    (".venv/bin/python", True), (".git/HEAD", True), ("tests/conftest.py", True), ("deploy/Dockerfile", True),
    ("deploy/k8s/overlays/example/ca-material/root-key.pem", True), ("bench/x.py", True),
])
def test_the_build_context_holds_only_what_the_image_is_built_from(path: str, ignored: bool) -> None:
    patterns = [line.strip() for line in IGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert _ignored(path, patterns) is ignored


def test_every_file_the_build_copies_survives_the_ignore_file() -> None:
    patterns = [line.strip() for line in IGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    sources = [p for p in (REPO_ROOT / "secmesh").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sources
    kept = [p for p in sources if not _ignored(str(p.relative_to(REPO_ROOT)), patterns)]
    assert kept == sources
