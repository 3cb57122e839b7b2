"""Pure: the Envoy `tls.v3.Secret` messages for `default` and `ROOTCA`, as istio-agent builds them.

`toEnvoySecret` in istio's `sdsservice.go` sends the chain and key as `DataSource.inline_bytes` PEM
and the roots as `validation_context.trusted_ca.inline_bytes`; SPIRE does the same. Which name
gets which kind follows istio-agent's `GenerateSecret`: `ROOTCA` is the trust bundle, and *any
other* name is answered with the workload key and certificate under the requested name (istio
serves its own workload cert for names it does not know). `file-cert:`/`file-root:` names would
make istio-agent read files from its own disk; an agent serving many workloads must not read
files on a UDS peer's say-so, so those are refused. With `unknown_resource: reject` every name
other than `default`/`ROOTCA` is refused instead, as SPIRE does.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from google.protobuf import any_pb2

from secmesh.agent.cache import KEY_CERT, ROOTS
from secmesh.agent.material import Material, Roots
from secmesh.errors import SdsError

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
FILE_PREFIXES = ("file-cert:", "file-root:")
MAX_NAME_LEN = 256


def resource_kind(name: str, unknown_policy: str = "istio") -> str:
    """`KEY_CERT` or `ROOTS` for a requested resource name; SdsError(`unknown_resource`) if refused."""
    if name == ROOTS:
        return ROOTS
    if name == KEY_CERT:
        return KEY_CERT
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable():
        raise SdsError(f"invalid resource name {name[:64]!r}", reason="malformed_request")
    if name.startswith(FILE_PREFIXES):
        raise SdsError(f"resource {name!r}: file-based secrets are not served to UDS peers",
                       reason="unknown_resource")
    if unknown_policy == "reject":
        raise SdsError(f"workload is not entitled to resource {name!r} (known: {KEY_CERT}, {ROOTS})",
                       reason="unknown_resource")
    return KEY_CERT


def check_names(names: list[str] | tuple[str, ...], unknown_policy: str = "istio") -> dict[str, str]:
    """name → kind for every requested name (all-or-nothing, like istio's `generate`)."""
    return {name: resource_kind(name, unknown_policy) for name in names}


def tls_certificate_secret(name: str, material: Material) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_bytes=material.chain_pem),
        private_key=base_pb2.DataSource(inline_bytes=material.key_pem)))


def validation_context_secret(name: str, roots: Roots) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_bytes=roots.pem)))


class SecretEncoder:
    """Packs secrets into `Any`, memoized per (name, material/roots version).

    A push to 1,000 streams of one identity then serializes the key and chain once. The memo is
    keyed by version (unique per process), so a stale entry can never be served after a rotation;
    it is bounded by clearing it when it grows past a few thousand entries.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str, int], any_pb2.Any] = {}

    def encode(self, name: str, kind: str, material: Material | None, roots: Roots) -> any_pb2.Any:
        if kind == ROOTS:
            key = (name, kind, roots.version)
        else:
            assert material is not None
            key = (name, kind, material.version)  # versions are unique per process
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        secret = validation_context_secret(name, roots) if kind == ROOTS else tls_certificate_secret(name, material)
        packed = any_pb2.Any()
        packed.Pack(secret)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = packed
        return packed
