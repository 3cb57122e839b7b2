"""Clients the demo drives through the mesh, and readers for what the processes report.

- `http_get`: curl when it is installed (what a user would type), else Python's http.client.
- `mtls_probe`: a workload holding its own X.509-SVID dials a sidecar directly; returns what the
  server presented and whether the connection survived past the handshake (TLS 1.3 reports a
  refusal only on the first read: pitfall P8).
- `metric` / `log_lines`: Prometheus text and JSON log lines, parsed without side effects.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

CURL_ERRORS = {7: "connection refused", 28: "timeout", 52: "empty reply from server (connection closed)",
               56: "connection reset (recv failure)"}


@dataclass(frozen=True)
class HttpResult:
    client: str               # "curl" or "python"
    command: str              # what a user would type to do the same
    status: int               # HTTP status; 0 when no response arrived
    body: str
    error: str                # why no response arrived ("" when one did)
    head: str = ""            # status line and response headers as received ("" unless asked for)
    headers: dict[str, str] = field(default_factory=dict)   # lower-cased names ({} unless asked for)

    @property
    def ok(self) -> bool:
        return self.status == 200


def curl_path() -> str | None:
    return shutil.which("curl")


def parse_head(head: str) -> dict[str, str]:
    """Response headers (lower-cased names; repeated ones joined with ", ") from a raw head. Pure."""
    out: dict[str, str] = {}
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            key = name.strip().lower()
            out[key] = f"{out[key]}, {value.strip()}" if key in out else value.strip()
    return out


def http_get(url: str, headers: dict[str, str] | None = None, *, use_curl: bool = True,
             timeout: float = 5.0, include_head: bool = False) -> HttpResult:
    """GET `url`; with `include_head` the response head is kept too (shown as `curl -i` shows it)."""
    headers = headers or {}
    curl = curl_path() if use_curl else None
    hdr_args = [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]
    command = " ".join(["curl", "-sS", *(["-i"] if include_head else []),
                        *(f"-H '{k}: {v}'" for k, v in headers.items()), url])
    if curl:
        argv = [curl, "-sS", "--max-time", str(timeout), *(["-D", "-"] if include_head else []), "-o", "-",
                "-w", "\n%{http_code}", *hdr_args, url]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
        out, _, code = r.stdout.rpartition("\n")
        head, body = "", out
        if include_head:                     # text mode has turned the head's CRLFs into LFs already
            head, _, body = out.replace("\r\n", "\n").partition("\n\n")
        status = int(code) if code.isdigit() else 0
        error = "" if r.returncode == 0 else (f"curl exit {r.returncode}: "
                                              f"{CURL_ERRORS.get(r.returncode, r.stderr.strip())}")
        return HttpResult("curl", command, status, body, error, head, parse_head(head))
    return python_get(url, headers, timeout=timeout, command=command)


def python_get(url: str, headers: dict[str, str] | None = None, *, timeout: float = 5.0,
               command: str = "") -> HttpResult:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path, headers=headers or {})
        resp = conn.getresponse()
        head = "\n".join([f"HTTP/{resp.version / 10:.1f} {resp.status} {resp.reason}",
                          *(f"{k}: {v}" for k, v in resp.getheaders())])
        return HttpResult("python", command, resp.status, resp.read().decode(errors="replace"), "", head,
                          parse_head(head))
    except (OSError, http.client.HTTPException) as exc:
        why = "empty reply from server (connection closed)" if isinstance(exc, http.client.RemoteDisconnected) \
            else f"{type(exc).__name__}: {exc}"
        return HttpResult("python", command, 0, "", why)
    finally:
        conn.close()


@dataclass(frozen=True)
class MtlsProbe:
    handshake: bool
    server_id: str | None
    server_serial: str | None
    reply: bytes | None        # None: reset; b"": closed (EOF); else the first bytes answered
    error: str = ""

    @property
    def refused_after_handshake(self) -> bool:
        return self.handshake and not self.reply


def mtls_probe(host: str, port: int, chain: Path, key: Path, roots: Path, request: bytes,
               timeout: float = 5.0) -> MtlsProbe:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # SPIFFE server certs carry a URI SAN, checked below instead
    ctx.load_verify_locations(cafile=str(roots))
    ctx.load_cert_chain(str(chain), str(key))
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return MtlsProbe(False, None, None, None, f"connect: {exc}")
    try:
        try:
            tls = ctx.wrap_socket(raw, server_hostname=None)
        except (ssl.SSLError, OSError) as exc:
            return MtlsProbe(False, None, None, None, f"handshake: {exc}")
        with tls:
            der = tls.getpeercert(binary_form=True)
            cert = x509.load_der_x509_certificate(der) if der else None
            sid = serial = None
            if cert is not None:
                serial = format(cert.serial_number, "x")
                try:
                    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
                        .get_values_for_type(x509.UniformResourceIdentifier)
                    sid = uris[0] if uris else None
                except x509.ExtensionNotFound:
                    pass
            try:
                tls.sendall(request)
                reply: bytes | None = tls.recv(200)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                reply = None
            except socket.timeout:
                return MtlsProbe(True, sid, serial, None, "no answer (timeout)")
            return MtlsProbe(True, sid, serial, reply)
    finally:
        raw.close()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name` with its labels (label values without escapes, as ours are)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        base, _, rest = head.partition("{")
        if base != name:
            continue
        labels = {}
        for part in rest.rstrip("}").split('",'):
            k, sep, v = part.partition('="')
            if sep:
                labels[k.strip()] = v.rstrip('"')
        out.append((labels, float(value)))
    return out


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a process log (non-JSON lines are skipped)."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
