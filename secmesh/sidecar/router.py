"""Request → route → cluster. Pure: no I/O, no clock; compiled once from `RouteConfig`s.

Routes are an ordered list and the first one whose every condition holds wins (Envoy's route
order within a virtual host; authority is one more condition here instead of a separate
virtual-host table, which keeps one matching rule for users to learn). Conditions:

- authority: `host` exact, `*.suffix`, `prefix.*` or `*`; case-insensitive; a pattern without a
  port ignores the request's port (`api.local` matches `api.local:8080`), one with a port
  compares the whole authority;
- path: exact, prefix or a full-match regex, against the path without its query string;
- methods: any of the listed;
- headers: every condition (exact / prefix / regex full match / present; `invert` negates);
  repeated request headers are joined with "," as Envoy's header matcher sees them.

Everything is compared as bytes (the codec's types), so the hot path never decodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from secmesh.sidecar.codec.stream import Headers
from secmesh.sidecar.l7_config import HeaderMatchConfig, RouteConfig

HostMatch = Callable[[bytes], bool]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    cluster: str
    timeout: float | None
    retries: int | None                 # the count only; the retry budget is the cluster's
    retry_buffer_limit: int | None = None


def split_authority(authority: bytes) -> bytes:
    """The host part of an authority, lower-cased (`[::1]:80` → `[::1]`)."""
    a = authority.lower()
    if a.startswith(b"["):
        end = a.find(b"]")
        return a[:end + 1] if end > 0 else a
    colon = a.rfind(b":")
    return a[:colon] if colon >= 0 and a[colon + 1:].isdigit() else a


def _host_matcher(pattern: str) -> HostMatch:
    p = pattern.lower().encode()
    if p == b"*":
        return lambda authority: True
    with_port = b":" in p and not p.endswith(b"]")
    key: Callable[[bytes], bytes] = (lambda a: a.lower()) if with_port else split_authority
    if p.startswith(b"*"):
        suffix = p[1:]
        return lambda authority: (h := key(authority)).endswith(suffix) and len(h) > len(suffix)
    if p.endswith(b"*"):
        prefix = p[:-1]
        return lambda authority: (h := key(authority)).startswith(prefix) and len(h) > len(prefix)
    return lambda authority: key(authority) == p


def _strip_query(path: bytes) -> bytes:
    q = path.find(b"?")
    if q >= 0:
        path = path[:q]
    f = path.find(b"#")
    return path[:f] if f >= 0 else path


def _header_matcher(h: HeaderMatchConfig) -> Callable[[dict[bytes, bytes]], bool]:
    name = h.name.encode()
    if h.present is not None:
        want = h.present
        test: Callable[[bytes | None], bool] = lambda v: (v is not None) == want
    elif h.exact is not None:
        exact = h.exact.encode()
        test = lambda v: v == exact
    elif h.prefix is not None:
        prefix = h.prefix.encode()
        test = lambda v: v is not None and v.startswith(prefix)
    else:
        rx = re.compile(h.regex.encode())  # type: ignore[union-attr]
        test = lambda v: v is not None and rx.fullmatch(v) is not None
    if h.invert:
        return lambda hdrs: not test(hdrs.get(name))
    return lambda hdrs: test(hdrs.get(name))


class _Compiled:
    __slots__ = ("route", "hosts", "path_exact", "path_prefix", "path_regex", "methods", "headers")

    def __init__(self, cfg: RouteConfig) -> None:
        self.route = Route(cfg.name or cfg.cluster, cfg.cluster,
                           float(cfg.timeout) if cfg.timeout is not None else None, cfg.retries,
                           cfg.retry_buffer_limit)
        self.hosts = tuple(_host_matcher(a) for a in cfg.authority)
        self.path_exact = cfg.path_exact.encode() or None
        self.path_prefix = cfg.path_prefix.encode() or None
        self.path_regex = re.compile(cfg.path_regex.encode()) if cfg.path_regex else None
        self.methods = frozenset(m.encode() for m in cfg.methods)
        self.headers = tuple(_header_matcher(h) for h in cfg.headers)

    def matches(self, authority: bytes, path: bytes, method: bytes, hdrs: dict[bytes, bytes] | None) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.hosts and not any(m(authority) for m in self.hosts):
            return False
        if self.path_exact is not None and path != self.path_exact:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and self.path_regex.fullmatch(path) is None:
            return False
        if self.headers:
            assert hdrs is not None
            return all(m(hdrs) for m in self.headers)
        return True


def header_map(headers: Headers) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for n, v in headers:
        prev = out.get(n)
        out[n] = v if prev is None else prev + b"," + v
    return out


class Router:
    """Compiled routes of one listener; `default` (a cluster name) catches what no route matches."""

    def __init__(self, routes: Sequence[RouteConfig], default: str | None = None) -> None:
        self._routes = tuple(_Compiled(r) for r in routes)
        self._needs_headers = any(r.headers for r in self._routes)
        self._default = Route("default", default, None, None) if default else None
        self._only_default = not self._routes

    @property
    def clusters(self) -> set[str]:
        names = {r.route.cluster for r in self._routes}
        if self._default is not None:
            names.add(self._default.cluster)
        return names

    def route(self, authority: bytes, path: bytes, method: bytes, headers: Headers) -> Route | None:
        if self._only_default:
            return self._default
        bare = _strip_query(path)
        hdrs = header_map(headers) if self._needs_headers else None
        for r in self._routes:
            if r.matches(authority, bare, method, hdrs):
                return r.route
        return self._default
