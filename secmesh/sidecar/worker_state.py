"""What the workers of a `--workers N` sidecar share: one private runtime directory.

The directory (0700, made by the supervisor, removed when it exits) holds two kinds of files:

- prometheus_client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`): every worker's metric
  values live in its own mmapped `*_<pid>.db`, and worker 0's `/metrics` merges them with
  `MultiProcessCollector`, so counters are the whole sidecar's. A dead worker's counter file
  stays (its counts remain part of the total, so totals never go backwards); its live-gauge
  files are removed (`mark_process_dead`), so open connections and readiness are the living
  workers' only.
- `worker-<i>.json` = `{"pid": …, "ready": …}`, rewritten atomically by worker i when its
  readiness changes. Worker 0's `/ready` is 200 only when all N files say ready and their pids
  are alive; `/live` when the supervisor and all N pids are alive. A file whose pid is gone (a
  crash between two reaps) counts as not ready, so a crash is seen without waiting for anyone.

Multiprocess mode is switched on only for N > 1: its `.inc()` writes to an mmap under a lock
(about 2-3x the in-memory cost), which a single-worker sidecar has no reason to pay.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(path: str) -> None:
    """Point prometheus_client at `path` before any metric value exists in this process.

    `prometheus_client.values.ValueClass` is chosen at import time from the environment, so the
    variable is set first; if the library was imported already (but no secmesh sidecar metric
    created yet) the class is re-chosen. Metric objects created before this would keep in-memory
    values that no other process can see, hence the hard check.
    """
    if "secmesh.sidecar.metrics" in sys.modules:
        raise RuntimeError("multiprocess metrics must be enabled before secmesh.sidecar.metrics is imported")
    os.environ[ENV] = path
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()   # type: ignore[attr-defined]


PREFIX = "secmesh-sidecar-"


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove our runtime directories whose supervisor is gone; returns what was removed."""
    base = Path(parent or tempfile.gettempdir())
    removed = []
    uid = os.getuid()
    for d in base.glob(PREFIX + "*-*"):
        pid_text = d.name[len(PREFIX):].split("-", 1)[0]
        try:
            if not pid_text.isdigit() or _alive(int(pid_text)) or d.stat().st_uid != uid or not d.is_dir():
                continue
        except OSError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class WorkerView:
    index: int
    pid: int
    alive: bool
    ready: bool


class RuntimeDir:
    """The shared directory of one supervisor and its `count` workers."""

    def __init__(self, path: str, count: int, supervisor_pid: int) -> None:
        self.path = path
        self.count = count
        self.supervisor_pid = supervisor_pid
        self._published: tuple[int, bool] | None = None

    @classmethod
    def create(cls, count: int, parent: str | None = None) -> RuntimeDir:
        """mkdtemp (0700) and multiprocess metrics on; call in the supervisor before importing metrics.

        The name carries the supervisor's pid, so a later supervisor can remove the directories
        of dead ones (`remove_stale`): a supervisor killed with SIGKILL cannot clean up, and each
        directory holds a megabyte-sized mmap file per worker, in a /tmp that is often RAM.
        """
        remove_stale(parent)
        path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
        os.chmod(path, 0o700)
        enable_multiprocess(path)
        return cls(path, count, os.getpid())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _file(self, index: int, kind: str = "worker") -> Path:
        return Path(self.path) / f"{kind}-{index}.json"

    def _write(self, path: Path, doc: Any) -> None:
        """Atomically (rename), so a reader never sees half a document."""
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    @staticmethod
    def _load(path: Path) -> Any:
        """The document, or None when absent or unreadable (a worker not started yet, or gone)."""
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # -- worker side ---------------------------------------------------------------------------

    def publish(self, index: int, ready: bool) -> None:
        """Record this worker's pid and readiness (only when it changed: called every second)."""
        state = (os.getpid(), ready)
        if state == self._published:
            return
        self._write(self._file(index), {"pid": state[0], "ready": ready})
        self._published = state

    def publish_view(self, index: int, name: str, doc: Any) -> None:
        """A worker's own view for an admin endpoint (`clusters`), rewritten atomically each second."""
        self._write(self._file(index, name), doc)

    def views(self, name: str) -> dict[int, Any]:
        """Every worker's last published view of `name`, by worker index (absent: not published yet)."""
        docs = {i: self._load(self._file(i, name)) for i in range(self.count)}
        return {i: doc for i, doc in docs.items() if doc is not None}

    # -- supervisor side -----------------------------------------------------------------------

    def forget(self, index: int, pid: int) -> None:
        """A worker exited: drop its readiness and its live gauges (its counters stay in the totals)."""
        from prometheus_client.multiprocess import mark_process_dead

        try:
            if self._read(index).get("pid") == pid:
                self._file(index).unlink()
        except OSError:
            pass
        mark_process_dead(pid, self.path)

    def mark_handed_over(self) -> None:
        """A hot restart's successor serves now: the workers that drain leave the admin port to it."""
        (Path(self.path) / "handed-over").touch()

    def handed_over(self) -> bool:
        return (Path(self.path) / "handed-over").exists()

    # -- admin (worker 0) ----------------------------------------------------------------------

    def _read(self, index: int) -> dict[str, Any]:
        doc = self._load(self._file(index))
        return doc if isinstance(doc, dict) else {}

    def workers(self) -> list[WorkerView]:
        out = []
        for i in range(self.count):
            doc = self._read(i)
            pid = int(doc.get("pid") or 0)
            alive = _alive(pid)
            out.append(WorkerView(i, pid, alive, alive and bool(doc.get("ready"))))
        return out

    def all_ready(self) -> bool:
        return all(w.ready for w in self.workers())

    def all_live(self) -> bool:
        return _alive(self.supervisor_pid) and os.getppid() == self.supervisor_pid and all(
            w.alive for w in self.workers())

    def exposition(self) -> bytes:
        """Every worker's metrics merged: counters summed, gauges per their `multiprocess_mode`."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)
        return generate_latest(registry)
