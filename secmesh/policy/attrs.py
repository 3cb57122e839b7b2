"""What the engine knows about a connection (L4) and about one request on it (L7).

Both are built once and then read many times, so everything the matchers need is derived
up front: IPs become `(version, int)` keys, the peer principal's candidate namespaces and
(namespace, service account) pairs are extracted for the indexes, header names are
lower-cased and repeated headers joined with "," (how Envoy's header matcher sees them),
and the JWT payload's space-delimited claims (`scope`, `permission`, plus any configured)
are split into lists.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from secmesh.policy.matchers import SPIFFE, IpKey, ip_key
from secmesh.policy.normalize import PathNormalization, normalize_path

DEFAULT_SPACE_DELIMITED = ("scope", "permission")


def _ip(v: str | IpKey | None) -> IpKey | None:
    if v is None or isinstance(v, tuple):
        return v
    return ip_key(v)


def namespace_candidates(principal: str) -> tuple[str, ...]:
    """Every `X` with `/ns/X/` in the principal: a superset of what a namespace regex can match."""
    out = []
    start = 0
    while True:
        i = principal.find("/ns/", start)
        if i < 0:
            return tuple(out)
        j = principal.find("/", i + 4)
        if j < 0:
            return tuple(out)
        out.append(principal[i + 4:j])
        start = i + 1


def service_account_candidates(principal: str) -> tuple[tuple[str, str], ...]:
    """Every (ns, sa) with `/ns/<ns>/…/sa/<sa>` in order: a superset of what an SA regex can match."""
    segs = principal.split("/")
    ns_at = [i for i, s in enumerate(segs[:-1]) if s == "ns"]
    sa_at = [i for i, s in enumerate(segs[:-1]) if s == "sa"]
    return tuple((segs[i + 1], segs[j + 1]) for i in ns_at for j in sa_at if j >= i + 2)


_DERIVED: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...], str | None]] = {}
_DERIVED_MAX = 4096


def _derive(p: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], str | None]:
    """What the indexes read from a principal; memoized because peers reconnect with the same one."""
    out = (namespace_candidates(p), service_account_candidates(p),
           p[len(SPIFFE):].split("/", 1)[0] if p.startswith(SPIFFE) else None)
    if len(_DERIVED) >= _DERIVED_MAX:
        _DERIVED.clear()
    _DERIVED[p] = out
    return out


class ConnAttrs:
    """Connection attributes. `principal` is the peer's full SPIFFE URI, None for plaintext."""

    __slots__ = ("principal", "source_ip", "remote_ip", "dest_ip", "dest_port", "sni",
                 "ns_candidates", "sa_candidates", "trust_domain")

    def __init__(self, principal: str | None = None, source_ip: str | IpKey | None = None,
                 remote_ip: str | IpKey | None = None, dest_ip: str | IpKey | None = None,
                 dest_port: int | None = None, sni: str | None = None) -> None:
        self.principal = principal or None
        self.source_ip = _ip(source_ip)
        self.remote_ip = _ip(remote_ip) if remote_ip is not None else self.source_ip
        self.dest_ip = _ip(dest_ip)
        self.dest_port = dest_port
        self.sni = sni or None
        p = self.principal
        if p:
            derived = _DERIVED.get(p)
            if derived is None:
                derived = _derive(p)
            self.ns_candidates, self.sa_candidates, self.trust_domain = derived
        else:
            self.ns_candidates, self.sa_candidates, self.trust_domain = (), (), None

    def without_principal(self) -> ConnAttrs:
        """The same connection seen as plaintext (mTLS DISABLE: no client certificate is asked for)."""
        return ConnAttrs(None, self.source_ip, self.remote_ip, self.dest_ip, self.dest_port, self.sni)

    def cache_key(self) -> tuple[Any, ...]:
        return (self.principal, self.source_ip, self.remote_ip, self.dest_ip, self.dest_port, self.sni)

    def __repr__(self) -> str:
        return (f"ConnAttrs(principal={self.principal!r}, source_ip={self.source_ip}, dest_port={self.dest_port}, "
                f"sni={self.sni!r})")


class RequestAttrs:
    """Request attributes. `path` is already normalized; `claims` is the verified JWT payload or None."""

    __slots__ = ("method", "host", "path", "headers", "claims")

    def __init__(self, method: str = "GET", path: str = "/", host: str | None = None,
                 headers: Mapping[str, str | Iterable[str]] | None = None, claims: Mapping[str, Any] | None = None,
                 space_delimited: Iterable[str] = DEFAULT_SPACE_DELIMITED) -> None:
        hdrs: dict[str, str] = {}
        for name, value in (headers or {}).items():
            hdrs[name.lower()] = value if isinstance(value, str) else ",".join(value)
        if host is None:
            host = hdrs.get(":authority", hdrs.get("host"))
        self.method = method
        self.path = path
        self.host = host.lower() if host is not None else None
        self.headers = hdrs
        self.claims = _split_claims(claims, space_delimited) if claims is not None else None

    @classmethod
    def of_decoded(cls, method: str, path: str, host: str | None, headers: dict[str, str],
                   claims: Mapping[str, Any] | None = None) -> RequestAttrs:
        """For a proxy whose codec already lower-cased the names and joined repeated fields:
        `headers` is taken as is (not copied or re-lowered), so the per-request cost is one object."""
        self = cls.__new__(cls)
        if host is None:
            host = headers.get(":authority", headers.get("host"))
        self.method = method
        self.path = path
        self.host = host.lower() if host is not None else None
        self.headers = headers
        self.claims = _split_claims(claims, DEFAULT_SPACE_DELIMITED) if claims is not None else None
        return self

    @classmethod
    def from_raw(cls, method: str, raw_path: str, *, normalization: PathNormalization = PathNormalization.BASE,
                 **kw: Any) -> RequestAttrs:
        """Build from the `:path` as received; raises InvalidPath (→ 400) for unusable paths."""
        return cls(method=method, path=normalize_path(raw_path, normalization), **kw)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def __repr__(self) -> str:
        return f"RequestAttrs(method={self.method!r}, host={self.host!r}, path={self.path!r})"


def split_space_delimited(claims: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Envoy's `normalize_payload_in_metadata`: each named top-level *string* claim becomes the
    list of its space-separated parts (split on ' ' only, empty parts dropped); other claims,
    and claims that are already lists, are left as they are."""
    out = dict(claims)
    for name in names:
        v = out.get(name)
        if isinstance(v, str):
            out[name] = [part for part in v.split(" ") if part]
    return out


_split_claims = split_space_delimited


def claim_at(claims: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    cur: Any = claims
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur
