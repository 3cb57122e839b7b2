"""`secmesh ca …`: init, issue, serve, list, revoke, crl, bundle, rotate.

Each command is a thin shell over `secmesh.ca` (store, signer, ledger, crl, server). Every
command takes `--dir` (default `ca/dev`, env `SECMESH_CA_DIR`). Heavy imports (grpc, uvloop,
protos) happen inside `serve` only, so the offline commands start fast. Errors exit 1 with one
`error: …` line on stderr; usage errors exit 2 (click).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from secmesh.ca.config import (DEFAULT_CA_DIR, DEFAULT_INTERMEDIATE_TTL, DEFAULT_LEAF_TTL, DEFAULT_ROOT_TTL,
                               DEFAULT_TRUST_DOMAIN, format_ttl, parse_ttl)
from secmesh.clock import SYSTEM_CLOCK
from secmesh.errors import SecmeshError

_dir_option = click.option("--dir", "ca_dir", type=click.Path(path_type=Path), default=DEFAULT_CA_DIR,
                           envvar="SECMESH_CA_DIR", show_default=True, help="CA directory.")


def _handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SecmeshError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
    return wrapper


def _ttl(ctx: click.Context, param: click.Parameter, value: str | None) -> _dt.timedelta | None:
    if value is None:
        return None
    try:
        return parse_ttl(value, what=param.name or "duration")
    except SecmeshError as exc:
        raise click.BadParameter(exc.message) from None


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=None, separators=(", ", ": ")))


@click.group(name="ca")
def cli() -> None:
    """Certificate authority: init, issue, serve, list, revoke, crl, bundle, rotate."""


@cli.command()
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True, help="Trust domain of the CA.")
@_dir_option
@click.option("--root-ttl", default=format_ttl(DEFAULT_ROOT_TTL), callback=_ttl, show_default=True)
@click.option("--intermediate-ttl", default=format_ttl(DEFAULT_INTERMEDIATE_TTL), callback=_ttl, show_default=True)
@_handles_errors
def init(trust_domain: str, ca_dir: Path, root_ttl: _dt.timedelta, intermediate_ttl: _dt.timedelta) -> None:
    """Create an ECDSA P-256 root and the intermediate that signs leaves (never overwrites)."""
    from secmesh.ca.ledger import key_id
    from secmesh.ca.store import init_ca

    material = init_ca(ca_dir, trust_domain, now=SYSTEM_CLOCK.now(), root_ttl=root_ttl,
                       intermediate_ttl=intermediate_ttl)
    current = material.current
    _echo_json({"dir": str(ca_dir), "trust_domain": material.trust_domain.name,
                "root_not_after": current.root_cert.not_valid_after_utc.isoformat(),
                "intermediate_not_after": current.intermediate_cert.not_valid_after_utc.isoformat(),
                "root_kid": key_id(current.root_cert)})


@cli.command()
@click.argument("spiffe_id")
@_dir_option
@click.option("--ttl", default=format_ttl(DEFAULT_LEAF_TTL), callback=_ttl, show_default=True)
@click.option("--csr", "csr_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sign this CSR (PEM or DER) instead of generating a key.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for key.pem, cert-chain.pem, root-cert.pem.")
@_handles_errors
def issue(spiffe_id: str, ca_dir: Path, ttl: _dt.timedelta, csr_file: Path | None, out_dir: Path) -> None:
    """Sign one X.509-SVID for SPIFFE_ID offline (istio-agent file names)."""
    from secmesh.ca.offline import issue_to_directory

    _echo_json(issue_to_directory(ca_dir, spiffe_id, ttl=ttl, csr_file=csr_file, out_dir=out_dir,
                                  now=SYSTEM_CLOCK.now()))


@cli.command()
@_dir_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="SECMESH_CA_CONFIG", help="YAML file (see configs/ca.yaml); flags and env override it.")
@click.option("--listen", help="HOST:PORT of the gRPC TLS listener [127.0.0.1:15012].")
@click.option("--jwks", help="JWKS file or http(s) URL that verifies service-account tokens.")
@click.option("--issuer", "issuers", multiple=True, help="Accepted token issuer (repeatable; default: any).")
@click.option("--audience", "audiences", multiple=True, help="Accepted token audience (repeatable) [istio-ca].")
@click.option("--default-ttl", help="Leaf TTL when the request asks for none [24h].")
@click.option("--max-ttl", help="Largest TTL a request may ask for [90d].")
@click.option("--admin", help="HOST:PORT for plain-HTTP /metrics and /ready (loopback).")
@click.option("--workers", type=click.IntRange(min=0),
              help="Serving processes sharing the port via SO_REUSEPORT [0 = one per CPU; 1 = this process].")
@click.option("--server-dns", "server_dns", multiple=True,
              help="Extra DNS SAN on the CA's serving certificate (repeatable), e.g. secmesh-ca.secmesh-system.svc.")
@click.option("--server-namespace", help="Namespace in the serving certificate's SPIFFE ID "
                                         "[$POD_NAMESPACE, else istio-system].")
@click.option("--server-service-account", help="Service account in the serving certificate's SPIFFE ID [secmesh-ca].")
@click.option("--jwks-token-file", type=click.Path(dir_okay=False),
              help="Bearer token sent with every https JWKS fetch (re-read each time), e.g. "
                   "/var/run/secrets/kubernetes.io/serviceaccount/token.")
@click.option("--jwks-ca", type=click.Path(dir_okay=False),
              help="PEM bundle that verifies the https JWKS server (instead of the system store).")
@click.option("--reload-interval", help="How often to check the CA directory for `ca rotate` [5s; 0 = never].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@_handles_errors
def serve(ca_dir: Path, config_file: Path | None, listen: str | None, jwks: str | None, issuers: tuple[str, ...],
          audiences: tuple[str, ...], default_ttl: str | None, max_ttl: str | None, admin: str | None,
          workers: int | None, server_dns: tuple[str, ...], server_namespace: str | None,
          server_service_account: str | None, jwks_token_file: str | None, jwks_ca: str | None,
          reload_interval: str | None, log_level: str | None) -> None:
    """Serve istio.v1.auth.IstioCertificateService/CreateCertificate over TLS."""
    from secmesh import log
    from secmesh.ca.config import load_serve_config
    from secmesh.ca.server import run

    flags = {"listen": listen, "jwks": jwks, "issuers": list(issuers) or None,
             "audiences": list(audiences) or None, "default_ttl": default_ttl, "max_ttl": max_ttl,
             "admin": admin, "log_level": log_level, "workers": workers, "server_dns": list(server_dns) or None,
             "server_namespace": server_namespace, "server_service_account": server_service_account,
             "jwks_token_file": jwks_token_file, "jwks_ca": jwks_ca, "reload_interval": reload_interval}
    ctx = click.get_current_context()
    if ctx.get_parameter_source("ca_dir") != click.core.ParameterSource.DEFAULT:
        flags["dir"] = str(ca_dir)
    config = load_serve_config(config_file, flags)
    log.setup(config.log_level)
    run(config)


@cli.command(name="list")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.option("--limit", type=int, default=None, help="Newest N entries only.")
@_handles_errors
def list_(ca_dir: Path, as_json: bool, limit: int | None) -> None:
    """Show the issuance log (newest first)."""
    from secmesh.ca.offline import open_ledger

    with open_ledger(ca_dir) as ledger:
        records = ledger.entries(limit=limit)
    now = SYSTEM_CLOCK.now()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("serial", "spiffe id", "subject", "not after", "status")
    for r in records:
        status = f"revoked ({r.reason})" if r.revoked else ("expired" if r.not_after <= now else "valid")
        table.add_row(r.serial, r.spiffe_id, r.subject, r.not_after.strftime("%Y-%m-%d %H:%M:%SZ"), status)
    Console(width=200).print(table)


@cli.command()
@click.argument("serial")
@_dir_option
@click.option("--reason", default="unspecified", show_default=True,
              help="RFC 5280 reason: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, "
                   "cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.")
@_handles_errors
def revoke(serial: str, ca_dir: Path, reason: str) -> None:
    """Mark SERIAL (hex) revoked; it appears on the next `ca crl`."""
    from secmesh.ca.offline import open_ledger

    with open_ledger(ca_dir) as ledger:
        record = ledger.revoke(serial, reason, SYSTEM_CLOCK.now())
    _echo_json({"serial": record.serial, "spiffe_id": record.spiffe_id, "reason": record.reason,
                "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None})


@cli.command()
@_dir_option
@click.option("--generation", type=int, default=None,
              help="Sign for a retired generation's intermediate (its leaves) instead of the current one.")
@click.option("--next-update", default="24h", callback=_ttl, show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@_handles_errors
def crl(ca_dir: Path, generation: int | None, next_update: _dt.timedelta, out_file: Path | None) -> None:
    """Print a CRL (PEM) signed by the intermediate that issued the revoked leaves."""
    from secmesh.ca.offline import crl_pem

    data = crl_pem(ca_dir, generation=generation, next_update=next_update, now=SYSTEM_CLOCK.now())
    if out_file:
        from secmesh.identity.keys import write_atomic

        write_atomic(out_file, data)
    else:
        click.echo(data.decode(), nl=False)


@cli.command()
@_dir_option
@click.option("--format", "fmt", type=click.Choice(["pem", "jwks"]), default="pem", show_default=True)
@_handles_errors
def bundle(ca_dir: Path, fmt: str) -> None:
    """Print the trust bundle: every root still valid (PEM, or the SPIFFE bundle JWKS)."""
    from secmesh.ca.store import open_ca

    trust = open_ca(ca_dir).bundle(SYSTEM_CLOCK.now())
    if fmt == "pem":
        click.echo(trust.to_pem().decode(), nl=False)
    else:
        click.echo(json.dumps(trust.to_spiffe_jwks(), indent=2))


@cli.command()
@_dir_option
@click.option("--root-ttl", default=format_ttl(DEFAULT_ROOT_TTL), callback=_ttl, show_default=True)
@click.option("--intermediate-ttl", default=format_ttl(DEFAULT_INTERMEDIATE_TTL), callback=_ttl, show_default=True)
@_handles_errors
def rotate(ca_dir: Path, root_ttl: _dt.timedelta, intermediate_ttl: _dt.timedelta) -> None:
    """New root + intermediate; the old root stays in the bundle until it expires. A running `serve` follows."""
    from secmesh.ca.ledger import key_id
    from secmesh.ca.store import rotate_ca

    material = rotate_ca(ca_dir, now=SYSTEM_CLOCK.now(), root_ttl=root_ttl, intermediate_ttl=intermediate_ttl)
    _echo_json({"generation": material.current.number, "root_kid": key_id(material.current.root_cert),
                "bundle_roots": len(material.trusted_roots(SYSTEM_CLOCK.now()))})

