"""`secmesh inject`: add the secmesh sidecar to Kubernetes manifests, like `istioctl kube-inject`.

    secmesh inject -f deployment.yaml                      # result on stdout
    secmesh inject -f deployment.yaml -o injected.yaml     # or into a file
    kubectl get deploy web -o yaml | secmesh inject -f - | kubectl apply -f -

Exit codes: 0 done, 2 bad input (unreadable file, not YAML, not a Kubernetes object); the
message names `file:line:col` where it can, and no traceback is ever shown for bad input.
The core is `secmesh.inject` (pure); this module only reads, writes and reports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


def _fail(message: str) -> None:
    click.echo(f"secmesh inject: {message}", err=True)
    sys.exit(2)


def _read(filename: str) -> tuple[str, str]:
    """(text, name used in messages)."""
    if filename == "-":
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        try:
            data, name = Path(filename).read_bytes(), filename
        except IsADirectoryError:
            _fail(f"{filename}: is a directory (give one manifest file, or - for stdin)")
        except OSError as exc:
            _fail(f"{filename}: cannot read: {exc.strerror or exc}")
    try:
        return data.decode("utf-8-sig"), name
    except UnicodeDecodeError as exc:
        _fail(f"{name}: not UTF-8 text (byte {exc.start})")
    raise AssertionError("unreachable")


def _write(out: str, text: str) -> None:
    if out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)  # readers never see half a manifest
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _fail(f"{out}: cannot write: {exc.strerror or exc}")


@click.command(name="inject", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--filename", required=True, metavar="FILE",
              help="Manifest file (multi-document YAML; - reads stdin).")
@click.option("-o", "--output", "output", default="-", show_default=True, metavar="FILE",
              help="Where to write the result (- is stdout).")
@click.option("--image", default=None, metavar="IMAGE", help="Sidecar image [secmesh:<version>].")
@click.option("--config-map", "config_map", default=None, metavar="NAME",
              help="ConfigMap holding sidecar.yaml, unless the pod template's "
                   "`sidecar.secmesh.io/config-map` annotation names another [secmesh-sidecar].")
@click.option("--socket-host-path", default=None, metavar="DIR",
              help="Node directory of the agent's socket (the agent DaemonSet's hostPath) [/run/secmesh/sockets].")
@click.option("-q", "--quiet", is_flag=True, help="No per-object summary on stderr.")
def cli(filename: str, output: str, image: str | None, config_map: str | None, socket_host_path: str | None,
        quiet: bool) -> None:
    """Add the secmesh sidecar to the workloads in a manifest and print the result.

    Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs, CronJobs,
    Pods and Lists of them get the sidecar container, the agent socket volume, a projected
    service-account token (audience istio-ca) and the sidecar config volume. Everything else
    passes through unchanged. Running it again changes nothing; the pod annotation
    `sidecar.secmesh.io/inject: "false"` opts a workload out.
    """
    from secmesh.inject import InjectError, InjectSettings, inject_stream

    defaults = InjectSettings()
    settings = InjectSettings(image=image or defaults.image, config_map=config_map or defaults.config_map,
                              socket_host_path=socket_host_path or defaults.socket_host_path)
    text, name = _read(filename)
    try:
        result, outcomes = inject_stream(text, settings, source=name)
    except InjectError as exc:
        _fail(exc.message)
    except RecursionError:
        _fail(f"{name}: the YAML is nested too deeply")
    except Exception as exc:  # noqa: BLE001 - a bug must still end in one line, not a traceback
        click.echo(f"secmesh inject: internal error on {name}: {type(exc).__name__}: {exc} (please report)", err=True)
        sys.exit(1)
    _write(output, result)
    if not quiet:
        for o in outcomes:
            if o.action != "passthrough":
                detail = f" ({o.detail})" if o.detail else ""
                click.echo(f"{o.kind}/{o.name or '<unnamed>'}: {o.action}{detail}", err=True)
