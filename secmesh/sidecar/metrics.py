"""The sidecar's Prometheus metrics, registered on the one `secmesh.metrics.REGISTRY`.

Label children are bound once and cached (pitfall P17): the data path only ever calls
`.inc()` on a child it already holds, never `.labels()`.

With `--workers N` (N > 1) the values live in prometheus_client's multiprocess files
(`worker_state`), and each gauge's `multiprocess_mode` says how worker 0's `/metrics` combines
the workers: open connections are summed over the living workers, readiness, certificate
expiry and policy version are the worst living worker's (min). Counters are always summed.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Gauge

from secmesh.metrics import REGISTRY

CONNECTIONS = Counter(
    "secmesh_sidecar_connections", "Downstream connections by listener and result "
    "(accepted, refused_limit, refused_plaintext, handshake_failed, denied, upstream_failed, closed).",
    ["listener", "result"], registry=REGISTRY)
ACTIVE = Gauge("secmesh_sidecar_active_connections", "Connections currently open, by listener.",
               ["listener"], registry=REGISTRY, multiprocess_mode="livesum")
HANDSHAKE_FAILURES = Counter(
    "secmesh_sidecar_handshake_failures", "TLS handshakes that failed, by listener and reason.",
    ["listener", "reason"], registry=REGISTRY)
AUTHZ = Counter(
    "secmesh_sidecar_authz_decisions", "Connection-time (L4) authorization decisions, by listener, decision "
    "(allow, deny), reason (closed set) and the policy that decided (`ns[..]-policy[..]-rule[..]`, "
    "a PeerAuthentication, an allow list, or empty).", ["listener", "decision", "reason", "policy"],
    registry=REGISTRY)
AUTHZ_DRY_RUN = Counter(
    "secmesh_sidecar_authz_dry_run", "What dry-run (istio.io/dry-run) policies would have decided at connection "
    "time, by listener, dry-run action, result and policy; never enforced.",
    ["listener", "action", "result", "policy"], registry=REGISTRY)
POLICY_RELOADS = Counter("secmesh_sidecar_policy_reloads", "Policy file reloads by result (applied, rejected).",
                         ["result"], registry=REGISTRY)
POLICY_VERSION = Gauge("secmesh_sidecar_policy_version", "Version of the policy set in force (1 = loaded at start).",
                       registry=REGISTRY, multiprocess_mode="livemin")
TLS_RESUMED = Counter(
    "secmesh_sidecar_tls_resumed", "Handshakes that resumed a TLS session (ticket) instead of a full handshake, "
    "by listener (inbound: as server, outbound: as client).", ["listener"], registry=REGISTRY)
BYTES = Counter(
    "secmesh_sidecar_bytes", "Bytes forwarded, by listener and direction (upstream = towards the "
    "listener's upstream, downstream = back to the client).", ["listener", "direction"], registry=REGISTRY)
CERT_EXPIRY = Gauge(
    "secmesh_sidecar_cert_expiry_seconds", "Seconds until the held certificate expires (kind = leaf or root; "
    "for the root, the earliest-expiring authority).", ["kind"], registry=REGISTRY,
    multiprocess_mode="livemin")
CERT_UPDATES = Counter(
    "secmesh_sidecar_cert_updates", "Certificate material updates by source and result "
    "(applied, rejected).", ["source", "result"], registry=REGISTRY)
SDS_UPDATES = Counter("secmesh_sidecar_sds_updates", "SDS responses ACKed.", registry=REGISTRY)
SDS_NACKS = Counter("secmesh_sidecar_sds_nacks", "SDS responses NACKed, by reason.", ["reason"],
                    registry=REGISTRY)
SDS_DISCONNECTS = Counter("secmesh_sidecar_sds_disconnects",
                          "SDS streams lost or failed to open (agent down); the last good cert is kept.",
                          registry=REGISTRY)
READY = Gauge("secmesh_sidecar_ready", "1 when a certificate is held and listeners accept.", registry=REGISTRY,
              multiprocess_mode="livemin")


@lru_cache(maxsize=None)
def connections(listener: str, result: str) -> Counter:
    return CONNECTIONS.labels(listener, result)


@lru_cache(maxsize=None)
def active(listener: str) -> Gauge:
    return ACTIVE.labels(listener)


@lru_cache(maxsize=None)
def handshake_failures(listener: str, reason: str) -> Counter:
    return HANDSHAKE_FAILURES.labels(listener, reason)


@lru_cache(maxsize=4096)
def authz(listener: str, decision: str, reason: str, policy: str) -> Counter:
    return AUTHZ.labels(listener, decision, reason, policy)


@lru_cache(maxsize=4096)
def authz_dry_run(listener: str, action: str, result: str, policy: str) -> Counter:
    return AUTHZ_DRY_RUN.labels(listener, action, result, policy)


@lru_cache(maxsize=None)
def policy_reloads(result: str) -> Counter:
    return POLICY_RELOADS.labels(result)


@lru_cache(maxsize=None)
def tls_resumed(listener: str) -> Counter:
    return TLS_RESUMED.labels(listener)


@lru_cache(maxsize=None)
def bytes_counter(listener: str, direction: str) -> Counter:
    return BYTES.labels(listener, direction)


@lru_cache(maxsize=None)
def cert_updates(source: str, result: str) -> Counter:
    return CERT_UPDATES.labels(source, result)


@lru_cache(maxsize=None)
def sds_nacks(reason: str) -> Counter:
    return SDS_NACKS.labels(reason)


# -- protocol: auto (protocol detection; appended block, owned by the auto-protocol change) -------------------

PROTOCOL_DETECTED = Counter(
    "secmesh_sidecar_protocol_detected", "Connections of `protocol: auto` listeners by detected protocol "
    "(http1, http2: by ALPN or first bytes; tcp: other first bytes or EOF; timeout_tcp: nothing conclusive "
    "within `protocol_detection_timeout`).", ["listener", "protocol"], registry=REGISTRY)


@lru_cache(maxsize=None)
def protocol_detected(listener: str, protocol: str) -> Counter:
    return PROTOCOL_DETECTED.labels(listener, protocol)
