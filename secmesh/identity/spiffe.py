"""SPIFFE IDs and trust domains, exactly as the SPIFFE-ID standard defines them.

Input is taken verbatim: nothing is trimmed, lower-cased or percent-decoded, because two
strings that a lenient parser would call equal must never authorize differently. Error
messages follow go-spiffe's wording, so they read the same as SPIRE's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from secmesh.errors import IdentityError

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048          # implementations MUST support 2048 bytes and SHOULD NOT generate longer
MAX_TRUST_DOMAIN_BYTES = 255  # RFC 3986 host limit

_TD_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[a-zA-Z0-9._-]+")


class InvalidSpiffeId(IdentityError):
    reason = "invalid_spiffe_id"


def _byte_len(text: str) -> int:
    """UTF-8 length; lone surrogates count too instead of raising (they are rejected later anyway)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _trust_domain_error(name: str) -> str:
    """Say what is wrong with a trust-domain name, naming the URI feature a user most likely meant."""
    if not name:
        return "trust domain is missing"
    if ":" in name:
        return "trust domain cannot contain a port"
    if "@" in name:
        return "trust domain cannot contain userinfo"
    if "%" in name:
        return "trust domain cannot contain percent-encoded characters"
    return "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"


def _path_error(path: str) -> str | None:
    """Return why `path` (empty or starting with '/') is not a valid SPIFFE ID path, or None."""
    if path == "":
        return None
    if "?" in path:
        return "SPIFFE ID cannot contain a query"
    if "#" in path:
        return "SPIFFE ID cannot contain a fragment"
    if "%" in path:
        return "path cannot contain percent-encoded characters"
    if path.endswith("/"):
        return "path cannot have a trailing slash"
    for segment in path[1:].split("/"):
        if segment == "":
            return "path cannot contain empty segments"
        if segment in (".", ".."):
            return "path cannot contain dot segments"
        if not _SEGMENT_CHARS.fullmatch(segment):
            return "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    return None


@dataclass(frozen=True, slots=True)
class TrustDomain:
    name: str

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept a bare name (`example.org`) or a SPIFFE ID whose trust domain is taken (as go-spiffe does)."""
        if not isinstance(text, str):
            raise InvalidSpiffeId("trust domain must be a string")
        if text.startswith(SCHEME_PREFIX):
            return SpiffeId.parse(text).trust_domain
        if _byte_len(text) > MAX_TRUST_DOMAIN_BYTES:
            raise InvalidSpiffeId(f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
        if not _TD_CHARS.fullmatch(text):
            raise InvalidSpiffeId(_trust_domain_error(text))
        return cls(text)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own SPIFFE ID, `spiffe://<td>` (what a signing certificate may carry)."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: TrustDomain
    path: str  # "" or "/seg/seg…"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not isinstance(text, str):
            raise InvalidSpiffeId("SPIFFE ID must be a string")
        if text == "":
            raise InvalidSpiffeId("cannot be empty")
        if not text.startswith(SCHEME_PREFIX):
            raise InvalidSpiffeId("scheme is missing or invalid")
        if _byte_len(text) > MAX_ID_BYTES:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
        rest = text[len(SCHEME_PREFIX):]
        cut = len(rest)
        for sep in "/?#":
            pos = rest.find(sep)
            if pos != -1:
                cut = min(cut, pos)
        name, path = rest[:cut], rest[cut:]
        if _byte_len(name) > MAX_TRUST_DOMAIN_BYTES:
            raise InvalidSpiffeId(f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
        if not _TD_CHARS.fullmatch(name):
            raise InvalidSpiffeId(_trust_domain_error(name))
        if path and path[0] != "/":
            # the authority ended at '?' or '#'
            raise InvalidSpiffeId("SPIFFE ID cannot contain a query" if path[0] == "?"
                                  else "SPIFFE ID cannot contain a fragment")
        problem = _path_error(path)
        if problem:
            raise InvalidSpiffeId(problem)
        return cls(TrustDomain(name), path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain | str, *segments: str) -> SpiffeId:
        """Build an ID from path segments; each must be one valid segment (a '/' inside one is refused,
        so a namespace like `x/sa/admin` can never smuggle extra segments into the ID)."""
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
        for segment in segments:
            if not isinstance(segment, str):
                raise InvalidSpiffeId("path segments must be strings")
            if "/" in segment:
                raise InvalidSpiffeId(f"path segment {segment!r} cannot contain '/'")
        path = "".join("/" + s for s in segments)
        problem = _path_error(path)
        if problem:
            raise InvalidSpiffeId(problem)
        if _byte_len(SCHEME_PREFIX + td.name + path) > MAX_ID_BYTES:
            raise InvalidSpiffeId(f"SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
        return cls(td, path)

    @classmethod
    def for_service_account(cls, trust_domain: TrustDomain | str, namespace: str, service_account: str) -> SpiffeId:
        """Istio's convention: `spiffe://<td>/ns/<namespace>/sa/<service-account>`."""
        return cls.from_segments(trust_domain, "ns", namespace, "sa", service_account)

    @property
    def is_member_only(self) -> bool:
        """True for the trust domain's own ID (no path): never valid on a leaf SVID."""
        return self.path == ""

    @property
    def namespace(self) -> str | None:
        """The `ns` segment of an Istio-style ID, or None."""
        return self._istio_part("ns")

    @property
    def service_account(self) -> str | None:
        """The `sa` segment of an Istio-style ID, or None."""
        return self._istio_part("sa")

    def _istio_part(self, key: str) -> str | None:
        segments = self.path.split("/")[1:]
        for i in range(len(segments) - 1):
            if segments[i] == key:
                return segments[i + 1]
        return None

    def member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain.name}{self.path}"


def is_valid(text: str) -> bool:
    try:
        SpiffeId.parse(text)
    except InvalidSpiffeId:
        return False
    return True
