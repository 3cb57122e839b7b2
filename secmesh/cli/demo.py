"""`secmesh demo`: the whole product on loopback in one unprivileged command (see `secmesh.demo`).

Exit status: 0 when every step did what it claims, 1 when one did not (or set-up failed),
130 when interrupted. `--json` prints one JSON document on stdout (human output moves to
stderr) for CI and the end-to-end test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(name="demo")
@click.option("--ttl", default="8s", show_default=True,
              help="Leaf certificate lifetime the agents request (rotation at half of it).")
@click.option("--rotations", default=1, show_default=True, type=click.IntRange(1, 5),
              help="Rotations each pod must go through while the request loop runs.")
@click.option("--keep", is_flag=True, help="Keep the temporary directory (configs, logs, final metrics).")
@click.option("--json", "json_mode", is_flag=True, help="Print a JSON result on stdout (progress goes to stderr).")
@click.option("--non-interactive", is_flag=True, help="No spinners (implied when output is not a terminal).")
@click.option("--client", type=click.Choice(["auto", "curl", "python"]), default="auto", show_default=True,
              help="HTTP client for the allowed/forbidden/plaintext steps (auto: curl if installed).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent of the temporary directory [$TMPDIR].")
@click.option("--netns", is_flag=True, help="Put each pod in its own network namespace joined by a veth pair "
              "(needs root and iproute2).")
def cli(ttl: str, rotations: int, keep: bool, json_mode: bool, non_interactive: bool, client: str,
        workdir: Path | None, netns: bool) -> None:
    """Run the whole path on loopback: CA, agents, sidecars; allowed, denied, plaintext, rotation."""
    from secmesh.configfile import parse_duration
    from secmesh.demo.runner import Options, run

    try:
        seconds = float(parse_duration(ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    if not 4 <= seconds <= 3600:
        raise click.BadParameter("must be between 4s and 1h", param_hint="--ttl")
    if netns:
        from secmesh.demo.netns import available

        usable, why = available()
        if not usable:
            raise click.UsageError(f"--netns {why}")
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    sys.exit(run(Options(ttl=ttl, rotations=rotations, keep=keep, json_mode=json_mode,
                         interactive=not non_interactive, client=client, workdir=workdir, netns=netns)))
