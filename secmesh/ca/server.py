"""`secmesh ca serve`: the composition root of the CA process.

Opens the CA directory (permissions checked), builds the validator, signer and ledger, issues
the CA's own TLS serving certificate from the same intermediate, and runs a grpc.aio server on
uvloop. The serving certificate is renewed at half its lifetime without a restart: grpc's
dynamic server credentials ask `ServingCert.fetch` on every new handshake. SIGTERM/SIGINT stop
the server gracefully (`await server.stop(grace)` before the loop closes, pitfall P6), then the
pending issuance records are committed and the ledger is closed.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import logging
import signal
from typing import Any

from cryptography import x509

from secmesh.ca import metrics
from secmesh.ca.config import CA_SERVICE_ACCOUNT, ServeConfig, parse_hostport
from secmesh.ca.ledger import IssuanceRecord, SqliteLedger, key_id
from secmesh.ca.recorder import BatchRecorder
from secmesh.ca.signer import Issued, Signer, TtlPolicy
from secmesh.ca.store import CaMaterial, open_ca
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.identity.keys import generate_p256, private_key_pem
from secmesh.identity.spiffe import SpiffeId
from secmesh.identity.tokens import TokenValidator, jwks_source
from secmesh.log import log_event

_log = logging.getLogger("secmesh.ca.server")


def serving_sans(listen_host: str) -> list[x509.GeneralName]:
    """DNS:localhost and IP:127.0.0.1 always, plus the listen host when it is a specific name or address."""
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(listen_host)
        if not ip.is_unspecified and ip != ipaddress.ip_address("127.0.0.1"):
            sans.append(x509.IPAddress(ip))
    except ValueError:
        if listen_host not in ("localhost", ""):
            sans.append(x509.DNSName(listen_host))
    return sans


class ServingCert:
    """The CA's own TLS certificate (SPIFFE ID `…/ns/istio-system/sa/secmesh-ca`), renewed at half-life."""

    def __init__(self, signer: Signer, material: CaMaterial, *, listen_host: str, ttl: _dt.timedelta,
                 clock: Clock) -> None:
        import grpc

        self._grpc = grpc
        self.signer = signer
        self.spiffe_id = SpiffeId.for_service_account(material.trust_domain, *CA_SERVICE_ACCOUNT)
        self.sans = serving_sans(listen_host)
        self.ttl = ttl
        self.clock = clock
        self.issued: Issued | None = None
        self._config: Any = None
        self._changed = False

    def renew(self) -> Issued:
        key = generate_p256()
        issued = self.signer.sign(key.public_key(), self.spiffe_id, now=self.clock.now(), ttl=self.ttl,
                                  extra_sans=self.sans)
        chain = (issued.leaf_pem + self.signer.chain_tail[0]).encode()  # leaf + intermediate; never the root
        self._config = self._grpc.ssl_server_certificate_configuration([(private_key_pem(key), chain)])
        self._changed = True
        self.issued = issued
        metrics.SERVER_CERT_EXPIRY.set((issued.not_after - self.clock.now()).total_seconds())
        return issued

    def fetch(self) -> Any:
        """grpc's certificate_configuration_fetcher: a new configuration once after each renewal, else None."""
        if self._changed:
            self._changed = False
            return self._config
        return None

    def credentials(self) -> Any:
        self.renew()
        self._changed = False
        return self._grpc.dynamic_ssl_server_credentials(self._config, self.fetch,
                                                         require_client_authentication=False)

    def seconds_until_renewal(self) -> float:
        assert self.issued is not None
        half = self.issued.not_before + (self.issued.not_after - self.issued.not_before) / 2
        return max(1.0, (half - self.clock.now()).total_seconds())


async def _renew_loop(serving: ServingCert, recorder: BatchRecorder, issuer_kid: str, clock: Clock) -> None:
    while True:
        await asyncio.sleep(serving.seconds_until_renewal())
        try:
            issued = serving.renew()
            await recorder.record(_own_record(issued, issuer_kid, clock))
            log_event(_log, logging.INFO, "serving certificate renewed", serial=issued.serial_hex,
                      not_after=issued.not_after.isoformat())
        except Exception as exc:  # noqa: BLE001 - keep serving with the current cert; retry soon
            log_event(_log, logging.ERROR, "serving certificate renewal failed", error=str(exc))
            await asyncio.sleep(30)


def _own_record(issued: Issued, issuer_kid: str, clock: Clock) -> IssuanceRecord:
    return IssuanceRecord(serial=issued.serial_hex, spiffe_id=str(issued.spiffe_id), subject="secmesh-ca",
                          issuer_kid=issuer_kid, not_before=issued.not_before, not_after=issued.not_after,
                          issued_at=clock.now())


async def serve(config: ServeConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
    import grpc

    from secmesh.ca.admin import start_admin
    from secmesh.ca.service import CertificateService, TokenCache
    from secmesh.proto import ca_pb2_grpc

    material = open_ca(config.dir)
    current = material.current
    validator = TokenValidator(jwks_source(config.jwks), trust_domain=material.trust_domain,
                               audiences=config.audiences, issuers=config.issuers or None, clock=clock,
                               leeway_seconds=config.token_leeway_seconds)
    ttl = TtlPolicy(_dt.timedelta(seconds=config.default_ttl), _dt.timedelta(seconds=config.max_ttl))
    signer = Signer(current.intermediate_cert, current.intermediate_key, root=current.root_cert, ttl=ttl)
    issuer_kid = key_id(current.intermediate_cert)
    ledger = SqliteLedger(material.ledger_path)
    recorder = BatchRecorder(ledger)
    recorder.start()
    now = clock.now()
    metrics.ROOT_EXPIRY.set((current.root_cert.not_valid_after_utc - now).total_seconds())
    metrics.INTERMEDIATE_EXPIRY.set((current.intermediate_cert.not_valid_after_utc - now).total_seconds())

    host, port = parse_hostport(config.listen, what="listen")
    serving = ServingCert(signer, material, listen_host=host, ttl=_dt.timedelta(seconds=config.server_cert_ttl),
                          clock=clock)
    credentials = serving.credentials()
    assert serving.issued is not None
    await recorder.record(_own_record(serving.issued, issuer_kid, clock))

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 1 << 20)])
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(
        CertificateService(signer, TokenCache(validator), recorder, issuer_kid=issuer_kid, clock=clock), server)
    bound = server.add_secure_port(config.listen, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    admin = None
    if config.admin:
        admin_host, admin_port = parse_hostport(config.admin, what="admin")
        admin = await start_admin(admin_host, admin_port, lambda: not stopping.is_set())
    renewer = loop.create_task(_renew_loop(serving, recorder, issuer_kid, clock), name="serving-cert-renewal")
    log_event(_log, logging.INFO, "CA serving", listen=config.listen, admin=config.admin or None,
              trust_domain=material.trust_domain.name, spiffe_id=str(serving.spiffe_id),
              default_ttl=config.default_ttl, max_ttl=config.max_ttl)
    try:
        await stopping.wait()
    finally:
        log_event(_log, logging.INFO, "CA stopping", grace_seconds=config.grace_seconds)
        renewer.cancel()
        await server.stop(config.grace_seconds)
        if admin is not None:
            admin.close()
            await admin.wait_closed()
        await recorder.close()
        ledger.close()


def run(config: ServeConfig) -> None:
    """Run `serve` on uvloop until a signal stops it."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
