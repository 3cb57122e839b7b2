"""Outbound HTTP/2 header blocks, made valid by us in one pass instead of by h2's pipeline.

h2 normalizes and validates every header block it sends through about ten chained Python
generators per field; at proxy rates that was the largest single cost per stream. The codec
turns h2's *outbound* normalization and validation off (inbound validation of what a peer
sends stays on, RFC 9113 §8.2) and calls `outbound_fields` instead, which does the same job
for the blocks we can produce, in one loop with a name cache:

- names lower-cased (h2: `_lowercase_header_names`); names with a byte RFC 9113 §8.2.1
  forbids (CTL, space, DEL, non-ASCII, a colon) raise `CodecUsageError` (h2 never checked
  them outbound), so a bad field from a route's `add_headers` never reaches the wire, where
  the peer would have to treat the whole block as malformed;
- pseudo-header fields in a caller's list are dropped: the codec writes its own, first, once,
  so order, duplicates and request/response/trailer rules hold by construction;
- connection-specific fields (§8.2.2) and `host` (carried as `:authority`) dropped; `te`
  only as `trailers`;
- values stripped of surrounding whitespace (h2: `_strip_surrounding_whitespace`); NUL, CR
  or LF in a value raise (h2 never checked that outbound);
- HPACK safety (h2: `_secure_headers`): `authorization`, `proxy-authorization` and cookies
  shorter than 20 bytes are sent never-indexed, and a field the peer sent never-indexed keeps
  that representation (RFC 7541 §7.1.3: intermediaries must); per-request unique ids are
  sent never-indexed too, so they do not churn the dynamic table for every other field.
"""

from __future__ import annotations

import re

from hpack import HeaderTuple, NeverIndexedHeaderTuple

from secmesh.sidecar.codec.stream import CodecUsageError, Headers

FORBIDDEN = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                       b"upgrade", b"host", b"http2-settings"))
_SECRET = frozenset((b"authorization", b"proxy-authorization"))
_UNIQUE = frozenset((b"x-request-id", b"traceparent", b"x-b3-traceid", b"x-b3-spanid",
                     b"x-b3-parentspanid"))
_BAD_NAME = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]")       # §8.2.1, after lower-casing
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_DROP, _TE = 0, 1                                  # name-cache markers besides "keep as bytes"
_KEEP, _NEVER = 2, 3
_names: dict[bytes, tuple[int, bytes]] = {}
_NAMES_MAX = 4096
_NAME_KEEP = 64


def _classify(name: bytes) -> tuple[int, bytes]:
    low = name.lower()
    if low == name:
        low = name                               # same object: lets `outbound_fields` keep the tuple
    if not low:
        raise CodecUsageError("empty header name")
    if low[:1] == b":" or low in FORBIDDEN:
        kind = _DROP
    elif low == b"te":
        kind = _TE
    elif _BAD_NAME.search(low):
        raise CodecUsageError(f"header name {name!r} is not valid in HTTP/2")
    elif low in _SECRET or low in _UNIQUE:
        kind = _NEVER
    else:
        kind = _KEEP
    if len(_names) < _NAMES_MAX and len(name) <= _NAME_KEEP:   # bounded: names come from peers
        _names[name] = (kind, low)
    return kind, low


def outbound_fields(headers: Headers, out: Headers) -> Headers:
    """Append the HTTP/2-ready form of `headers` (no pseudo-headers) to `out`; return `out`."""
    names = _names
    for h in headers:
        n, v = h
        kind, low = names.get(n) or _classify(n)
        if kind == _KEEP:
            if low == b"cookie" and len(v) < 20:
                kind = _NEVER
        elif kind == _DROP:
            continue
        elif kind == _TE:
            if v.strip().lower() != b"trailers":
                continue
            out.append((b"te", b"trailers"))
            continue
        sv = v.strip()
        if _BAD_VALUE.search(sv):
            raise CodecUsageError(f"header {low!r} has a NUL, CR or LF in its value")
        if kind == _NEVER:
            out.append(NeverIndexedHeaderTuple(low, sv))
        elif sv is v and low is n:
            out.append(h)                        # unchanged: keep it (and its HPACK flag)
        else:
            out.append(h.__class__(low, sv) if isinstance(h, HeaderTuple) else (low, sv))
    return out
