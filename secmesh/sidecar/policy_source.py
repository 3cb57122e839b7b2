"""Istio policy files → one compiled `PolicySnapshot`, reloaded on change or SIGHUP by swapping a reference.

The files (a file or a directory of YAML) hold AuthorizationPolicies and PeerAuthentications.
They are loaded and compiled for this sidecar's workload (namespace + labels) into a
`secmesh.policy.engine.Engine`; the data path only ever reads `PolicySource.current`, so a
reload is one assignment and a connection sees either the old set or the new one, never a mix.

Start-up is strict: a broken or unsupported set (CUSTOM) raises, and the sidecar refuses to
start (fail closed). A reload is forgiving towards traffic: a broken new set is refused with
its `file:line:col`, logged and counted, and the old set keeps being enforced. Loading and
compiling happen in a worker thread so a large set does not stall the event loop for the
whole compile (the GIL still interleaves, but the loop keeps turning).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from secmesh.errors import SecmeshError
from secmesh.log import log_event
from secmesh.policy.decision import RuleRef
from secmesh.policy.engine import Engine
from secmesh.policy.load import load_policies
from secmesh.policy.model import Workload
from secmesh.policy.yamlsrc import policy_files
from secmesh.sidecar import metrics
from secmesh.sidecar.config import MtlsMode, SidecarConfig

log = logging.getLogger("secmesh.sidecar.policy")

_MODES = {"STRICT": MtlsMode.STRICT, "PERMISSIVE": MtlsMode.PERMISSIVE, "DISABLE": MtlsMode.DISABLE}

Stamp = tuple[tuple[str, int, int, int], ...]


def stamp(path: str | Path) -> Stamp:
    """(file, mtime_ns, size, inode) of every policy file: changes when any file is edited, added or removed."""
    out = []
    try:
        files = policy_files(path)
    except SecmeshError:
        return ()
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


@dataclass(frozen=True)
class PolicySnapshot:
    """One compiled policy set; immutable, shared by every connection that started under it."""

    engine: Engine
    version: int
    path: str
    stamp: Stamp
    loaded_at: str
    counts: tuple[int, int, int]   # AuthorizationPolicies, PeerAuthentications, RequestAuthentications

    def mode(self, port: int) -> tuple[MtlsMode, RuleRef | None]:
        """PeerAuthentication for a workload port (Istio precedence; PERMISSIVE when nothing applies)."""
        mode, ref = self.engine.peer.resolve(port)
        return _MODES[mode.value], ref

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version, "loaded_at": self.loaded_at, "files": len(self.stamp),
                "authorization_policies": self.counts[0], "peer_authentications": self.counts[1],
                "request_authentications": self.counts[2], **self.engine.stats()}


def compile_snapshot(path: str, workload: Workload, root_namespace: str, version: int,
                     st: Stamp | None = None) -> PolicySnapshot:
    """Load + compile; raises PolicyError (with file:line:col) or UnsupportedPolicy (CUSTOM)."""
    st = stamp(path) if st is None else st
    policies = load_policies(path)
    engine = Engine(policies, workload, root_namespace)
    counts = (len(policies.authorization), len(policies.peer_authentication), len(policies.request_authentication))
    return PolicySnapshot(engine, version, path, st, _dt.datetime.now(_dt.timezone.utc).isoformat(), counts)


def workload_of(config: SidecarConfig) -> Workload:
    return Workload(config.workload.namespace, dict(config.workload.labels))


class PolicySource:
    """Holds the current snapshot; watches the files (poll) and reloads on change or on request."""

    def __init__(self, config: SidecarConfig, initial: PolicySnapshot) -> None:
        self.path = config.policies
        self.workload = workload_of(config)
        self.root_namespace = config.root_namespace
        self.poll_interval = float(config.policy_poll_interval)
        self.current = initial
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._subscribers: list[Callable[[PolicySnapshot], None]] = []
        metrics.POLICY_VERSION.set(initial.version)

    @classmethod
    def load(cls, config: SidecarConfig) -> PolicySnapshot:
        """The start-up load: raises on any problem, so the sidecar does not start with a partial set."""
        return compile_snapshot(config.policies, workload_of(config), config.root_namespace, 1)

    def subscribe(self, fn: Callable[[PolicySnapshot], None]) -> None:
        self._subscribers.append(fn)

    def request_reload(self) -> None:
        """SIGHUP: reload now even if no file looks changed."""
        self._wake.set()

    async def reload(self) -> bool:
        """Compile the files in a thread; swap on success, keep the old set (and say why) on failure."""
        loop = asyncio.get_running_loop()
        version = self.current.version + 1
        st = stamp(self.path)   # taken first: an edit during the compile triggers another reload
        try:
            snap = await loop.run_in_executor(None, compile_snapshot, self.path, self.workload,
                                              self.root_namespace, version, st)
        except SecmeshError as exc:
            self.last_error = exc.message
            self.current = _restamp(self.current, st)   # do not retry the same broken files
            metrics.policy_reloads("rejected").inc()
            log_event(log, logging.ERROR, "policy reload refused; keeping the previous policy set",
                      path=self.path, reason=exc.reason, error=exc.message, location=getattr(exc, "location", None),
                      keeping_version=self.current.version)
            return False
        except Exception as exc:  # a bug in the loader must not take the sidecar down either
            self.last_error = repr(exc)
            self.current = _restamp(self.current, st)
            metrics.policy_reloads("rejected").inc()
            log_event(log, logging.ERROR, "policy reload failed; keeping the previous policy set", path=self.path,
                      error=repr(exc), keeping_version=self.current.version)
            return False
        self.current = snap
        self.last_error = None
        metrics.policy_reloads("applied").inc()
        metrics.POLICY_VERSION.set(snap.version)
        log_event(log, logging.INFO, "policy set applied", path=self.path, version=snap.version,
                  authorization_policies=snap.counts[0], peer_authentications=snap.counts[1],
                  rules_http=len(snap.engine.http.rules), rules_tcp=len(snap.engine.tcp.rules))
        for fn in list(self._subscribers):
            fn(snap)
        return True

    async def run(self) -> None:
        """Poll the files every `poll_interval` (or wake on SIGHUP) until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                forced = True
            except asyncio.TimeoutError:
                forced = False
            self._wake.clear()
            if forced:
                log_event(log, logging.INFO, "SIGHUP: reloading policies", path=self.path)
                await self.reload()
            elif stamp(self.path) != self.current.stamp:
                log_event(log, logging.INFO, "policy files changed; reloading", path=self.path)
                await self.reload()


def _restamp(snap: PolicySnapshot, st: Stamp) -> PolicySnapshot:
    return PolicySnapshot(snap.engine, snap.version, snap.path, st, snap.loaded_at, snap.counts)
