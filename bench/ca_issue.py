"""CreateCertificate throughput of `secmesh ca serve` over loopback TLS, as a ratio to the raw sign ceiling.

    .venv/bin/python bench/ca_issue.py                 # ~10 s of load, 2 client processes x 16 calls in flight
    .venv/bin/python bench/ca_issue.py --quick         # CI-sized: ~2 s
    .venv/bin/python bench/ca_issue.py --json          # one JSON object on stdout

It starts the CA as a real process (`python -m secmesh ca serve`) on 127.0.0.1 with TLS, drives
it with grpcio clients (grpc.aio, in separate processes so the client's Python does not share
the server's GIL), and, in the same run, measures the single-thread `cryptography` ceiling for
the work a CA cannot avoid: CSR parse + CSR signature check + build + sign + PEM. The ratio
served/ceiling is the figure of merit (goal ≥ 0.5). Both sides share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
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


def ceiling(csrs: list[str], seconds: float) -> tuple[float, float]:
    """Single-thread (calls/s, CPU µs per call) of parse + verify + build + sign + PEM with plain `cryptography`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "bench CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    count, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while True:
        for pem in csrs:
            csr = x509.load_pem_x509_csr(pem.encode())
            assert csr.is_signature_valid
            pub = csr.public_key()
            now = dt.datetime.now(dt.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject).public_key(pub)
                    .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=2))
                    .not_valid_after(now + dt.timedelta(hours=24))
                    .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                          ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                    .add_extension(x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/w")]), True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), False)
                    .add_extension(aki, False)
                    .sign(ca_key, hashes.SHA256()))
            cert.public_bytes(serialization.Encoding.PEM)
            count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed, (time.process_time() - cpu_started) / count * 1e6


def _client_proc(target: str, bundle: bytes, token: str, csrs: list[str], concurrency: int, start_at: float,
                 seconds: float, out: mp.Queue) -> None:
    """One client process: `concurrency` grpc.aio calls in flight on one channel for `seconds`."""
    import grpc

    from secmesh.proto import ca_pb2, ca_pb2_grpc

    async def main() -> tuple[int, int, list[float]]:
        creds = grpc.ssl_channel_credentials(bundle)
        async with grpc.aio.secure_channel(target, creds) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)
            requests = [ca_pb2.IstioCertificateRequest(csr=c, validity_duration=3600) for c in csrs]
            await stub.CreateCertificate(requests[0], metadata=metadata)  # warm the connection
            ok = err = 0
            latencies: list[float] = []
            await asyncio.sleep(max(0.0, start_at - time.time()))
            deadline = time.perf_counter() + seconds

            async def worker(i: int) -> None:
                nonlocal ok, err
                n = i
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        resp = await stub.CreateCertificate(requests[n % len(requests)], metadata=metadata)
                        ok += len(resp.cert_chain) == 3
                    except grpc.RpcError:
                        err += 1
                    latencies.append(time.perf_counter() - t0)
                    n += concurrency

            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            return ok, err, latencies

    out.put(asyncio.run(main()))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux), to tell a CPU-bound server from a starved one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run(args: argparse.Namespace) -> dict:
    from secmesh.ca.store import init_ca
    from tests.support.tokens import TokenIssuer

    work = Path(tempfile.mkdtemp(prefix="secmesh-bench-"))
    csrs = _csrs(64)
    # the ceiling is measured before and after the load (same run) and averaged: the box is shared
    ceil_before = ceiling(csrs, args.ceiling_seconds / 2)
    material = init_ca(work / "ca", TRUST_DOMAIN, now=dt.datetime.now(dt.timezone.utc))
    bundle = material.bundle(dt.datetime.now(dt.timezone.utc)).to_pem()
    issuer = TokenIssuer()
    issuer.write_jwks(work / "jwks.json")
    port = _free_port()
    env = dict(os.environ, GRPC_VERBOSITY="ERROR", PYTHONUNBUFFERED="1")
    log = open(work / "ca.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "secmesh", "ca", "serve", "--dir", str(work / "ca"),
                               "--listen", f"127.0.0.1:{port}", "--jwks", str(work / "jwks.json")],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"CA did not start:\n{(work / 'ca.log').read_text()}")
                time.sleep(0.05)
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        cpu_before = _cpu_seconds(server.pid)
        start_at = time.time() + 2.0  # every client warmed up and connected before the clock starts
        procs = [ctx.Process(target=_client_proc, args=(f"127.0.0.1:{port}", bundle,
                                                        issuer.token("bench", f"client{i}"), csrs,
                                                        args.concurrency, start_at, args.duration, out))
                 for i in range(args.clients)]
        for p in procs:
            p.start()
        results = [out.get(timeout=args.duration + 60) for _ in procs]
        for p in procs:
            p.join()
        server_cpu = _cpu_seconds(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    ok = sum(r[0] for r in results)
    err = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    served = ok / args.duration
    ceil_after = ceiling(csrs, args.ceiling_seconds / 2)
    ceil = (ceil_before[0] + ceil_after[0]) / 2
    ceil_cpu_us = (ceil_before[1] + ceil_after[1]) / 2
    server_cpu_us = (server_cpu - cpu_before) / ok * 1e6 if ok else float("nan")
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan"))
    return {"served_calls_per_s": round(served, 1), "ceiling_calls_per_s": round(ceil, 1),
            "ratio": round(served / ceil, 3), "ok": ok, "errors": err, "duration_s": args.duration,
            "clients": args.clients, "concurrency_per_client": args.concurrency,
            "p50_ms": round(pct(0.5), 2), "p99_ms": round(pct(0.99), 2), "cores": os.cpu_count(),
            "server_cpu_s": round(server_cpu - cpu_before, 2), "server_cpu_us_per_call": round(server_cpu_us, 1),
            "ceiling_cpu_us_per_call": round(ceil_cpu_us, 1),
            "ceiling_before_after": [round(ceil_before[0], 1), round(ceil_after[0], 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per client process")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~2 s of load)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.ceiling_seconds = 2.0, 1.0
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"CreateCertificate over loopback TLS: {result['served_calls_per_s']:.0f} calls/s "
          f"({result['ok']} ok, {result['errors']} errors, {result['clients']}x{result['concurrency_per_client']} "
          f"in flight, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms)")
    print(f"raw cryptography ceiling (parse+verify+build+sign+PEM, 1 thread): {result['ceiling_calls_per_s']:.0f}/s "
          f"(before/after the load: {result['ceiling_before_after']}; {result['ceiling_cpu_us_per_call']} µs CPU/call)")
    print(f"ratio: {result['ratio']:.2f} (goal >= 0.50) on {result['cores']} cores; "
          f"server CPU {result['server_cpu_s']} s over {result['duration_s']} s of load = "
          f"{result['server_cpu_us_per_call']} µs CPU/call")


if __name__ == "__main__":
    main()
