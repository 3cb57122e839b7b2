"""Certificates from files (cert chain, key, bundle), as ghostunnel users expect.

Reloaded when any of the three files changes (mtime/size/inode polled every `poll_interval`,
which also catches Kubernetes' symlink-swapped secret volumes) or on SIGHUP. A writer that
replaces the cert before the key produces a transient mismatch: that read is refused (the last
good material stays) and the next poll, after the key has landed, applies the pair.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from secmesh.log import log_event
from secmesh.sidecar.certstore import CertStore
from secmesh.sidecar.config import FileSourceConfig

log = logging.getLogger("secmesh.sidecar.file_source")
SOURCE = "file"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileSource:
    def __init__(self, cfg: FileSourceConfig, store: CertStore) -> None:
        self.paths = (Path(cfg.cert), Path(cfg.key), Path(cfg.bundle))
        self.poll_interval = cfg.poll_interval
        self.store = store
        self._stamps: tuple[object, ...] | None = None

    def load(self) -> bool:
        """Read the three files and offer them; True when they were applied (or unchanged)."""
        self._stamps = tuple(_stamp(p) for p in self.paths)
        try:
            chain, key, bundle = (p.read_bytes() for p in self.paths)
        except OSError as exc:
            log_event(log, logging.ERROR, "cannot read certificate files; keeping the last good ones",
                      error=f"{exc.filename}: {exc.strerror}")
            return False
        return self.store.offer(chain, key, bundle, source=SOURCE) is None

    def changed(self) -> bool:
        return tuple(_stamp(p) for p in self.paths) != self._stamps

    async def run(self) -> None:
        """Initial load, then poll for changes until cancelled."""
        self.load()
        while True:
            await asyncio.sleep(self.poll_interval)
            if self.changed():
                log_event(log, logging.INFO, "certificate files changed; reloading")
                self.load()
