"""Unary gRPC QPS, direct vs through the secmesh L7 mesh (outbound h2c → mTLS h2 → inbound → app).

    .venv/bin/python bench/sidecar_l7_grpc.py            # DURATION=10 CONNS=10 STREAMS=10 RUNS=2

The app is a grpcio server (one process); the load generator is h2load sending real gRPC frames
(`content-type: application/grpc`, `te: trailers`, a length-prefixed message), pinned to the
last CPU while the app and both sidecars share the others (as ../shared/bench/run.sh pins).
Prints QPS per run and the mesh / direct ratio. Stops every process it started (by PID).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT = Path(os.environ.get("BENCH_KIT_DIR", REPO.parent / "shared" / "bench"))
DURATION = int(os.environ.get("DURATION", "10").rstrip("s"))
CONNS = int(os.environ.get("CONNS", "10"))
STREAMS = int(os.environ.get("STREAMS", "10"))
RUNS = int(os.environ.get("RUNS", "2"))
WORKERS = os.environ.get("WORKERS", "1")

SERVER = r"""
import sys, grpc
from concurrent import futures
s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo",
    {"Unary": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
s.add_insecure_port("127.0.0.1:" + sys.argv[1]); s.start(); s.wait_for_termination()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} not ready")


def cpus() -> tuple[str, str]:
    n = os.cpu_count() or 1
    return (f"0-{n - 2}", str(n - 1)) if n >= 2 else ("0", "0")


def h2load(port: int, payload: Path, loadgen: str) -> float:
    out = subprocess.run(["taskset", "-c", loadgen, "h2load", "-c", str(CONNS), "-m", str(STREAMS), "-t", "1",
                          "-D", str(DURATION), "-d", str(payload), "-H", "content-type: application/grpc",
                          "-H", "te: trailers", f"http://127.0.0.1:{port}/test.Echo/Unary"],
                         capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    if not m or not ok or int(ok.group(2)):
        print(out[-1500:], file=sys.stderr)
    return float(m.group(1)) if m else 0.0


def main() -> None:
    server_cpus, loadgen = cpus()
    work = Path(tempfile.mkdtemp(prefix="secmesh-grpcbench."))
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run(["bash", str(KIT / "certs.sh"), str(work / "certs"), "bench.local"], check=True,
                       capture_output=True)
        c = work / "certs"
        payload = work / "req.bin"
        msg = b"x" * 64
        payload.write_bytes(b"\x00" + len(msg).to_bytes(4, "big") + msg)
        (work / "allow.yaml").write_text(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow, namespace: default}\n"
            "spec:\n  rules:\n  - from: [{source: {principals: [\"bench.local/ns/default/sa/client\"]}}]\n")
        app, inbound, outbound = free_port(), free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR")
        py = sys.executable

        def start(name: str, *argv: str) -> subprocess.Popen:
            log = open(work / f"{name}.log", "wb")
            p = subprocess.Popen(["taskset", "-c", server_cpus, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            return p

        wait_port(app, start("app", py, "-c", SERVER, str(app)))
        access = "--no-access-log" if os.environ.get("ACCESS_LOG", "1") == "0" else "--access-log"
        common = ["--workers", WORKERS, access, "--log-level", "info", "--trust-domain", "bench.local",
                  "--protocol", "http", "--ca", str(c / "ca.pem")]
        wait_port(inbound, start("inbound", py, "-m", "secmesh", "sidecar", "inbound", "--listen",
                                 f"127.0.0.1:{inbound}", "--upstream", f"127.0.0.1:{app}", "--cert",
                                 str(c / "server.pem"), "--key", str(c / "server.key"), "--policies",
                                 str(work / "allow.yaml"), *common))
        wait_port(outbound, start("outbound", py, "-m", "secmesh", "sidecar", "outbound", "--listen",
                                  f"127.0.0.1:{outbound}", "--upstream", f"127.0.0.1:{inbound}", "--cert",
                                  str(c / "client.pem"), "--key", str(c / "client.key"), "--peer-id",
                                  "spiffe://bench.local/ns/default/sa/server", *common))
        results: dict[str, list[float]] = {"direct": [], "mesh": []}
        for _ in range(RUNS):
            for name, port in (("direct", app), ("mesh", outbound)):
                results[name].append(h2load(port, payload, loadgen))
                print(f"[grpc] {name:7s} {results[name][-1]:10.1f} req/s", file=sys.stderr)
        d = sum(results["direct"]) / len(results["direct"])
        m = sum(results["mesh"]) / len(results["mesh"])
        print(f"\n== unary gRPC (h2load -c{CONNS} -m{STREAMS} -D{DURATION}, 64-byte messages; runs: {RUNS}) ==")
        for name, vals in results.items():
            runs = "  ".join(f"{v:10.1f}" for v in vals)
            print(f"{name:8s} {runs}   mean {sum(vals) / len(vals):10.1f} req/s")
        print(f"mesh / direct = {m / d if d else 0:.3f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
