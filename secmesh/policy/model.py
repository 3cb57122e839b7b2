"""The Istio security resources as frozen dataclasses, each carrying where it came from.

These mirror `security.istio.io/v1` (and `v1beta1`, which is identical) field by field, in
snake_case, so that the loader is a straight transcription and the compiler never has to
guess. Every object keeps its `Pos` so an error or a decision can name `file:line:col`.
Empty lists stay empty tuples; an *unset* repeated field that Istio distinguishes from an
empty one (`rules`) is `None`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

ROOT_NAMESPACE_DEFAULT = "istio-system"
DRY_RUN_ANNOTATION = "istio.io/dry-run"


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based source position."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


UNKNOWN_POS = Pos("<unknown>", 0, 0)


class Action(str, enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


class MtlsMode(str, enum.Enum):
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True, slots=True)
class TargetRef:
    group: str
    kind: str
    name: str
    namespace: str
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class Rule:
    """`from_`/`to` are None when the field is absent (matches anything)."""

    from_: tuple[Source, ...] | None = None
    to: tuple[Operation, ...] | None = None
    when: tuple[Condition, ...] = ()
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)
    creation_timestamp: str | None = None  # RFC 3339, compared as an instant by peerauth
    pos: Pos = UNKNOWN_POS
    order: int = 0  # position in the loaded stream; the tie-breaker when timestamps are absent

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    meta: Meta
    action: Action = Action.ALLOW
    selector: Mapping[str, str] | None = field(default=None, compare=False)
    target_refs: tuple[TargetRef, ...] = ()
    provider: str | None = None
    rules: tuple[Rule, ...] | None = None
    api_version: str = "security.istio.io/v1"

    @property
    def dry_run(self) -> bool:
        # Istio parses the annotation with Go's strconv.ParseBool.
        return self.meta.annotations.get(DRY_RUN_ANNOTATION, "") in ("1", "t", "T", "true", "TRUE", "True")


@dataclass(frozen=True, slots=True)
class PortMtls:
    port: int
    mode: MtlsMode
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    meta: Meta
    selector: Mapping[str, str] | None = field(default=None, compare=False)
    mode: MtlsMode | None = None  # None: `mtls` absent, same as UNSET
    port_level: tuple[PortMtls, ...] = ()
    api_version: str = "security.istio.io/v1"


@dataclass(frozen=True, slots=True)
class JwtHeader:
    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header: str
    claim: str


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    jwks_uri: str = ""
    jwks: str = ""
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    forward_original_token: bool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    timeout_seconds: float | None = None
    space_delimited_claims: tuple[str, ...] = ()
    pos: Pos = UNKNOWN_POS


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    meta: Meta
    selector: Mapping[str, str] | None = field(default=None, compare=False)
    target_refs: tuple[TargetRef, ...] = ()
    jwt_rules: tuple[JwtRule, ...] = ()
    api_version: str = "security.istio.io/v1"


@dataclass(frozen=True, slots=True)
class Workload:
    """The workload a sidecar protects: what policy scoping looks at."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class PolicySet:
    authorization: tuple[AuthorizationPolicy, ...] = ()
    peer_authentication: tuple[PeerAuthentication, ...] = ()
    request_authentication: tuple[RequestAuthentication, ...] = ()
    skipped: tuple[tuple[str, Pos], ...] = ()  # (kind, where) of non-security documents ignored

    def merged(self, other: PolicySet) -> PolicySet:
        return PolicySet(self.authorization + other.authorization,
                         self.peer_authentication + other.peer_authentication,
                         self.request_authentication + other.request_authentication,
                         self.skipped + other.skipped)


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """An absent or empty selector matches every workload; otherwise every label must match."""
    if not selector:
        return True
    return all(labels.get(k) == v for k, v in selector.items())


def applies_to(namespace: str, selector: Mapping[str, str] | None, workload: Workload, root_namespace: str) -> bool:
    """AuthorizationPolicy/RequestAuthentication scoping: root namespace is mesh-wide, else same namespace."""
    if namespace != root_namespace and namespace != workload.namespace:
        return False
    return selector_matches(selector, workload.labels)
