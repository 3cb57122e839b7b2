"""`secmesh inject` golden tests, run through the real CLI (`python -m secmesh inject`).

Each `golden/<case>.in.yaml` is injected and compared byte for byte with `<case>.out.yaml`;
then the output is injected again and must come back unchanged (idempotence). Regenerate the
expected files after an intended change with `UPDATE_GOLDEN=1 pytest tests/unit/deploy` and
review the diff: the fixtures are the specification of what injection writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.support.proc import run_cli
from tests.unit.deploy.k8s import comment_lines, strip_injection

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".in.yaml") for p in GOLDEN.glob("*.in.yaml"))
# An explicit image keeps the fixtures independent of secmesh's version (the default image is
# `secmesh:<version>`, checked in test_inject.py).
EXTRA_ARGS = {
    "flags": ["--image", "registry.example.com/secmesh:1.2.3", "--config-map", "team-sidecar",
              "--socket-host-path", "/var/run/secmesh"],
}
DEFAULT_ARGS = ["--image", "secmesh:golden"]
UNCHANGED = {"optout"}  # cases whose output must equal their input exactly


def _inject(path: Path, case: str) -> str:
    result = run_cli("inject", "-q", "-f", str(path), *EXTRA_ARGS.get(case, DEFAULT_ARGS))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    source, expected = GOLDEN / f"{case}.in.yaml", GOLDEN / f"{case}.out.yaml"
    got = _inject(source, case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected.write_text(got)
    assert got == expected.read_text(), f"`secmesh inject -f {source}` differs from {expected}"
    if case in UNCHANGED:
        assert got == source.read_text()


@pytest.mark.parametrize("case", CASES)
def test_golden_is_idempotent(case: str) -> None:
    expected = GOLDEN / f"{case}.out.yaml"
    assert _inject(expected, case) == expected.read_text()


@pytest.mark.parametrize("case", CASES)
def test_golden_keeps_user_fields_and_comments(case: str) -> None:
    """Removing what injection added gives back the input's data; every comment line survives."""
    source, expected = (GOLDEN / f"{case}.in.yaml").read_text(), (GOLDEN / f"{case}.out.yaml").read_text()
    yaml = YAML(typ="safe")
    before = [d for d in yaml.load_all(source) if d is not None]
    after = [strip_injection(d) for d in yaml.load_all(expected) if d is not None]
    if case == "upgrade":  # the input was itself injected: compare with its own stripped form
        before = [strip_injection(d) for d in before]
    assert after == [strip_injection(d, only_empty=True) for d in before]
    missing = [line for line in comment_lines(source) if line not in expected]
    assert not missing, f"comments lost: {missing}"
