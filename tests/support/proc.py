"""Start the CLI as a user runs it, wait for readiness by polling, and always end what was started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]


def secmesh_argv(*args: str) -> list[str]:
    """argv that runs the CLI of this checkout with the test interpreter (`python -m secmesh …`)."""
    return [sys.executable, "-m", "secmesh", *args]


def test_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, input: str | bytes | None = None, cwd: str | Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one secmesh command to completion and capture its text output."""
    return subprocess.run(secmesh_argv(*args), input=input, cwd=cwd, env=env or test_env(), text=True,
                          capture_output=True, timeout=timeout)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], *, timeout: float = 20.0, interval: float = 0.02,
               what: str = "condition", proc: subprocess.Popen | None = None) -> None:
    """Poll `predicate` until it is true; fail early if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False
    return check


def unix_ready(path: str | Path) -> Callable[[], bool]:
    def check() -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(0.2)
            s.connect(str(path))
            return True
        except OSError:
            return False
        finally:
            s.close()
    return check


class Process:
    """A child process started by a test; `stop()` ends it by PID (and is safe to call twice)."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 log_path: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.popen = subprocess.Popen(self.argv, env=env or test_env(), cwd=cwd, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        if hasattr(self._log, "close"):
            self._log.close()
        return self.popen.returncode

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cli(*args: str, tmp_path: Path, name: str = "proc", env: dict[str, str] | None = None) -> Process:
    """Start `python -m secmesh ARGS…` with its output captured to `tmp_path/<name>.log`."""
    return Process(secmesh_argv(*args), env=env, log_path=tmp_path / f"{name}.log")
