"""One predicate per Istio field or `when` key, with the exact matching Istio generates.

Every value string is classified the way Istio's `StringMatcherWithPrefix` does it: `*`
alone is "present and non-empty" (`.+`), a leading `*` is a suffix, a trailing `*` a
prefix, anything else exact. The per-field twists are kept: principals get a `spiffe://`
prefix, headers and methods treat `*` as mere presence, hosts ignore case, namespaces and
service accounts are regular expressions over the peer's principal, request principals
split at the last `/` into issuer and subject, and claims match a string or any string in a
list. Each `Pred` also lists the index keys (`anchors`) that are *necessary* for it to
match, which is what lets the compiler avoid scanning every rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable

SPIFFE = "spiffe://"

# Attribute families: L4 ones are known when the connection is accepted, L7 ones per request.
L7_KEYS = frozenset({"request.principal", "request.audiences", "request.presenter", "request.claims",
                     "request.header", "request.host", "request.method", "request.path"})


@dataclass(frozen=True, slots=True)
class Pred:
    """A compiled field: `fn(attrs)` where attrs is ConnAttrs (L4) or RequestAttrs (L7)."""

    key: str
    fn: Callable[[Any], bool]
    anchors: tuple[tuple[str, Any], ...] | None  # None: not indexable (negated, presence, regex)
    text: str = ""  # for explanations: "principals[cluster.local/ns/a/sa/b]"

    @property
    def l7(self) -> bool:
        return self.key in L7_KEYS


def classify(value: str) -> tuple[str, str]:
    if value == "*":
        return "any", ""
    if value.startswith("*"):
        return "suffix", value[1:]
    if value.endswith("*"):
        return "prefix", value[:-1]
    return "exact", value


class StrSet:
    """An OR of Envoy string matchers over one attribute; `present` means "exists, even empty"."""

    __slots__ = ("exact", "prefixes", "suffixes", "nonempty", "present", "regexes")

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.prefixes: list[str] = []
        self.suffixes: list[str] = []
        self.nonempty = False
        self.present = False
        self.regexes: list[re.Pattern[str]] = []

    def build(self) -> Callable[[str | None], bool]:
        exact, pre, suf = frozenset(self.exact), tuple(self.prefixes), tuple(self.suffixes)
        nonempty, present, regexes = self.nonempty, self.present, tuple(self.regexes)
        if present:
            return lambda s: s is not None
        if nonempty:
            return lambda s: bool(s)
        if not pre and not suf and not regexes:
            return exact.__contains__  # C-level: one less Python frame per evaluation
        def match(s: str | None) -> bool:
            if s is None:
                return False
            if s in exact or (pre and s.startswith(pre)) or (suf and s.endswith(suf)):
                return True
            return any(r.fullmatch(s) for r in regexes)
        return match


def negate(fn: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda a: not fn(a)


def _attr(getter: Callable[[Any], Any], test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda a: test(getter(a))


# --- string families ----------------------------------------------------------------------

def string_matcher(values: tuple[str, ...], *, mode: str = "envoy", anchor: str | None = None,
                   lower: bool = False) -> tuple[Callable[[str | None], bool], tuple[tuple[str, Any], ...] | None]:
    """mode: envoy (`*` = non-empty) | header (`*` = present). Returns (test, anchors)."""
    s = StrSet()
    anchors: list[tuple[str, Any]] | None = []
    for raw in values:
        kind, v = classify(raw)
        if lower:
            v = v.lower()
        if kind == "any":
            if mode == "header":
                s.present = True
            else:
                s.nonempty = True
            anchors = None
        elif kind == "exact":
            s.exact.add(v)
            if anchors is not None and anchor:
                anchors.append((anchor, v))
        elif kind == "prefix":
            s.prefixes.append(v)
            if anchors is not None and anchor:
                anchors.append((anchor + "_prefix", v))
        else:
            s.suffixes.append(v)
            if anchors is not None and anchor:
                anchors.append((anchor + "_suffix", v))
    if not anchor:
        anchors = None
    return s.build(), (tuple(anchors) if anchors else None)


def principal_matcher(values: tuple[str, ...]) -> tuple[Callable[[str | None], bool], Any]:
    """`principals` / `source.principal`: the value gets `spiffe://` in front, except for `*`."""
    s = StrSet()
    anchors: list[tuple[str, Any]] | None = []
    suffix_checks: list[str] = []
    for raw in values:
        kind, v = classify(raw)
        if kind == "any":
            s.nonempty = True
            anchors = None
        elif kind == "exact":
            s.exact.add(SPIFFE + v)
            anchors is not None and anchors.append(("principal", SPIFFE + v))
        elif kind == "prefix":
            s.prefixes.append(SPIFFE + v)
            anchors is not None and anchors.append(("principal_prefix", SPIFFE + v))
        else:  # Istio turns it into the regex `spiffe://.*<suffix>`
            suffix_checks.append(v)
            anchors is not None and anchors.append(("principal_suffix", v))
    base = s.build()
    if not suffix_checks:
        return base, tuple(anchors) if anchors else None
    sufs = tuple(suffix_checks)

    def match(p: str | None) -> bool:
        if base(p):
            return True
        return p is not None and p.startswith(SPIFFE) and any(
            p.endswith(x) and len(p) >= len(SPIFFE) + len(x) for x in sufs)
    return match, tuple(anchors) if anchors else None


def namespace_matcher(values: tuple[str, ...]) -> tuple[Callable[[str | None], bool], Any]:
    """Istio: regex `.*/ns/<value with * as .*>/.*` over the peer principal."""
    subs: list[str] = []
    regexes: list[re.Pattern[str]] = []
    anchors: list[tuple[str, Any]] | None = []
    for v in values:
        if "*" in v:
            regexes.append(re.compile(".*/ns/" + ".*".join(re.escape(p) for p in v.split("*")) + "/.*", re.S))
            anchors = None
        else:
            subs.append(f"/ns/{v}/")
            if anchors is not None:
                if "/" in v:
                    anchors = None
                else:
                    anchors.append(("ns", v))
    subs_t, rx = tuple(subs), tuple(regexes)

    def match(p: str | None) -> bool:
        if p is None:
            return False
        return any(x in p for x in subs_t) or any(r.fullmatch(p) for r in rx)
    return match, tuple(anchors) if anchors else None


def service_account_matcher(values: tuple[str, ...], policy_namespace: str) -> tuple[Callable[[str | None], bool], Any]:
    """Istio: `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`; `<sa>` alone means the policy's namespace."""
    regexes = []
    anchors = []
    for v in values:
        ns, slash, sa = v.partition("/")
        if not slash:
            ns, sa = policy_namespace, v
        regexes.append(re.compile(f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?", re.S))
        anchors.append(("sa", (ns, sa)))
    rx = tuple(regexes)
    return (lambda p: p is not None and any(r.fullmatch(p) for r in rx)), tuple(anchors)


def trust_domain_matcher(values: tuple[str, ...]) -> tuple[Callable[[str | None], bool], Any]:
    test, anchors = string_matcher(values, anchor="td")
    return test, anchors if anchors and all(k == "td" for k, _ in anchors) else None


# --- request principals and claims -----------------------------------------------------------

def _any(s: Any) -> bool:
    return isinstance(s, str) and s != ""


def request_principal_matcher(values: tuple[str, ...]) -> tuple[Callable[[Any], bool], Any]:
    """`<iss>/<sub>` split at the last `/`, each half matched like Istio's generator does."""
    pairs: list[tuple[Callable[[Any], bool], Callable[[Any], bool]]] = []
    anchors: list[tuple[str, Any]] | None = []
    for value in values:
        idx = value.rfind("/")
        iss, sub = (value[:idx], value[idx + 1:]) if idx >= 0 else (value, "")
        exact = lambda x: (lambda s: s == x)  # noqa: E731
        if value == "*":
            m_iss, m_sub = _any, _any
        elif value.startswith("*"):
            if idx >= 0:
                m_iss = _any if iss == "*" else (lambda x: lambda s: isinstance(s, str) and s.endswith(x))(iss[1:])
                m_sub = exact(sub)
            else:
                m_iss, m_sub = _any, (lambda x: lambda s: isinstance(s, str) and s.endswith(x))(value[1:])
        elif value.endswith("*"):
            if idx >= 0:
                m_iss = exact(iss)
                m_sub = _any if sub == "*" else (lambda x: lambda s: isinstance(s, str) and s.startswith(x))(sub[:-1])
            else:
                m_iss, m_sub = (lambda x: lambda s: isinstance(s, str) and s.startswith(x))(value[:-1]), _any
        else:
            m_iss, m_sub = exact(iss), exact(sub)
            if anchors is not None:
                anchors.append(("req_principal", (iss, sub)))
                pairs.append((m_iss, m_sub))
                continue
        anchors = None
        pairs.append((m_iss, m_sub))
    pairs_t = tuple(pairs)

    def match(claims: dict[str, Any] | None) -> bool:
        if not claims:
            return False
        i, s = claims.get("iss"), claims.get("sub")
        return any(mi(i) and ms(s) for mi, ms in pairs_t)
    return match, tuple(anchors) if anchors else None


def claim_matcher(values: tuple[str, ...]) -> Callable[[Any], bool]:
    """A string claim, or any string element of a list claim (Envoy's list/string value matcher)."""
    test, _ = string_matcher(values)

    def match(v: Any) -> bool:
        if isinstance(v, str):
            return test(v)
        if isinstance(v, list):
            return any(isinstance(e, str) and test(e) for e in v)
        return False
    return match


def claim_path(key: str) -> tuple[str, ...]:
    """`request.auth.claims[a][b]` → ("a", "b")."""
    inner = key[len("request.auth.claims"):]
    if not inner.startswith("[") or not inner.endswith("]"):
        raise ValueError(f"bad claim key {key!r}")
    parts = inner[1:-1].split("][")
    if any(p == "" or "[" in p or "]" in p for p in parts):
        raise ValueError(f"bad claim key {key!r}")
    return tuple(parts)


def header_name(key: str) -> str:
    inner = key[key.index("["):]
    if not inner.startswith("[") or not inner.endswith("]") or len(inner) < 3:
        raise ValueError(f"bad header key {key!r}")
    return inner[1:-1].lower()


# --- IPs and ports -------------------------------------------------------------------------

IpKey = tuple[int, int]  # (version, integer)
_inet_pton, _AF_INET, _from_bytes = socket.inet_pton, socket.AF_INET, int.from_bytes


def ip_key(text: str) -> IpKey:
    """`(version, int)`; dotted-quad IPv4 through `inet_pton` (strict, ~10× faster than ipaddress)."""
    try:
        return 4, _from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        a = ipaddress.ip_address(text)  # IPv6, or the error ipaddress gives for a bad address
        return a.version, int(a)


@dataclass(frozen=True, slots=True)
class Cidr:
    version: int
    plen: int
    shift: int
    key: int

    @classmethod
    def parse(cls, text: str) -> Cidr:
        net = ipaddress.ip_network(text, strict=False)
        bits = net.max_prefixlen
        shift = bits - net.prefixlen
        return cls(net.version, net.prefixlen, shift, int(net.network_address) >> shift)

    def contains(self, ip: IpKey | None) -> bool:
        return ip is not None and ip[0] == self.version and (ip[1] >> self.shift) == self.key


def cidr_matcher(values: tuple[str, ...], anchor: str) -> tuple[Callable[[IpKey | None], bool], Any]:
    cidrs = tuple(Cidr.parse(v) for v in values)
    if len(cidrs) == 1:
        c = cidrs[0]
        v, sh, k = c.version, c.shift, c.key
        test: Callable[[IpKey | None], bool] = lambda ip: ip is not None and ip[0] == v and (ip[1] >> sh) == k
    else:
        test = lambda ip: any(c.contains(ip) for c in cidrs)  # noqa: E731
    return test, tuple((anchor, (c.version, c.plen, c.key)) for c in cidrs)


def port_matcher(values: tuple[str, ...]) -> tuple[Callable[[int | None], bool], Any]:
    ports = frozenset(int(v) for v in values)
    return ports.__contains__, tuple(("port", p) for p in sorted(ports))
