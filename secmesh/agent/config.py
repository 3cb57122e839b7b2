"""`secmesh agent` configuration: one frozen dataclass per section, defaults as istio-agent users expect.

Loaded with `secmesh.configfile.load_config` (defaults < `configs/agent.yaml` < `SECMESH_AGENT_*`
env < flags). The env prefix carries `AGENT_` so that `SECMESH_AGENT_CA_ADDRESS` can never be
confused with a setting of `secmesh ca serve` running in the same environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from secmesh.configfile import Duration

ENV_PREFIX = "SECMESH_AGENT_"
UNKNOWN_RESOURCE_POLICIES = ("istio", "reject")


def _parse_mode(text: str | int) -> int:
    """`0660`, `660` or `0o660` → 0o660, whichever way YAML typed it.

    YAML 1.2 reads a bare `0660` as the decimal 660, so digits are always read as octal; a YAML
    `0o660` arrives as ruamel's OctalInt (value 432), which already is the mode.
    """
    if isinstance(text, int) and type(text).__name__ == "OctalInt":
        text = format(int(text), "o")
    s = str(text).strip().lower().removeprefix("0o")
    if not s or any(c not in "01234567" for c in s):
        raise ValueError(f"socket mode must be octal like 0660, got {text!r}")
    mode = int(s, 8)
    if mode > 0o777:
        raise ValueError(f"socket mode {text!r} is out of range (max 0777)")
    return mode


@dataclass(frozen=True)
class SocketConfig:
    path: Path = Path("/var/run/secrets/workload-spiffe-uds/socket")
    mode: str | int = "0660"  # octal; normalized to a string like "0660"; read it through `mode_bits`

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", format(_parse_mode(self.mode), "04o"))

    @property
    def mode_bits(self) -> int:
        return _parse_mode(self.mode)


@dataclass(frozen=True)
class CaConfig:
    address: str = "istiod.istio-system.svc:15012"
    root: Path = Path("/var/run/secrets/istio/root-cert.pem")
    server_name: str = ""
    timeout: Duration = Duration(10)
    backoff_initial: Duration = Duration(1)
    backoff_max: Duration = Duration(30)

    def __post_init__(self) -> None:
        if not self.address or ":" not in self.address:
            raise ValueError(f"ca.address must be HOST:PORT, got {self.address!r}")
        if self.timeout <= 0 or self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("ca.timeout and ca.backoff_initial must be > 0 and ca.backoff_max >= ca.backoff_initial")


@dataclass(frozen=True)
class IdentityConfig:
    trust_domain: str = "cluster.local"
    ttl: Duration = Duration(24 * 3600)
    rotation_fraction: float = 0.5
    rotation_jitter: float = 0.01
    jwt_svid_ttl: Duration = Duration(300)

    def __post_init__(self) -> None:
        from secmesh.identity.spiffe import TrustDomain

        TrustDomain.parse(self.trust_domain)
        if self.ttl < 1:
            raise ValueError("identity.ttl must be at least 1s")
        if not 0.0 < self.rotation_fraction < 1.0:
            raise ValueError("identity.rotation_fraction must be within (0, 1)")
        if not 0.0 <= self.rotation_jitter < self.rotation_fraction:
            raise ValueError("identity.rotation_jitter must be within [0, rotation_fraction)")
        if self.jwt_svid_ttl < 1:
            raise ValueError("identity.jwt_svid_ttl must be at least 1s")


@dataclass(frozen=True)
class TokenConfig:
    file: str = "/var/run/secrets/tokens/istio-token"
    jwks: str = "/var/run/secrets/tokens/jwks.json"
    issuers: list[str] = field(default_factory=list)
    audiences: list[str] = field(default_factory=lambda: ["istio-ca"])
    leeway: Duration = Duration(30)

    def __post_init__(self) -> None:
        if not self.jwks:
            raise ValueError("token.jwks must name a JWKS file or URL (tokens are validated locally)")
        if not self.audiences:
            raise ValueError("token.audiences must not be empty")


@dataclass(frozen=True)
class SdsConfig:
    enabled: bool = True
    unknown_resource: str = "istio"

    def __post_init__(self) -> None:
        if self.unknown_resource not in UNKNOWN_RESOURCE_POLICIES:
            raise ValueError(f"sds.unknown_resource must be one of {', '.join(UNKNOWN_RESOURCE_POLICIES)}")


@dataclass(frozen=True)
class WorkloadApiConfig:
    enabled: bool = True


@dataclass(frozen=True)
class AdminConfig:
    address: str = "127.0.0.1:15020"

    def __post_init__(self) -> None:
        if self.address:
            host, _, port = self.address.rpartition(":")
            if host not in ("127.0.0.1", "localhost", "::1", "[::1]") or not port.isdigit():
                raise ValueError(f"admin.address must be a loopback HOST:PORT, got {self.address!r}")


@dataclass(frozen=True)
class AgentConfig:
    socket: SocketConfig = field(default_factory=SocketConfig)
    ca: CaConfig = field(default_factory=CaConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    token: TokenConfig = field(default_factory=TokenConfig)
    sds: SdsConfig = field(default_factory=SdsConfig)
    workload_api: WorkloadApiConfig = field(default_factory=WorkloadApiConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")
        if not (self.sds.enabled or self.workload_api.enabled):
            raise ValueError("at least one of sds.enabled and workload_api.enabled must be true")


def load(path: str | Path | None, flags: dict | None = None, env: dict[str, str] | None = None) -> AgentConfig:
    from secmesh.configfile import load_config

    return load_config(AgentConfig, path, env=env, env_prefix=ENV_PREFIX, flags=flags)
