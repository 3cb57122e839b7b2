"""`make demo` runs `scripts/demo.sh`, which must hand over to `secmesh demo` with the user's options.

The demo itself (every step, metrics, clean-up) is exercised end to end in `tests/e2e/`; here
only the wiring is checked, the way `make demo` invokes it (the venv's bin first on PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.proc import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "demo.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_demo_script_execs_secmesh_demo_with_the_users_options() -> None:
    assert 'exec secmesh demo "$@"' in SCRIPT.read_text()
    r = _run("--help")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Usage: secmesh demo" in r.stdout
    for option in ("--keep", "--json", "--non-interactive", "--ttl"):
        assert option in r.stdout


def test_demo_script_passes_bad_options_to_click() -> None:
    r = _run("--ttl", "1s")
    assert r.returncode == 2 and "between 4s and 1h" in r.stderr, r.stderr
