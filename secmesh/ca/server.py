"""`secmesh ca serve`: one serving process (the whole CA, or one worker of `--workers N`).

Opens the CA directory (permissions checked), builds the validator, signer and ledger, issues
the CA's own TLS serving certificate from the same intermediate, and runs a grpc.aio server on
uvloop. The serving certificate is renewed at half its lifetime without a restart: grpc's
dynamic server credentials ask `ServingCert.fetch` on every new handshake. The CA directory is
polled for `ca rotate` (`reload`): a new generation swaps the signer and renews the serving
certificate, with no restart. SIGTERM/SIGINT stop the server gracefully (`await
server.stop(grace)` before the loop closes, pitfall P6), then the pending issuance records are
committed and the ledger is closed. As a worker (`link` given) it binds with SO_REUSEPORT, has
no admin port of its own and reports readiness and metrics to its parent (`supervisor`).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import logging
import os
import signal
from typing import Any, Sequence

from cryptography import x509

from secmesh.ca import metrics
from secmesh.ca.config import ServeConfig, parse_hostport
from secmesh.ca.ledger import IssuanceRecord, SqliteLedger
from secmesh.ca.recorder import BatchRecorder
from secmesh.ca.reload import Issuing, fingerprint, load_issuing
from secmesh.ca.signer import Issued, Signer, TtlPolicy
from secmesh.clock import SYSTEM_CLOCK, Clock
from secmesh.identity.keys import generate_p256, private_key_pem
from secmesh.identity.spiffe import SpiffeId
from secmesh.identity.tokens import TokenValidator, jwks_source
from secmesh.log import log_event

_log = logging.getLogger("secmesh.ca.server")


def serving_sans(listen_host: str, dns_names: Sequence[str] = ()) -> list[x509.GeneralName]:
    """DNS:localhost and IP:127.0.0.1 always, the listen host when it is a specific name or address,
    and every `--server-dns` name (the Service names clients dial, e.g. `secmesh-ca.secmesh-system.svc`)."""
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(listen_host)
        if not ip.is_unspecified and ip != ipaddress.ip_address("127.0.0.1"):
            sans.append(x509.IPAddress(ip))
    except ValueError:
        if listen_host not in ("localhost", ""):
            sans.append(x509.DNSName(listen_host))
    for name in dns_names:
        if x509.DNSName(name) not in sans:
            sans.append(x509.DNSName(name))
    return sans


class ServingCert:
    """The CA's own TLS certificate (`spiffe://TD/ns/<namespace>/sa/<sa>` + DNS/IP SANs), renewed at half-life."""

    def __init__(self, signer: Signer, spiffe_id: SpiffeId, sans: list[x509.GeneralName], *, ttl: _dt.timedelta,
                 clock: Clock) -> None:
        import grpc

        self._grpc = grpc
        self.signer = signer
        self.spiffe_id = spiffe_id
        self.sans = sans
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


def _own_record(issued: Issued, issuer_kid: str, clock: Clock) -> IssuanceRecord:
    return IssuanceRecord(serial=issued.serial_hex, spiffe_id=str(issued.spiffe_id), subject="secmesh-ca",
                          issuer_kid=issuer_kid, not_before=issued.not_before, not_after=issued.not_after,
                          issued_at=clock.now())


class CaRuntime:
    """The mutable state of one serving process: which generation signs, and the serving certificate."""

    def __init__(self, config: ServeConfig, issuing: Issuing, serving: ServingCert, recorder: BatchRecorder,
                 service: Any, clock: Clock) -> None:
        self.config = config
        self.issuing = issuing
        self.serving = serving
        self.recorder = recorder
        self.service = service
        self.clock = clock
        self.ttl = TtlPolicy(_dt.timedelta(seconds=config.default_ttl), _dt.timedelta(seconds=config.max_ttl))
        self.fingerprint = fingerprint(config.dir)
        self._failed_fingerprint: object = None
        self.set_expiry_metrics()

    def set_expiry_metrics(self) -> None:
        now, gen = self.clock.now(), self.issuing.material.current
        metrics.ROOT_EXPIRY.set((gen.root_cert.not_valid_after_utc - now).total_seconds())
        metrics.INTERMEDIATE_EXPIRY.set((gen.intermediate_cert.not_valid_after_utc - now).total_seconds())

    async def renew_serving(self) -> Issued:
        issued = self.serving.renew()
        await self.recorder.record(_own_record(issued, self.issuing.issuer_kid, self.clock))
        return issued

    async def reload_if_changed(self) -> bool:
        """Swap in a new CA generation (or a pruned bundle); False when nothing changed or it failed."""
        current = fingerprint(self.config.dir)
        now = self.clock.now()
        if current == self.fingerprint and not self.issuing.bundle_stale(now):
            return False
        try:
            issuing = load_issuing(self.config.dir, self.ttl, now)
        except Exception as exc:  # noqa: BLE001 - keep signing with the old generation; retry next poll
            if current != self._failed_fingerprint:
                self._failed_fingerprint = current
                metrics.reloaded(False)
                log_event(_log, logging.ERROR, "CA reload failed; still signing with the previous generation",
                          error=str(exc), generation=self.issuing.generation)
            return False
        old = self.issuing
        self.issuing, self.fingerprint = issuing, current
        self.service.swap(issuing.signer, issuing.issuer_kid)
        self.serving.signer = issuing.signer
        issued = await self.renew_serving()
        self.set_expiry_metrics()
        metrics.reloaded(True)
        log_event(_log, logging.INFO, "CA reloaded", generation=issuing.generation, previous=old.generation,
                  issuer_kid=issuing.issuer_kid, bundle_roots=len(issuing.bundle), serving_serial=issued.serial_hex)
        return True


async def _renew_loop(runtime: CaRuntime) -> None:
    while True:
        await asyncio.sleep(runtime.serving.seconds_until_renewal())
        try:
            issued = await runtime.renew_serving()
            log_event(_log, logging.INFO, "serving certificate renewed", serial=issued.serial_hex,
                      not_after=issued.not_after.isoformat())
        except Exception as exc:  # noqa: BLE001 - keep serving with the current cert; retry soon
            log_event(_log, logging.ERROR, "serving certificate renewal failed", error=str(exc))
            await asyncio.sleep(30)


async def _watch_loop(runtime: CaRuntime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await runtime.reload_if_changed()
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad poll
            log_event(_log, logging.ERROR, "CA directory watch failed", error=str(exc))


async def serve(config: ServeConfig, *, clock: Clock = SYSTEM_CLOCK, link: Any = None,
                worker: int | None = None) -> None:
    import grpc

    from secmesh.ca.admin import start_admin
    from secmesh.ca.service import CertificateService, TokenCache
    from secmesh.proto import ca_pb2_grpc

    ttl = TtlPolicy(_dt.timedelta(seconds=config.default_ttl), _dt.timedelta(seconds=config.max_ttl))
    issuing = load_issuing(config.dir, ttl, clock.now())
    material = issuing.material
    validator = TokenValidator(jwks_source(config.jwks, token_file=config.jwks_token_file or None,
                                           ca_file=config.jwks_ca or None),
                               trust_domain=material.trust_domain, audiences=config.audiences,
                               issuers=config.issuers or None, clock=clock, leeway_seconds=config.token_leeway_seconds)
    ledger = SqliteLedger(material.ledger_path)
    recorder = BatchRecorder(ledger)
    recorder.start()

    host, _port = parse_hostport(config.listen, what="listen")
    namespace, service_account = config.server_identity()
    serving = ServingCert(issuing.signer, SpiffeId.for_service_account(material.trust_domain, namespace,
                                                                       service_account),
                          serving_sans(host, config.server_dns), ttl=_dt.timedelta(seconds=config.server_cert_ttl),
                          clock=clock)
    credentials = serving.credentials()
    service = CertificateService(issuing.signer, TokenCache(validator), recorder, issuer_kid=issuing.issuer_kid,
                                 clock=clock)
    runtime = CaRuntime(config, issuing, serving, recorder, service, clock)
    assert serving.issued is not None
    await recorder.record(_own_record(serving.issued, issuing.issuer_kid, clock))

    reuse_port = 1 if link is not None else 0  # workers share the port; a lone server must own it
    server = grpc.aio.server(options=[("grpc.so_reuseport", reuse_port), ("grpc.max_receive_message_length", 1 << 20)])
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(service, server)
    if server.add_secure_port(config.listen, credentials) == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # a worker leaves SIGINT (Ctrl-C reaches the whole process group) to its parent
    for sig in (signal.SIGTERM,) if link is not None else (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    # SIGHUP (a reload habit, or a closed terminal) must not kill the CA: it already follows its directory
    loop.add_signal_handler(signal.SIGHUP, log_event, _log, logging.INFO,
                            "SIGHUP ignored: the CA reloads its directory by itself (--reload-interval)")
    admin = None
    if config.admin and link is None:
        admin_host, admin_port = parse_hostport(config.admin, what="admin")
        admin = await start_admin(admin_host, admin_port, lambda: not stopping.is_set())
    tasks = [loop.create_task(_renew_loop(runtime), name="serving-cert-renewal")]
    if config.reload_interval > 0:
        tasks.append(loop.create_task(_watch_loop(runtime, config.reload_interval), name="ca-watch"))
    if link is not None:
        from secmesh.metrics import exposition

        await link.ready({"pid": os.getpid(), "serving_serial": serving.issued.serial_hex})
        # the parent closing the channel means it is gone: stop as if told to
        parent_watch = loop.create_task(link.serve(exposition), name="parent-link")
        parent_watch.add_done_callback(lambda _t: stopping.set())
        tasks.append(parent_watch)
    log_event(_log, logging.INFO, "CA serving", listen=config.listen, admin=(config.admin or None) if link is None else None,
              worker=worker,
              trust_domain=material.trust_domain.name, spiffe_id=str(serving.spiffe_id),
              generation=issuing.generation, default_ttl=config.default_ttl, max_ttl=config.max_ttl)
    try:
        await stopping.wait()
    finally:
        log_event(_log, logging.INFO, "CA stopping", grace_seconds=config.grace_seconds, worker=worker)
        for task in tasks:
            task.cancel()
        await server.stop(config.grace_seconds)
        if admin is not None:
            admin.close()
            await admin.wait_closed()
        await recorder.close()
        ledger.close()
        if link is not None:
            link.close()


def run(config: ServeConfig) -> None:
    """Run `serve` on uvloop until a signal stops it; with more than one worker, supervise them instead."""
    import uvloop

    if config.worker_count() > 1:
        from secmesh.ca.supervisor import supervise

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(supervise(config))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
