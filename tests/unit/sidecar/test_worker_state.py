"""The supervisor's runtime directory: stale ones (a SIGKILLed supervisor's) are removed, live ones kept."""

from __future__ import annotations

import os
import subprocess
import sys

from secmesh.sidecar.worker_state import PREFIX, remove_stale


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid            # reaped: no process has this pid now (pids are not reused this fast)


def test_a_dead_supervisors_directory_is_removed_and_a_live_ones_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dead = tmp_path / f"{PREFIX}{_dead_pid()}-abc"
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"
    other = tmp_path / "secmesh-sidecar-notapid-x"
    for d in (dead, live, other):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"\0" * 16)
    assert remove_stale(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists() and other.exists()
