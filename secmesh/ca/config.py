"""CA settings: durations, defaults, and the `ca serve` configuration (file < env < flags).

Defaults follow istiod: leaf TTL 24h, max 90 days, self-signed root 10 years. Durations are
written as `24h`, `90d`, `30m`, `10s` (or combined, `1h30m`) everywhere: flags, env, YAML.
"""

from __future__ import annotations

import datetime as _dt
import os
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
CA_SERVICE_ACCOUNT = ("istio-system", "secmesh-ca")  # default serving-cert SPIFFE ID: /ns/istio-system/sa/secmesh-ca


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
    # 0 = one worker process per CPU this process may run on; 1 = serve in this process
    workers: int = 0
    # extra DNS SANs on the serving certificate (e.g. secmesh-ca.secmesh-system.svc)
    server_dns: list[str] = field(default_factory=list)
    # the serving certificate's SPIFFE ID is spiffe://TD/ns/<server_namespace>/sa/<server_service_account>;
    # an empty namespace means $POD_NAMESPACE, else istio-system
    server_namespace: str = ""
    server_service_account: str = CA_SERVICE_ACCOUNT[1]
    # for an https JWKS URL: a bearer-token file sent (re-read) on every fetch, and the CA bundle to trust
    jwks_token_file: str = ""
    jwks_ca: str = ""
    # how often the CA directory is checked for a `ca rotate`; 0 = never
    reload_interval: Duration = Duration(5.0)

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
        if self.workers < 0:
            raise ValueError("`workers` must be >= 0 (0 = one per CPU)")
        if self.reload_interval < 0:
            raise ValueError("`reload_interval` must be >= 0 (0 = off)")
        if (self.jwks_token_file or self.jwks_ca) and self.jwks and not self.jwks.startswith("https://"):
            raise ValueError("`jwks_token_file` and `jwks_ca` need an https:// `jwks` URL")

    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the CPUs this process may use (its affinity mask)."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    def server_identity(self, environ: dict[str, str] | None = None) -> tuple[str, str]:
        """(namespace, service account) of the serving certificate's SPIFFE ID."""
        env = os.environ if environ is None else environ
        return self.server_namespace or env.get("POD_NAMESPACE", "") or CA_SERVICE_ACCOUNT[0], \
            self.server_service_account


def load_serve_config(path: Path | str | None, flags: dict) -> ServeConfig:
    config = load_config(ServeConfig, path, env_prefix="SECMESH_CA_", flags=flags)
    if not config.jwks:
        raise ConfigError("`jwks` is required: --jwks FILE_OR_URL, SECMESH_CA_JWKS or `jwks:` in the config file",
                          field="jwks")
    return config
