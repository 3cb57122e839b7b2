"""HTTP/2 and gRPC through two real sidecars: a grpcio client and server (all four call shapes, trailers
with status and metadata, deadlines, PERMISSION_DENIED by policy), nghttp and h2load, a slow consumer
that keeps memory bounded, and rapid reset cut off while other clients are served."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import PingFrame, SettingsFrame, WindowUpdateFrame

from tests.integration.sidecar.harness import metric
from tests.integration.sidecar_l7.apps import GrpcClient
from tests.integration.sidecar_l7.wire import curl, curl_status, held_while_unread, mtls_args, rss_kib, unread_socket

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def rpc(mesh):
    c = GrpcClient(f"127.0.0.1:{mesh.ports['out-grpc']}")
    yield c
    c.close()


def test_unary_with_metadata(rpc):
    resp, call = rpc.uu("Unary").with_call(b"hello", timeout=5)
    assert resp == b"echo:hello"
    assert ("x-initial", "yes") in call.initial_metadata()
    assert call.code() == grpc.StatusCode.OK


def test_server_streaming(rpc):
    assert list(rpc.us("ServerStream")(b"5", timeout=5)) == [b"item-%d" % i for i in range(5)]


def test_client_streaming(rpc):
    assert rpc.su("ClientStream")(iter([b"a", b"b", b"c"]), timeout=5) == b"a+b+c"


def test_bidi_streaming(rpc):
    assert list(rpc.ss("Bidi")(iter([b"x", b"yy", b"zzz"] * 10), timeout=5)) == [b"X", b"YY", b"ZZZ"] * 10


def test_error_status_and_trailing_metadata(rpc):
    with pytest.raises(grpc.RpcError) as e:
        rpc.uu("Fail")(b"nope", timeout=5)
    err = e.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "bad input: nope"
    md = dict(err.trailing_metadata())
    assert md["x-detail"] == "trailing-value" and md["x-bin-bin"] == b"\x00\x01"


def test_deadline_exceeded(rpc):
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        rpc.uu("Slow")(b"3", timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2


def test_denied_method_is_permission_denied_in_trailers(mesh, rpc):
    with pytest.raises(grpc.RpcError) as e:
        rpc.uu("Admin")(b"x", timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    md = dict(e.value.trailing_metadata())
    assert md["x-secmesh-denied-by"] == "ns[default]-policy[deny-admin]-rule[0]"


def test_app_sees_the_mesh_identity(rpc):
    md = dict(json.loads(rpc.uu("Metadata")(b"", timeout=5)))
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in md["x-forwarded-client-cert"]
    assert md["x-request-id"]


def test_curl_http2_and_nghttp(mesh):
    r = curl("--http2-prior-knowledge", "-w", "%{http_version}", mesh.url("out-http", "/ok"))   # h2c outbound
    assert r.stdout == "ok\n2"
    assert curl_status("--http2-prior-knowledge", mesh.url("out-http", "/admin"))[0] == 403
    base = f"https://localhost:{mesh.ports['in-http']}"
    r = subprocess.run(["nghttp", "-n", "-s", "--cert", str(mesh.client_cert), "--key", str(mesh.client_key),
                        f"{base}/64k", f"{base}/ok"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" 200 ") == 2 or r.stdout.count("200") >= 2
    r = curl("--http2", *mtls_args(mesh), "-o", "/dev/null", "-w", "%{http_version} %{size_download}",
             f"https://localhost:{mesh.ports['in-http']}/64k")
    assert r.stdout == "2 65536"


def test_h2load(mesh):
    r = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10", mesh.url("out-http", "/ok")],
                       capture_output=True, text=True, timeout=30)
    assert "400 succeeded" in r.stdout and "0 failed" in r.stdout, r.stdout[-800:]


def _h2(port: int, window: int = 65535) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.local_settings = h2.settings.Settings(client=True,
                                            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def _req(c: h2.connection.H2Connection, path: bytes) -> int:
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", path)],
                   end_stream=True)
    return sid


def test_slow_consumer_keeps_memory_bounded(mesh):
    size = 48 * 1024 * 1024
    pids = [mesh.procs["client"].pid, mesh.procs["server"].pid]
    before = [rss_kib(p) for p in pids]
    s, c = _h2(mesh.ports["out-http"])
    sid = _req(c, b"/bytes/%d" % size)
    s.sendall(c.data_to_send())
    got = 0
    held: list[int] = []
    deadline = time.monotonic() + 1.5               # read without opening any window: the mesh must hold back
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        for e in c.receive_data(data):
            if isinstance(e, h2.events.DataReceived):
                got += len(e.data)
                held.append(e.flow_controlled_length)
        s.sendall(c.data_to_send())
    assert got <= 65535
    grown = [rss_kib(p) - b for p, b in zip(pids, before)]
    assert max(grown) < 16 * 1024, grown            # far less than the 48 MiB in flight
    for n in held:                                   # hand back what was read so far
        c.acknowledge_received_data(n, sid)
    s.sendall(c.data_to_send())
    s.settimeout(5)
    done = False
    while not done:                                  # now consume: everything arrives
        data = s.recv(1 << 20)
        assert data, "connection closed early"
        for e in c.receive_data(data):
            if isinstance(e, h2.events.DataReceived):
                got += len(e.data)
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded) and e.stream_id == sid:
                done = True
        s.sendall(c.data_to_send())
    assert got == size
    s.close()


def _window_overflow(sid: int) -> bytes:
    f = WindowUpdateFrame(sid)
    f.window_increment = 2 ** 31 - 1              # overflows the stream's window: the server resets it
    return f.serialize()


@pytest.mark.parametrize("made_you_reset", [False, True], ids=["rst_stream", "made_you_reset"])
def test_rapid_reset_is_cut_off(mesh, made_you_reset):
    """Rapid reset (CVE-2023-44487) and its MadeYouReset variant (CVE-2025-8671), where the
    client makes the server reset each stream with a stream error instead of sending RST_STREAM."""
    s, c = _h2(mesh.ports["out-http"])
    cut = False
    try:
        for i in range(400):
            sid = _req(c, b"/ok")
            if made_you_reset:
                s.sendall(c.data_to_send() + _window_overflow(sid))
            else:
                c.reset_stream(sid)
                s.sendall(c.data_to_send())
            if i % 20 == 19:
                s.settimeout(0.05)
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    cut = True
                    break
                for e in c.receive_data(data):
                    if isinstance(e, h2.events.ConnectionTerminated):
                        assert e.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
                        cut = True
                if cut:
                    break
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    finally:
        s.close()
    assert cut
    assert curl_status("--http2-prior-knowledge", mesh.url("out-http", "/ok"))[0] == 200
    assert metric(mesh.metrics("client"), "secmesh_sidecar_http_codec_errors_total", reason="rapid_reset") >= 1


@pytest.mark.parametrize("frame", ["ping", "settings"])
def test_control_frame_flood_is_cut_off(mesh, frame):
    """PING / SETTINGS flood (CVE-2019-9512, -9515): a client that makes the sidecar acknowledge
    frame after frame and never reads the answers is cut off (not buffered without end), and
    the sidecar keeps serving everyone else."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # read nothing, and hold little
    s.settimeout(5)
    s.connect(("127.0.0.1", mesh.ports["out-http"]))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    if frame == "ping":
        f = PingFrame(0)
        f.opaque_data = b"flooding"
    else:
        f = SettingsFrame(0)
    blob = f.serialize() * 1000
    before = metric(mesh.metrics("client"), "secmesh_sidecar_http_codec_errors_total", reason="control_flood")
    cut = False
    try:
        s.sendall(c.data_to_send())
        for _ in range(20_000):                  # at most 20 M frames; the cut comes far sooner
            s.sendall(blob)
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    finally:
        s.close()
    assert cut
    after = metric(mesh.metrics("client"), "secmesh_sidecar_http_codec_errors_total", reason="control_flood")
    assert after == before + 1
    assert curl_status("--http2-prior-knowledge", mesh.url("out-http", "/ok"))[0] == 200


def test_client_with_open_windows_that_never_reads_cannot_grow_the_sidecar(mesh):
    """Internal data buffering (CVE-2019-9517): the client opens its HTTP/2 windows wide, asks
    for answer after answer and never reads its socket. Once that socket is full the sidecar
    reads nothing more from it, so the answered count stops and memory stays put."""
    s = unread_socket(mesh.ports["out-http"])
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2 ** 31 - 1})
    c.initiate_connection()
    c.increment_flow_control_window(2 ** 31 - 1 - 65535)
    pending = c.data_to_send()

    def ask() -> None:
        nonlocal pending
        for _ in range(20):                      # at most 20 requests per poll: under the stream limit
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"),
                                 (b":path", b"/bytes/16384")], end_stream=True)
            c.streams.pop(sid)                   # we never read answers, so h2 would think them all open
        pending += c.data_to_send()
        try:
            pending = pending[s.send(pending):]
        except BlockingIOError:
            pass

    grown = held_while_unread(mesh, s, ask, "the sidecar to stop reading an h2 client that reads nothing")
    assert grown < 16 * 1024, f"sidecar grew by {grown} KiB"
    assert curl_status("--http2-prior-knowledge", mesh.url("out-http", "/ok"))[0] == 200
