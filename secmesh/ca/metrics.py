"""The CA's Prometheus metrics, on the one `secmesh.metrics.REGISTRY`.

Rejection reasons form a closed set (token reasons + CSR reasons + TTL), so label children are
bound once up front (pitfall P17) and the label set cannot grow with attacker input.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from secmesh.identity.tokens import TOKEN_REASONS
from secmesh.metrics import REGISTRY

REJECTION_REASONS = (*(f"token_{r}" for r in TOKEN_REASONS), "malformed_csr", "bad_csr_signature",
                     "unsupported_key", "ttl_too_long", "internal")

ISSUED = Counter("secmesh_ca_certificates_issued_total", "Leaf certificates signed by the CA.",
                 registry=REGISTRY)
REJECTED = Counter("secmesh_ca_requests_rejected_total", "CreateCertificate requests refused, by reason.",
                   ["reason"], registry=REGISTRY)
SIGN_SECONDS = Histogram("secmesh_ca_sign_seconds", "Time to validate, sign and log one request.",
                         buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                         registry=REGISTRY)
LEDGER_BATCH = Histogram("secmesh_ca_ledger_batch_size", "Issuance records committed per transaction.",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)
ROOT_EXPIRY = Gauge("secmesh_ca_root_expiry_seconds", "Seconds until the current root expires.",
                    registry=REGISTRY)
INTERMEDIATE_EXPIRY = Gauge("secmesh_ca_intermediate_expiry_seconds",
                            "Seconds until the issuing intermediate expires.", registry=REGISTRY)
SERVER_CERT_EXPIRY = Gauge("secmesh_ca_server_cert_expiry_seconds",
                           "Seconds until the CA's own TLS serving certificate expires.", registry=REGISTRY)

RELOADS = Counter("secmesh_ca_reloads_total", "CA material reloads after `ca rotate` (or a root leaving the bundle).",
                  ["result"], registry=REGISTRY)
# kept by the parent of `ca serve --workers N`; every other metric is summed over the workers (gauges: minimum)
WORKERS = Gauge("secmesh_ca_workers", "Worker processes serving CreateCertificate and ready.", registry=REGISTRY)
WORKER_RESTARTS = Counter("secmesh_ca_worker_restarts_total", "Worker processes restarted after an unexpected exit.",
                          registry=REGISTRY)
PARENT_FAMILIES = frozenset({"secmesh_ca_workers", "secmesh_ca_worker_restarts"})

_reload_children = {result: RELOADS.labels(result=result) for result in ("ok", "error")}
_rejected_children = {reason: REJECTED.labels(reason=reason) for reason in REJECTION_REASONS}


def rejected(reason: str) -> None:
    child = _rejected_children.get(reason) or _rejected_children["internal"]
    child.inc()


def reloaded(ok: bool) -> None:
    _reload_children["ok" if ok else "error"].inc()
