"""The `secmesh` command: a root group whose subcommands are imported lazily.

Lazy loading keeps `secmesh spiffe parse` or `secmesh policy lint` from paying for grpc,
uvloop and the Envoy protos at start-up; each group module imports only what it needs.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from secmesh import __version__

# name -> "module:attribute"; one module per group so that groups evolve independently.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ca": ("secmesh.cli.ca", "Certificate authority: init, issue, serve, list, revoke, crl, bundle, rotate."),
    "spiffe": ("secmesh.cli.spiffe", "SPIFFE ID tools."),
    "svid": ("secmesh.cli.svid", "X.509-SVID tools."),
    "policy": ("secmesh.cli.policy", "Istio AuthorizationPolicy tools: check, lint, test, diff."),
    "agent": ("secmesh.cli.agent", "Node agent: SDS v3 and SPIFFE Workload API on a Unix socket."),
    "sidecar": ("secmesh.cli.sidecar", "The mTLS sidecar proxy."),
    "inject": ("secmesh.cli.inject", "Add the secmesh sidecar to Kubernetes workload manifests (like istioctl kube-inject)."),
    "demo": ("secmesh.cli.demo", "Run the whole path on loopback: CA, agent, two sidecars, allowed, denied, rotation."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None:
            return None
        try:
            module = importlib.import_module(entry[0])
        except ModuleNotFoundError as exc:
            if exc.name == entry[0]:
                return _not_yet(cmd_name, entry[1])
            raise
        return getattr(module, "cli")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table so `secmesh --help` imports no group module.
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _not_yet(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def placeholder(args: tuple[str, ...]) -> None:
        raise click.UsageError(f"`secmesh {name}` is not available in this build")

    return placeholder


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="secmesh")
def cli() -> None:
    """secmesh: SPIFFE identity, Envoy SDS v3 and Istio authorization in front of any service."""


def main(argv: list[str] | None = None) -> None:
    # grpc C-core prints INFO noise on normal shutdowns (pitfall P6) unless told otherwise.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="secmesh")
