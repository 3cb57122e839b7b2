"""CreateCertificate throughput of `secmesh ca serve` over loopback TLS, as a ratio to the raw sign ceiling.

    .venv/bin/python bench/ca_issue.py                 # 8 s of load, server with one worker per core
    .venv/bin/python bench/ca_issue.py --workers 1     # a single serving process
    .venv/bin/python bench/ca_issue.py --quick         # CI-sized: ~2 s
    .venv/bin/python bench/ca_issue.py --json          # one JSON object on stdout

What runs: the CA as a real process tree (`python -m secmesh ca serve --workers N`) on 127.0.0.1
with TLS; `--clients` load-generator processes (grpcio; `--client aio`, the default: grpc.aio coroutines on
uvloop, or `--client futures`; `--channels` TLS connections each so SO_REUSEPORT can spread them,
`--concurrency` calls in flight each), each with its own
service-account token; in the same run, single-thread ceilings measured with plain `cryptography`
in this process, before and after the load (the box is shared, so both are shown and averaged):

  sign ceiling   `CertificateBuilder(...).sign()` of the Istio leaf profile for a known public key:
                 the issue's "raw cryptography sign rate".
  CSR ceiling    load the CSR + check its signature + build + sign + PEM: the least work a CA must
                 do per CreateCertificate with `cryptography`'s own API. The signature is checked as
                 the server checks it (`public_key().verify(signature, tbs, ECDSA(hash))`, 10-15 µs
                 cheaper than `is_signature_valid`), so the server gains nothing the ceiling lacks.

Ratios are printed against both, and against both scaled by the cores the server may use (the
server runs N processes; the ceilings use one thread). Server CPU per call is the CPU of the
whole server process tree divided by the calls it answered; clients' CPU per call is shown too,
because on a small machine clients and server share the same cores. The CPU ratio (ceiling CPU
per call / server CPU per call) is the same comparison without the scheduler: on a shared box
the served rate also depends on how much of a core the server got, the CPU ratio much less.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

TRUST_DOMAIN = "bench.example"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _csrs(n: int) -> list[str]:
    from secmesh.identity.csr import build_csr

    return [build_csr(ec.generate_private_key(ec.SECP256R1()), f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/w{i}").decode()
            for i in range(n)]


class Ceiling:
    """Plain `cryptography`, one thread: an Istio-profile leaf signed by a P-256 CA."""

    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "bench CA")])
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key())

    def leaf(self, pub: object) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        return (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.name).public_key(pub)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=2))
                .not_valid_after(now + dt.timedelta(hours=24))
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/w")]), True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), False)  # type: ignore[arg-type]
                .add_extension(self.aki, False)
                .sign(self.ca_key, hashes.SHA256()))

    def measure(self, csrs: list[str], seconds: float) -> dict[str, float]:
        """{'sign': calls/s, 'csr': calls/s, 'sign_cpu_us': …, 'csr_cpu_us': …} over `seconds` each."""
        pubs = [x509.load_pem_x509_csr(c.encode()).public_key() for c in csrs]
        out: dict[str, float] = {}
        for label, work in (("sign", lambda i: self.leaf(pubs[i])),
                            ("csr", lambda i: self._csr_path(csrs[i]))):
            count, started, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds:
                for i in range(len(csrs)):
                    work(i)
                count += len(csrs)
            out[label] = count / (time.perf_counter() - started)
            out[f"{label}_cpu_us"] = (time.process_time() - cpu) / count * 1e6
        return out

    def _csr_path(self, pem: str) -> bytes:
        csr = x509.load_pem_x509_csr(pem.encode())
        public_key = csr.public_key()
        public_key.verify(csr.signature, csr.tbs_certrequest_bytes,  # type: ignore[union-attr,call-arg]
                          ec.ECDSA(csr.signature_hash_algorithm))  # raises InvalidSignature
        return self.leaf(public_key).public_bytes(serialization.Encoding.PEM)


def _client_proc(target: str, bundle: bytes, token: str, csrs: list[str], concurrency: int, channels: int,
                 start_at: float, seconds: float, out: mp.Queue) -> None:
    """One load generator: `channels` TLS connections, `concurrency` calls in flight, grpcio futures API."""
    import grpc

    from secmesh.proto import ca_pb2, ca_pb2_grpc

    creds = grpc.ssl_channel_credentials(bundle)
    chans = [grpc.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [ca_pb2_grpc.IstioCertificateServiceStub(c) for c in chans]
    metadata = (("authorization", f"Bearer {token}"),)
    requests = [ca_pb2.IstioCertificateRequest(csr=c, validity_duration=3600) for c in csrs]
    for stub in stubs:  # connect and warm every channel before the clock starts
        stub.CreateCertificate(requests[0], metadata=metadata, timeout=30)
    time.sleep(max(0.0, start_at - time.time()))
    slots = threading.Semaphore(concurrency)
    lock = threading.Lock()
    stats = {"ok": 0, "err": 0}
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    cpu = time.process_time()

    def done(future: grpc.Future, t0: float) -> None:
        elapsed = time.perf_counter() - t0
        good = future.exception() is None and len(future.result().cert_chain) == 3
        with lock:
            stats["ok" if good else "err"] += 1
            latencies.append(elapsed)
        slots.release()

    n = 0
    while time.perf_counter() < deadline:
        slots.acquire()
        t0 = time.perf_counter()
        future = stubs[n % channels].CreateCertificate.future(requests[n % len(requests)], metadata=metadata,
                                                              timeout=30)
        future.add_done_callback(lambda f, t0=t0: done(f, t0))
        n += 1
    for _ in range(concurrency):  # drain what is still in flight
        slots.acquire()
    cpu = time.process_time() - cpu
    for c in chans:
        c.close()
    out.put((stats["ok"], stats["err"], latencies, cpu))


def _aio_client_proc(target: str, bundle: bytes, token: str, csrs: list[str], concurrency: int, channels: int,
                     start_at: float, seconds: float, out: mp.Queue) -> None:
    """The same load with grpc.aio on uvloop: `concurrency` coroutines, each one call after the other.

    Measured ~15-25 % less client CPU per call than the futures client (no callback thread, no
    semaphore), which leaves more of the shared cores to the server under test.
    """
    import asyncio

    import grpc
    import uvloop

    from secmesh.proto import ca_pb2, ca_pb2_grpc

    async def main() -> tuple[int, int, list[float], float]:
        creds = grpc.ssl_channel_credentials(bundle)
        chans = [grpc.aio.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(channels)]
        stubs = [ca_pb2_grpc.IstioCertificateServiceStub(c) for c in chans]
        metadata = (("authorization", f"Bearer {token}"),)
        requests = [ca_pb2.IstioCertificateRequest(csr=c, validity_duration=3600) for c in csrs]
        for stub in stubs:  # connect and warm every channel before the clock starts
            await stub.CreateCertificate(requests[0], metadata=metadata, timeout=30)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        stats = {"ok": 0, "err": 0}
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        cpu = time.process_time()

        async def caller(n: int) -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    reply = await stubs[n % channels].CreateCertificate(requests[n % len(requests)],
                                                                        metadata=metadata, timeout=30)
                    good = len(reply.cert_chain) == 3
                except grpc.RpcError:
                    good = False
                latencies.append(time.perf_counter() - t0)
                stats["ok" if good else "err"] += 1
                n += concurrency

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        cpu = time.process_time() - cpu
        for c in chans:
            await c.close()
        return stats["ok"], stats["err"], latencies, cpu

    out.put(uvloop.run(main()))


def _tree_pids(pid: int) -> list[int]:
    """A process and its children (the CA's workers), Linux /proc."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    return pids


def _tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children (the workers), Linux /proc."""
    total = 0.0
    for p in _tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _tree_run_delay_seconds(pid: int) -> float:
    """Time the threads of a process and its children spent runnable but waiting for a core
    (/proc/PID/task/TID/schedstat, 2nd field): how much the shared box held the server back."""
    total = 0
    for p in _tree_pids(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return total / 1e9


def _wait_ready(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            import urllib.request

            if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).status == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"CA did not start:\n{log.read_text()}")
        time.sleep(0.05)


def run(args: argparse.Namespace) -> dict:
    from secmesh.ca.store import init_ca
    from tests.support.tokens import TokenIssuer

    work = Path(tempfile.mkdtemp(prefix="secmesh-bench-"))
    csrs = _csrs(64)
    ceiling = Ceiling()
    before = ceiling.measure(csrs, args.ceiling_seconds / 2)
    material = init_ca(work / "ca", TRUST_DOMAIN, now=dt.datetime.now(dt.timezone.utc))
    bundle = material.bundle(dt.datetime.now(dt.timezone.utc)).to_pem()
    issuer = TokenIssuer()
    issuer.write_jwks(work / "jwks.json")
    port, admin = _free_port(), _free_port()
    workers = args.workers or len(os.sched_getaffinity(0))
    env = dict(os.environ, GRPC_VERBOSITY="ERROR", PYTHONUNBUFFERED="1")
    log_path = work / "ca.log"
    log = open(log_path, "wb")
    server = subprocess.Popen([sys.executable, "-m", "secmesh", "ca", "serve", "--dir", str(work / "ca"),
                               "--listen", f"127.0.0.1:{port}", "--jwks", str(work / "jwks.json"),
                               "--admin", f"127.0.0.1:{admin}", "--workers", str(workers), "--log-level", "warning"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(admin, server, log_path)
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        start_at = time.time() + 3.0  # every client connected and warm before the clock starts
        client = _aio_client_proc if args.client == "aio" else _client_proc
        procs = [ctx.Process(target=client, args=(f"127.0.0.1:{port}", bundle,
                                                        issuer.token("bench", f"client{i}"), csrs, args.concurrency,
                                                        args.channels, start_at, args.duration, out))
                 for i in range(args.clients)]
        for p in procs:
            p.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before, delay_before = _tree_cpu_seconds(server.pid), _tree_run_delay_seconds(server.pid)
        results = [out.get(timeout=args.duration + 90) for _ in procs]
        server_cpu = _tree_cpu_seconds(server.pid) - cpu_before
        server_delay = _tree_run_delay_seconds(server.pid) - delay_before
        for p in procs:
            p.join()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if server.returncode == 0:
            shutil.rmtree(work, ignore_errors=True)  # kept (with ca.log) when the server failed
    after = ceiling.measure(csrs, args.ceiling_seconds / 2)
    ok = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[2])
    client_cpu = sum(r[3] for r in results)
    served = ok / args.duration
    sign = (before["sign"] + after["sign"]) / 2
    csr = (before["csr"] + after["csr"]) / 2

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {
        "served_calls_per_s": round(served, 1), "ok": ok, "errors": sum(r[1] for r in results),
        "duration_s": args.duration, "workers": workers, "cores": len(os.sched_getaffinity(0)),
        "clients": args.clients, "client_api": args.client, "channels_per_client": args.channels, "concurrency_per_client": args.concurrency,
        "p50_ms": round(pct(0.5), 2), "p99_ms": round(pct(0.99), 2),
        "sign_ceiling_per_s": round(sign, 1), "csr_ceiling_per_s": round(csr, 1),
        "sign_ceiling_before_after": [round(before["sign"]), round(after["sign"])],
        "csr_ceiling_before_after": [round(before["csr"]), round(after["csr"])],
        "ratio_to_sign_ceiling": round(served / sign, 3), "ratio_to_csr_ceiling": round(served / csr, 3),
        "ratio_to_sign_ceiling_x_workers": round(served / (sign * min(workers, len(os.sched_getaffinity(0)))), 3),
        "ratio_to_csr_ceiling_x_workers": round(served / (csr * min(workers, len(os.sched_getaffinity(0)))), 3),
        "server_cpu_s": round(server_cpu, 2), "server_cpu_us_per_call": round(server_cpu / ok * 1e6, 1) if ok else None,
        "client_cpu_us_per_call": round(client_cpu / ok * 1e6, 1) if ok else None,
        "sign_ceiling_cpu_us": round((before["sign_cpu_us"] + after["sign_cpu_us"]) / 2, 1),
        "csr_ceiling_cpu_us": round((before["csr_cpu_us"] + after["csr_cpu_us"]) / 2, 1),
        "cpu_ratio_to_csr_ceiling": round((before["csr_cpu_us"] + after["csr_cpu_us"]) / 2 / (server_cpu / ok * 1e6), 3)
        if ok and server_cpu else None,
        "server_cores_busy": round(server_cpu / args.duration, 2),
        "server_runqueue_wait_s": round(server_delay, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=0, help="`ca serve --workers` (0 = one per core)")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--channels", type=int, default=4, help="TLS connections per client process")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per client process")
    parser.add_argument("--client", choices=("aio", "futures"), default="aio",
                        help="load generator API: grpc.aio coroutines (cheaper) or the futures API")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0, help="split before/after the load")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~2 s of load)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.ceiling_seconds = 2.0, 1.0
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return
    cores = min(r["workers"], r["cores"])
    print(f"CreateCertificate over loopback TLS: {r['served_calls_per_s']:.0f} calls/s ({r['ok']} ok, {r['errors']} "
          f"errors in {r['duration_s']} s; server: {r['workers']} worker(s) on {r['cores']} cores; clients: "
          f"{r['clients']} processes x {r['channels_per_client']} connections, {r['concurrency_per_client']} in "
          f"flight each; p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; load average {r['loadavg_1m']})")
    print(f"sign ceiling (cryptography CertificateBuilder.sign, 1 thread): {r['sign_ceiling_per_s']:.0f}/s "
          f"(before/after {r['sign_ceiling_before_after']}; {r['sign_ceiling_cpu_us']} us CPU each)")
    print(f"CSR ceiling (load + verify CSR + build + sign + PEM, 1 thread): {r['csr_ceiling_per_s']:.0f}/s "
          f"(before/after {r['csr_ceiling_before_after']}; {r['csr_ceiling_cpu_us']} us CPU each)")
    print(f"ratio to the sign ceiling: {r['ratio_to_sign_ceiling']:.2f}   to the CSR ceiling: "
          f"{r['ratio_to_csr_ceiling']:.2f}   (goal >= 0.50)")
    print(f"ratio to the ceilings x {cores} core(s) the server may use: sign {r['ratio_to_sign_ceiling_x_workers']:.2f}"
          f"   CSR {r['ratio_to_csr_ceiling_x_workers']:.2f}")
    print(f"server CPU {r['server_cpu_s']} s = {r['server_cpu_us_per_call']} us per call (all workers); "
          f"clients {r['client_cpu_us_per_call']} us per call")
    print(f"CPU ratio (CSR ceiling CPU per call / server CPU per call): {r['cpu_ratio_to_csr_ceiling']}; "
          f"the server kept {r['server_cores_busy']} cores busy and its threads waited {r['server_runqueue_wait_s']} s "
          f"for a core (shared with the clients and the rest of the box)")


if __name__ == "__main__":
    main()
