"""CA settings: durations, defaults, and the `ca serve` configuration (file < env < flags).

Defaults follow istiod: leaf TTL 24h, max 90 days, self-signed root 10 years. Durations are
written as `24h`, `90d`, `30m`, `10s` (or combined, `1h30m`) everywhere: flags, env, YAML.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from secmesh.configfile import Duration, load_config, parse_duration
from secmesh.errors import ConfigError

DEFAULT_CA_DIR = Path("ca/dev")
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_LEAF_TTL = _dt.timedelta(hours=24)
DEFAULT_MAX_TTL = _dt.timedelta(days=90)
DEFAULT_ROOT_TTL = _dt.timedelta(days=3650)
DEFAULT_INTERMEDIATE_TTL = _dt.timedelta(days=1825)
DEFAULT_SERVER_CERT_TTL = _dt.timedelta(hours=24)
CLOCK_SKEW = _dt.timedelta(minutes=2)  # istio's ClockSkewGracePeriod: NotBefore is backdated by this
DEFAULT_AUDIENCE = "istio-ca"
CA_SERVICE_ACCOUNT = ("istio-system", "secmesh-ca")  # the serving cert's SPIFFE ID: /ns/istio-system/sa/secmesh-ca


def parse_ttl(text: str | int | float | _dt.timedelta, *, what: str = "duration") -> _dt.timedelta:
    """`24h` / `90d` / `30m` / `10s` / `1h30m` / seconds → timedelta; a clear ConfigError otherwise."""
    if isinstance(text, _dt.timedelta):
        return text
    try:
        return _dt.timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}", field=what) from None


def format_ttl(delta: _dt.timedelta) -> str:
    """The shortest exact `90d` / `24h` / `30m` / `10s` spelling (what error messages quote)."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_hostport(text: str, *, what: str = "address") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}", field=what)
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ServeConfig:
    """Everything `secmesh ca serve` needs; each field is also SECMESH_CA_<FIELD> and a flag."""

    dir: Path = DEFAULT_CA_DIR
    listen: str = "127.0.0.1:15012"
    jwks: str = ""
    # lists, not tuples: configfile re-validates `dataclasses.asdict()` output, which keeps tuples as tuples
    issuers: list[str] = field(default_factory=list)
    audiences: list[str] = field(default_factory=lambda: [DEFAULT_AUDIENCE])
    default_ttl: Duration = Duration(DEFAULT_LEAF_TTL.total_seconds())
    max_ttl: Duration = Duration(DEFAULT_MAX_TTL.total_seconds())
    admin: str = ""
    server_cert_ttl: Duration = Duration(DEFAULT_SERVER_CERT_TTL.total_seconds())
    grace_seconds: float = 5.0
    token_leeway_seconds: int = 30
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.default_ttl <= 0 or self.max_ttl <= 0:
            raise ValueError("`default_ttl` and `max_ttl` must be positive")
        if self.default_ttl > self.max_ttl:
            raise ValueError("`default_ttl` must not exceed `max_ttl`")
        if not self.audiences:
            raise ValueError("`audiences` must not be empty")
        parse_hostport(self.listen, what="listen")
        if self.admin:
            parse_hostport(self.admin, what="admin")


def load_serve_config(path: Path | str | None, flags: dict) -> ServeConfig:
    config = load_config(ServeConfig, path, env_prefix="SECMESH_CA_", flags=flags)
    if not config.jwks:
        raise ConfigError("`jwks` is required: --jwks FILE_OR_URL, SECMESH_CA_JWKS or `jwks:` in the config file",
                          field="jwks")
    return config
