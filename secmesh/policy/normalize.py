"""Request-path normalization, applied before any path is matched (as Envoy does for Istio).

Matching a raw `:path` would let `/admin/../public`, `/%61dmin` or `/admin\\x` slip past a
rule written for `/admin`. Istio's default (BASE) makes Envoy normalize per RFC 3986:
decode percent-encoded *unreserved* characters (other escapes keep their meaning and are
upper-cased), turn `\\` into `/`, resolve `.` and `..` — and it does *not* merge slashes.
`%00` is refused outright. Query and fragment never take part in path matching.
MERGE_SLASHES additionally collapses `//`; DECODE_AND_MERGE_SLASHES first decodes `%2F`
and `%5C` (so `/a%2Fb` becomes `/a/b`) and then merges.
"""

from __future__ import annotations

import enum
import re

from secmesh.errors import PolicyError

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(r"/{2,}")
_ESCAPED_SLASH = re.compile(r"%(2[Ff]|5[Cc])")


class PathNormalization(str, enum.Enum):
    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


class InvalidPath(PolicyError):
    """The request path cannot be normalized; the request gets a 400, never an authz decision."""

    reason = "invalid_path"


def strip_query(raw: str) -> str:
    cut = len(raw)
    for sep in "?#":
        i = raw.find(sep)
        if i != -1 and i < cut:
            cut = i
    return raw[:cut]


def _decode(m: re.Match[str]) -> str:
    byte = int(m.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + m.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path; `..` never climbs above the root."""
    segments = path.split("/")[1:]
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_path(raw: str, mode: PathNormalization = PathNormalization.BASE) -> str:
    """The path that AuthorizationPolicy `paths` are matched against."""
    path = strip_query(raw)
    if mode is PathNormalization.NONE:
        return path
    if "%00" in path or "\x00" in path:
        raise InvalidPath(f"request path contains a NUL character: {raw[:80]!r}")
    if not path.startswith("/"):
        raise InvalidPath(f"request path must start with '/': {raw[:80]!r}")
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES and "%" in path:
        path = _ESCAPED_SLASH.sub(lambda m: "/" if m.group(1) in ("2F", "2f") else "\\", path)
    if "%" in path:
        path = _ESCAPE.sub(_decode, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "/." in path:
        path = remove_dot_segments(path)
    if mode is not PathNormalization.BASE and "//" in path:
        path = _SLASHES.sub("/", path)
    return path
