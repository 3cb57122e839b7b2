"""Pure parts of `ca serve --workers N` and of the CA reload: config, channel frames, metrics merge."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from secmesh.ca import workerlink
from secmesh.ca.config import ServeConfig
from secmesh.ca.metricsmerge import merge
from secmesh.ca.reload import build_issuing, check_consistent, fingerprint
from secmesh.ca.signer import TtlPolicy
from secmesh.ca.store import CaMaterial, rotate_ca
from secmesh.clock import FakeClock
from secmesh.errors import CAError
from secmesh.identity.keys import generate_p256

TTL = TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=90))


def test_config_workers_and_server_identity() -> None:
    config = ServeConfig(jwks="j.json", workers=3)
    assert config.worker_count() == 3
    assert ServeConfig(jwks="j.json").worker_count() >= 1
    assert config.server_identity({}) == ("istio-system", "secmesh-ca")
    assert config.server_identity({"POD_NAMESPACE": "secmesh-system"}) == ("secmesh-system", "secmesh-ca")
    explicit = ServeConfig(jwks="j.json", server_namespace="ca-ns", server_service_account="ca-sa")
    assert explicit.server_identity({"POD_NAMESPACE": "other"}) == ("ca-ns", "ca-sa")
    with pytest.raises(ValueError):
        ServeConfig(jwks="j.json", workers=-1)
    with pytest.raises(ValueError):
        ServeConfig(jwks="jwks.json", jwks_token_file="/t")


def test_config_survives_the_worker_channel() -> None:
    config = ServeConfig(dir=Path("/x/ca"), jwks="https://h/jwks", server_dns=["a.svc"], jwks_ca="/ca.pem",
                         issuers=["i"], reload_interval=0.5, workers=2)
    parent, child = socket.socketpair()
    with parent, child:
        parent.sendall(workerlink.encode(workerlink.CONFIG, workerlink.config_to_json(config)))
        kind, payload = workerlink.read_frame_blocking(child)
    assert kind == workerlink.CONFIG and workerlink.config_from_json(payload) == config


WORKER_A = """# HELP secmesh_ca_certificates_issued_total Leaf certificates signed by the CA.
# TYPE secmesh_ca_certificates_issued_total counter
secmesh_ca_certificates_issued_total 5.0
# HELP secmesh_ca_requests_rejected_total refused
# TYPE secmesh_ca_requests_rejected_total counter
secmesh_ca_requests_rejected_total{reason="token_missing"} 1.0
# HELP secmesh_ca_server_cert_expiry_seconds exp
# TYPE secmesh_ca_server_cert_expiry_seconds gauge
secmesh_ca_server_cert_expiry_seconds 100.0
# HELP secmesh_ca_sign_seconds t
# TYPE secmesh_ca_sign_seconds histogram
secmesh_ca_sign_seconds_bucket{le="0.001"} 2.0
secmesh_ca_sign_seconds_bucket{le="+Inf"} 5.0
secmesh_ca_sign_seconds_count 5.0
secmesh_ca_sign_seconds_sum 0.01
# HELP secmesh_ca_workers w
# TYPE secmesh_ca_workers gauge
secmesh_ca_workers 0.0
"""
WORKER_B = WORKER_A.replace(" 5.0", " 7.0").replace("} 1.0", "} 2.0").replace("seconds 100.0", "seconds 40.0")
PARENT = """# HELP secmesh_ca_workers w
# TYPE secmesh_ca_workers gauge
secmesh_ca_workers 2.0
# HELP secmesh_ca_certificates_issued_total Leaf certificates signed by the CA.
# TYPE secmesh_ca_certificates_issued_total counter
secmesh_ca_certificates_issued_total 0.0
"""


def test_metrics_merge_sums_counters_and_takes_the_lowest_expiry() -> None:
    text = merge([WORKER_A, WORKER_B], PARENT, frozenset({"secmesh_ca_workers"})).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("secmesh_ca_certificates_issued_total", ())] == 12
    assert samples[("secmesh_ca_requests_rejected_total", (("reason", "token_missing"),))] == 3
    assert samples[("secmesh_ca_server_cert_expiry_seconds", ())] == 40
    assert samples[("secmesh_ca_sign_seconds_bucket", (("le", "+Inf"),))] == 12
    assert samples[("secmesh_ca_sign_seconds_count", ())] == 12
    assert samples[("secmesh_ca_workers", ())] == 2  # the parent's, not the workers' zeros


def test_reload_parts(material: CaMaterial, clock: FakeClock) -> None:
    before = fingerprint(material.directory)
    issuing = build_issuing(material, TTL, clock.now())
    assert issuing.generation == 1 and not issuing.bundle_stale(clock.now())
    rotated = rotate_ca(material.directory, now=clock.now(), root_ttl=dt.timedelta(days=1))
    assert fingerprint(material.directory) != before
    new = build_issuing(rotated, TTL, clock.now())
    assert new.generation == 2 and len(new.bundle) == 2
    assert new.signer.chain_tail[-1].count("BEGIN CERTIFICATE") == 2
    assert build_issuing(rotated, TTL, clock.now() + dt.timedelta(hours=23)).bundle == new.bundle
    mismatched = CaMaterial(rotated.directory, rotated.trust_domain,
                            type(rotated.current)(2, rotated.current.root_cert, rotated.current.root_key,
                                                  rotated.current.intermediate_cert, generate_p256()),
                            rotated.roots)
    with pytest.raises(CAError) as err:
        check_consistent(mismatched)
    assert err.value.reason == "ca_inconsistent"
    assert fingerprint(material.directory / "nowhere") is None


def test_an_expired_old_root_leaves_the_bundle(tmp_path: Path, clock: FakeClock) -> None:
    from secmesh.ca.store import init_ca

    init_ca(tmp_path / "ca", "example.org", now=clock.now(), root_ttl=dt.timedelta(days=2),
            intermediate_ttl=dt.timedelta(days=1))
    rotated = rotate_ca(tmp_path / "ca", now=clock.now())
    issuing = build_issuing(rotated, TTL, clock.now())
    assert len(issuing.bundle) == 2 and not issuing.bundle_stale(clock.now() + dt.timedelta(days=1))
    later = clock.now() + dt.timedelta(days=3)  # no file changed, but the old root is past its not_after
    assert issuing.bundle_stale(later)
    assert build_issuing(rotated, TTL, later).bundle == (rotated.current.root_cert,)
