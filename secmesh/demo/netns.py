"""Optional `--netns`: each pod in its own network namespace, joined by a veth pair.

The frontend pod (its sidecar) and the orders pod (its sidecar and app) each get a network
namespace with their own loopback and one end of a veth pair (`10.231.N.1` ↔ `10.231.N.2`), so
mesh traffic really leaves one host's address and arrives at another's. The CA and the agents
stay in the root namespace, as node-level daemons; the SDS socket reaches into the pods through
the filesystem (Kubernetes' hostPath model), which network namespaces do not partition.

The demo itself must reach loopback-only endpoints inside the pods (admin ports, the frontend's
outbound listener). `Net.call(where, fn)` runs `fn` on a worker thread that has joined that
namespace with setns(2) (namespaces are per thread on Linux; subprocesses such as curl started
from that thread inherit it). Without `--netns`, `Net.call` just calls `fn`.
Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2's `ip`.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"


def available() -> tuple[bool, str]:
    """Whether `--netns` can work here, and why not."""
    if os.geteuid() != 0:
        return False, "needs root"
    if shutil.which("ip") is None:
        return False, "needs iproute2's `ip`"
    return True, ""


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _join(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Net:
    """Where each pod lives; `namespaces` is empty in the default (all-loopback) mode."""

    namespaces: dict[str, str] = field(default_factory=dict)   # pod → namespace name
    addresses: dict[str, str] = field(default_factory=dict)    # pod → its address
    _pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.namespaces)

    def address(self, pod: str) -> str:
        return self.addresses.get(pod, "127.0.0.1")

    def argv(self, pod: str | None, argv: list[str]) -> list[str]:
        """`ip netns exec NS argv…` for a pod's process (it execs: the PID is the process's own)."""
        ns = self.namespaces.get(pod or "")
        return ["ip", "netns", "exec", ns, *argv] if ns else argv

    def call(self, pod: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        ns = self.namespaces.get(pod or "")
        if not ns:
            return fn(*args, **kwargs)
        pool = self._pools.get(ns)
        if pool is None:
            pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{pod}", initializer=_join,
                                      initargs=(f"{NETNS_DIR}/{ns}",))
            self._pools[ns] = pool
        return pool.submit(fn, *args, **kwargs).result()

    @classmethod
    def create(cls) -> Net:
        tag = f"{os.getpid() % 100000}{random.randrange(100)}"
        subnet = random.randrange(1, 250)
        net = cls()
        pods = {"frontend": f"smd{tag}f", "orders": f"smd{tag}o"}
        ips = {"frontend": f"10.231.{subnet}.1", "orders": f"10.231.{subnet}.2"}
        try:
            for pod, ns in pods.items():
                _ip("netns", "add", ns)
                net.namespaces[pod] = ns
            _ip("link", "add", pods["frontend"], "type", "veth", "peer", "name", pods["orders"])
            for pod, ns in pods.items():
                _ip("link", "set", ns, "netns", ns)          # the veth end is named like its namespace
                _ip("-n", ns, "addr", "add", f"{ips[pod]}/30", "dev", ns)
                _ip("-n", ns, "link", "set", ns, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                net.addresses[pod] = ips[pod]
        except BaseException:
            net.destroy()
            raise
        return net

    def destroy(self) -> None:
        """Stop the worker threads and delete the namespaces (which deletes the veth pair)."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        leftover = self.namespaces.get("frontend")
        if leftover:
            subprocess.run(["ip", "link", "del", leftover], capture_output=True, timeout=10)
        self.namespaces.clear()
