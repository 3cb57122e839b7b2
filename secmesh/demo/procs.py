"""The demo's child processes: started by argv with their output in a log file, ended by PID.

Every process the demo starts is recorded here and nowhere else, so clean-up can end exactly
those (SIGTERM, then SIGKILL after a grace period) in reverse start order, whether the demo
finished, failed or was interrupted. Children get their own session so that a Ctrl-C in the
terminal reaches only the demo, which then stops them in order instead of all at once.
Readiness is always polled (TCP connect, HTTP 200, Unix socket), never slept for.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence


class DemoError(Exception):
    """A step of the demo's own setup failed (a process died, a port never opened)."""


def secmesh_argv(*args: str) -> list[str]:
    """Run the CLI of this very installation (`python -m secmesh`), whatever PATH says."""
    return [sys.executable, "-m", "secmesh", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 1.0) -> int:
    """The status of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def http_text(url: str, timeout: float = 2.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except (urllib.error.HTTPError, OSError):
        return ""


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen
    _log: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessGroup:
    """Starts children and guarantees each is ended by its PID (see module docstring)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str]) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "wb")
        popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=child_env(), start_new_session=True)
        child = Child(name, list(argv), log_path, popen, log)
        self.children.append(child)
        return child

    def run(self, name: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a short command to completion (its output is also appended to `<name>.log`)."""
        r = subprocess.run(list(argv), capture_output=True, text=True, env=child_env(), timeout=timeout,
                           stdin=subprocess.DEVNULL)
        with open(self.log_dir / f"{name}.log", "a") as f:
            f.write(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}")
        if r.returncode != 0:
            raise DemoError(f"{name} failed (exit {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return r

    def wait_for(self, waits: dict[str, tuple[Child, Callable[[], bool]]], timeout: float) -> None:
        """Poll every readiness check until all pass; fail fast (with its log tail) if a child exits."""
        pending = dict(waits)
        deadline = time.monotonic() + timeout
        while pending:
            for what, (child, ready) in list(pending.items()):
                if ready():
                    del pending[what]
                elif not child.alive():
                    raise DemoError(f"{child.name} exited with {child.popen.returncode} before {what}; "
                                    f"last log lines:\n{child.tail()}")
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {names}")
            time.sleep(0.05)

    def stop_all(self, grace: float = 5.0) -> list[tuple[str, int | None]]:
        """SIGTERM every live child (newest first), wait, SIGKILL stragglers; returns (name, exit code)."""
        for child in reversed(self.children):
            if child.alive():
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            try:
                child.popen.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.popen.wait(5)
        out = []
        for child in self.children:
            close = getattr(child._log, "close", None)
            if close:
                close()
            out.append((child.name, child.popen.returncode))
        return out
