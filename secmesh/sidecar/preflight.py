"""Before forking: is every port this sidecar needs free? One clear line instead of a traceback.

Listeners bind with SO_REUSEPORT so that workers share a port, which also means a *second*
sidecar of the same user would silently bind the same port and steal half its connections.
So the parent probes each address once with a plain socket (SO_REUSEADDR only, so TIME_WAIT
does not count): that bind fails if anyone listens there, SO_REUSEPORT or not. Addresses
whose sockets come from a hot restart are skipped: the old process holds them on purpose.
"""

from __future__ import annotations

import errno
import socket

from secmesh.sidecar.config import SidecarConfig, split_host_port


def _probe(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def describe_bind_error(what: str, address: str, exc: OSError) -> str:
    """`cannot listen on 127.0.0.1:15000 (admin): address already in use` (one line, no traceback)."""
    why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
    return f"cannot listen on {address} ({what}): {why}"


def check_ports(config: SidecarConfig, *, skip: frozenset[str] = frozenset()) -> str | None:
    """The first address that cannot be bound, as a one-line error; None when all are free."""
    wanted: list[tuple[str, str]] = []
    if config.admin.enabled and config.admin.address and "admin" not in skip:
        wanted.append(("admin", config.admin.address))
    wanted += [(f"listener {lst.name}", lst.address) for lst in config.listeners if lst.name not in skip]
    for what, address in wanted:
        host, port = split_host_port(address, what=what)
        if port == 0:
            continue
        exc = _probe(host, port)
        if exc is not None:
            return describe_bind_error(what, address, exc)
    return None
