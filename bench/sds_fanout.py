"""SDS fan-out: how long from a rotation to the last of N open StreamSecrets streams receiving the push,
and how much agent memory each open stream costs.

Runs the real thing: `secmesh ca init/serve` and `secmesh agent` as processes on loopback and a
Unix socket in a temporary directory; N Envoy-style SDS streams (xds-protos stubs, grpc.aio)
spread over a few channels, all on the agent's own workload identity (the worst case: one
rotation → N pushes). Each stream ACKs every response, as Envoy does.

    .venv/bin/python bench/sds_fanout.py                 # 1,000 streams
    .venv/bin/python bench/sds_fanout.py --quick         # 100 streams, shorter TTL
    .venv/bin/python bench/sds_fanout.py --streams 2000 --ttl 40s

Figures printed (and with --json, one JSON object):
- rotation → last push: from the agent's "certificate issued" log timestamp (the cache swap)
  to the client receiving the push on the last stream (same host, same wall clock); p50/p99 too;
- first → last push: the spread across streams, independent of log timing;
- RSS per open stream: (agent RSS with N streams open − RSS before) / N, from /proc.
The client runs in this one Python process, so the figures include its own decode time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy.service.secret.v3 import sds_pb2_grpc  # noqa: E402

from tests.support.proc import free_port, run_cli, start_cli, tcp_ready, wait_until  # noqa: E402
from tests.support.tokens import TokenIssuer  # noqa: E402

T = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Stream:
    def __init__(self, stub: sds_pb2_grpc.SecretDiscoveryServiceStub) -> None:
        self.call = stub.StreamSecrets()
        self.responses = 0
        self.push_at: float | None = None   # wall-clock time the first push arrived
        self.ready = asyncio.Event()
        self.pushed = asyncio.Event()

    async def run(self) -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(resource_names=["default", "ROOTCA"], type_url=T))
        while True:
            resp = await self.call.read()
            if resp is grpc.aio.EOF:
                return
            self.responses += 1
            if self.responses == 2 and self.push_at is None:
                self.push_at = time.time()
                self.pushed.set()
            await self.call.write(discovery_pb2.DiscoveryRequest(
                resource_names=["default", "ROOTCA"], type_url=T, version_info=resp.version_info,
                response_nonce=resp.nonce))
            self.ready.set()


def rotation_times(log: str) -> list[float]:
    """Wall-clock times of the agent's cache swaps (issuances that replaced a certificate)."""
    out = []
    for line in log.splitlines():
        if '"certificate issued"' in line and '"replaced":null' not in line:
            ts = json.loads(line)["ts"]
            out.append(dt.datetime.fromisoformat(ts).timestamp())
    return out


async def open_streams(socket: Path, n: int, channels: int) -> tuple[list[Stream], list[grpc.aio.Channel], float]:
    # a local subchannel pool per channel: really `channels` connections, not one shared one
    chans = [grpc.aio.insecure_channel(f"unix:{socket}", options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [sds_pb2_grpc.SecretDiscoveryServiceStub(c) for c in chans]
    streams = [Stream(stubs[i % channels]) for i in range(n)]
    started = time.monotonic()
    for s in streams:
        s.task = asyncio.ensure_future(s.run())  # type: ignore[attr-defined]
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in streams)), 120)
    return streams, chans, time.monotonic() - started


async def measure(agent_pid: int, agent_log, socket: Path, n: int, channels: int, timeout: float) -> dict:
    rss_before = rss_kib(agent_pid)
    streams, chans, open_s = await open_streams(socket, n, channels)
    await asyncio.sleep(0.5)  # let the agent settle before sampling
    rss_open = rss_kib(agent_pid)
    if any(s.pushed.is_set() for s in streams):
        raise SystemExit("a rotation happened while streams were opening; use a longer --ttl")
    await asyncio.wait_for(asyncio.gather(*(s.pushed.wait() for s in streams)), timeout)
    await asyncio.sleep(0.3)
    arrivals = sorted(s.push_at for s in streams if s.push_at is not None)
    swaps = [t for t in rotation_times(agent_log()) if t <= arrivals[0] + 0.001]
    swap = swaps[-1] if swaps else arrivals[0]
    for s in streams:
        s.call.cancel()
        s.task.cancel()  # type: ignore[attr-defined]
    for c in chans:
        await c.close()
    lat = [(t - swap) * 1000 for t in arrivals]
    return {
        "streams": n, "channels": channels, "open_seconds": round(open_s, 3),
        "rotation_to_last_push_ms": round(lat[-1], 1),
        "rotation_to_push_p50_ms": round(statistics.median(lat), 1),
        "rotation_to_push_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
        "first_to_last_push_ms": round((arrivals[-1] - arrivals[0]) * 1000, 1),
        "agent_rss_before_kib": rss_before, "agent_rss_open_kib": rss_open,
        "rss_per_stream_kib": round((rss_open - rss_before) / n, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=10, help="gRPC connections the streams are spread over")
    ap.add_argument("--ttl", default="40s", help="leaf TTL; rotation fires at half of it")
    ap.add_argument("--quick", action="store_true", help="100 streams, 12s TTL")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (CA, agent logs)")
    args = ap.parse_args()
    if args.quick:
        args.streams, args.ttl = min(args.streams, 100), "12s"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    work = Path(tempfile.mkdtemp(prefix="sdsbench-", dir="/tmp"))
    procs = []
    try:
        ca_dir = work / "ca"
        assert run_cli("ca", "init", "--trust-domain", "cluster.local", "--dir", str(ca_dir)).returncode == 0
        (work / "roots.pem").write_text(run_cli("ca", "bundle", "--dir", str(ca_dir)).stdout)
        issuer = TokenIssuer()
        issuer.write_jwks(work / "jwks.json")
        (work / "token").write_text(issuer.token("bench", "workload", ttl=3600))
        ca_port, admin = free_port(), free_port()
        ca = start_cli("ca", "serve", "--dir", str(ca_dir), "--listen", f"127.0.0.1:{ca_port}", "--jwks",
                       str(work / "jwks.json"), tmp_path=work, name="ca")
        procs.append(ca)
        wait_until(tcp_ready("127.0.0.1", ca_port), timeout=30, what="CA", proc=ca.popen)
        socket = work / "s" / "socket"
        agent = start_cli("agent", "--socket", str(socket), "--ca-address", f"127.0.0.1:{ca_port}",
                          "--ca-root", str(work / "roots.pem"), "--jwks", str(work / "jwks.json"),
                          "--token-file", str(work / "token"), "--ttl", args.ttl, "--rotation-jitter", "0",
                          "--admin", f"127.0.0.1:{admin}", tmp_path=work, name="agent")
        procs.append(agent)
        wait_until(lambda: '"certificate issued"' in agent.output(), timeout=30, what="agent warm", proc=agent.popen)
        from secmesh.configfile import parse_duration

        result = asyncio.run(measure(agent.pid, agent.output, socket, args.streams, args.channels,
                                     timeout=parse_duration(args.ttl) + 30))
        result["ttl"] = args.ttl
        if args.json:
            print(json.dumps(result))
        else:
            for k, v in result.items():
                print(f"{k:28s} {v}")
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
