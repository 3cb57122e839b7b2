"""`make ca-demo` as a user runs it: every CA step must succeed against the real CLI and real openssl."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.proc import REPO_ROOT


def test_ca_demo_script_runs_every_step(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(["bash", str(REPO_ROOT / "ca" / "demo.sh")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert ": OK" in out                                  # openssl verify
    assert '"valid": true' in out                         # secmesh svid verify
    assert "Key Compromise" in out                        # the CRL lists the revocation
    assert '"use": "x509-svid"' in out                    # SPIFFE bundle form
    assert list(tmp_path.iterdir()) == []                 # the temporary directory was removed
