"""`secmesh spiffe …`: SPIFFE ID tools for scripts (JSON on stdout, the verdict in the exit code).

Exit codes: 0 valid, 1 invalid, 2 usage error (click's own). The output is one JSON object per
call so a shell pipeline can use `jq` or just `$?`.
"""

from __future__ import annotations

import json
import sys

import click

from secmesh.identity.spiffe import InvalidSpiffeId, SpiffeId


@click.group(name="spiffe")
def cli() -> None:
    """SPIFFE ID tools."""


@cli.command("parse")
@click.argument("spiffe_id")
def parse_cmd(spiffe_id: str) -> None:
    """Validate SPIFFE_ID against the SPIFFE-ID standard and print its parts.

    Prints {"valid": true, "trust_domain": …, "path": …} (path "" for a trust domain's own ID)
    and exits 0, or {"valid": false, "error": …} and exits 1. Nothing is normalised: the ID is
    judged exactly as given.
    """
    try:
        parsed = SpiffeId.parse(spiffe_id)
    except InvalidSpiffeId as exc:
        click.echo(json.dumps({"valid": False, "error": exc.message}))
        sys.exit(1)
    click.echo(json.dumps({"valid": True, "trust_domain": parsed.trust_domain.name, "path": parsed.path}))
