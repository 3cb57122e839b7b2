"""One request/response exchange: authz → route → upstream stream, with retries, timeouts, backpressure.

MOSN's STREAM → PROXY step. The exchange sees only the stream model: downstream events of
its stream come in through `request_event`, upstream events through `upstream_event`, and it
answers through the two `CodecSide`s (`l7_flow.py` holds the backpressure rule). Authorization
runs first and a refusal is answered locally without touching any upstream. The request is
kept for a replay only while it fits `retry_buffer_limit` (route, else cluster; Envoy's
`per_request_buffer_limit_bytes`) and is complete: that makes a retry safe after a connect
failure, an upstream reset before the response, or a 5xx to an idempotent request
(`upstream.ClusterState.may_retry`), never once a response byte went out. A larger body streams
on without a copy (counted) and is not retried.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from secmesh.log import log_event
from secmesh.sidecar import l7_metrics
from secmesh.sidecar.authz_l7 import is_grpc, local_reply
from secmesh.sidecar.codec.headers import forward_request_headers, forward_response_headers
from secmesh.sidecar.codec.stream import (
    Data, ErrorCode, InformationalResponse, RequestHeaders, ResponseHeaders, StreamReset, Trailers, Upgrade,
)
from secmesh.sidecar.http_meta import grpc_timeout, request_id, translate, upstream_protocol, wants_websocket
from secmesh.sidecar.pool import HTTP1, HTTP2, UpstreamConn, UpstreamFailure
from secmesh.sidecar.upstream import ClusterState, Endpoint

log = logging.getLogger("secmesh.sidecar.http")


class Exchange:
    __slots__ = ("s", "env", "sid", "req", "grpc", "t0", "verdict", "route", "cluster", "proto", "headers", "authority",
                 "rid", "up", "usid", "ep", "tried", "attempt", "max_retries", "pending", "replay", "replay_bytes",
                 "replay_limit", "req_done", "sent", "resp_started", "status", "bytes_in", "bytes_out", "done", "timer",
                 "origin", "reason", "retrying", "connecting", "upgrade")

    def __init__(self, session: Any, req: RequestHeaders) -> None:
        self.s = session
        self.env = session.env
        self.sid = req.stream_id
        self.req = req
        self.grpc = False
        self.t0 = monotonic()
        self.verdict: Any = None
        self.route: Any = None
        self.cluster: ClusterState | None = None
        self.proto = HTTP1
        self.headers: list = []
        self.authority = req.authority
        self.rid = b""
        self.up: UpstreamConn | None = None
        self.usid = 0
        self.ep: Endpoint | None = None
        self.tried: list[Endpoint] = []
        self.attempt = self.max_retries = 0
        self.pending: list = []
        self.replay: list | None = []
        self.replay_bytes = self.replay_limit = 0
        self.req_done = req.end_stream
        self.sent = self.resp_started = False
        self.status = self.bytes_in = self.bytes_out = 0
        self.done = False
        self.timer: Any = None               # asyncio.TimerHandle | l7_flow.Deadline
        self.origin, self.reason = "upstream", ""
        self.retrying = self.connecting = False
        self.upgrade = b""           # b"websocket": the request asks for a tunnel (HTTP/1.1 only)

    # === start: authz → route → upstream ======================================================

    def start(self) -> None:
        s, env, req = self.s, self.env, self.req
        self.grpc = is_grpc(req.headers)
        v = self.verdict = env.authorizer.check(req, s.engine, s.residual)
        env.m_authz(v.allowed, v.code, v.policy)()
        if not v.allowed:
            log_event(log, logging.WARNING, "request refused", listener=env.name, status=v.status, reason=v.code,
                      policy=v.policy or None, detail=v.message, peer_id=s.peer_id, method=req.method.decode("latin-1"),
                      path=req.path[:200].decode("latin-1"), request_principal=v.principal,
                      **({"policy_source": str(v.ref.pos)} if v.ref is not None else {}))
            self.local(v.status, b"" if v.status != 401 else b"Jwt verification fails", v.policy)
            return
        route = self.route = env.router.route(req.authority, req.path, req.method, req.headers)
        cluster = env.clusters.get(route.cluster) if route is not None else None
        if cluster is None:
            self.reason = "no_route" if route is None else "unknown_cluster"
            self.local(404 if route is None else 503)
            return
        self.cluster = cluster
        raw = req.headers
        if v.remove_headers:
            raw = [(n, val) for n, val in raw if n not in v.remove_headers]
        if v.add_headers:
            raw = list(raw) + list(v.add_headers)
        headers, self.rid = forward_request_headers(raw, xfcc=s.xfcc, client_ip=s.client_ip, make_id=request_id)
        if not self.grpc and s.protocol == HTTP1 and wants_websocket(req.headers):
            self.upgrade = b"websocket"
        self.proto = upstream_protocol(cluster.cfg.protocol, env.upstream_protocol, s.protocol, grpc=self.grpc,
                                       tunnel=bool(self.upgrade))
        self.headers = translate(headers, s.protocol, self.proto)
        timeout = route.timeout if route.timeout is not None else float(cluster.cfg.request_timeout)
        gt = grpc_timeout(req.headers) if self.grpc else None
        if gt is not None and (not timeout or gt < timeout):
            self.timer = s.loop.call_later(gt, self._timed_out) if gt else None  # per-request value: own timer
        elif timeout:
            self.timer = env.deadlines.add(timeout, self._timed_out)
        self.max_retries = route.retries if route.retries is not None else cluster.cfg.retries
        limit = route.retry_buffer_limit
        self.replay_limit = cluster.cfg.retry_buffer_limit if limit is None else limit
        cluster.budget.requests += 1
        self._attempt()

    def _attempt(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        loop = self.s.loop
        ep = self.ep = cluster.balancer.pick(loop.time(), self.tried)
        ep.active += 1
        pool = self.env.clusters_mgr.pool(cluster, ep, self.proto)
        conn = pool.try_acquire()
        if conn is not None:
            self._bind(conn)
            return
        self.connecting = True
        self.s.hold(self.sid, 0)
        loop.create_task(self._connect(pool))

    async def _connect(self, pool: Any) -> None:
        try:
            conn = await pool.acquire()
        except UpstreamFailure as exc:
            self.connecting = False
            if not self.done:
                self._connect_failed(exc)
        except Exception as exc:  # a bug must not leave the client hanging
            self.connecting = False
            log_event(log, logging.ERROR, "upstream connect crashed", error=repr(exc))
            if not self.done:
                self.local(503)
        else:
            self.connecting = False
            if self.done:
                if not conn.multiplexed and conn.can_open:
                    pool.release(conn)
            else:
                self._bind(conn)
        finally:
            self.env.flusher.flush()

    def _bind(self, conn: UpstreamConn) -> None:
        self.up = conn
        req = self.req
        body = bool(self.pending) or not self.req_done
        self.usid = conn.open(self, req.method, self.authority, req.path, req.scheme or b"http", self.headers,
                              not body, self.upgrade)
        self.sent = True
        pending, self.pending = self.pending, []
        for ev in pending:                       # already held downstream: no second account
            self._forward(ev, account=False)
        if not conn.congested(self.usid):
            self.s.release(self.sid)

    def _connect_failed(self, exc: UpstreamFailure) -> None:
        cluster, ep = self.cluster, self.ep
        assert cluster is not None and ep is not None
        l7_metrics.upstream(cluster.name, exc.reason).inc()
        self.reason = exc.reason
        if exc.reason == "upstream_overflow":       # our own limit, not the endpoint's fault: no retry, and
            return self.local(503)                  # no log line per request in an overload (metric, access log)
        log_event(log, logging.WARNING, "upstream connect failed", listener=self.env.name, cluster=cluster.name,
                  upstream=ep.address, reason=exc.reason, detail=str(exc))
        self._endpoint_failed()
        if not self._retry(sent=False, status=None):
            self.local(503)

    def _endpoint_failed(self) -> None:
        cluster, ep = self.cluster, self.ep
        if cluster is not None and ep is not None and cluster.outlier.failure(ep, self.s.loop.time()):
            l7_metrics.upstream(cluster.name, "ejected").inc()
            log_event(log, logging.WARNING, "endpoint ejected", cluster=cluster.name, upstream=ep.address,
                      until_s=round(ep.ejected_until - self.s.loop.time(), 1), times=ep.times_ejected)

    def _retry(self, *, sent: bool, status: int | None) -> bool:
        cluster = self.cluster
        assert cluster is not None
        replayable = self.replay is not None and (self.req_done or not sent)
        if not cluster.may_retry(self.req.method, attempt=self.attempt + 1, max_retries=self.max_retries, sent=sent,
                                 status=status, replayable=replayable):
            if self.attempt < self.max_retries and replayable and not cluster.budget.allows():
                l7_metrics.upstream(cluster.name, "retry_budget_exhausted").inc()
            return False
        l7_metrics.upstream(cluster.name, "retry").inc()
        self._drop_upstream(reset=True)
        self.attempt += 1
        if not self.retrying:
            self.retrying = True
            cluster.budget.retries += 1
        self.pending = (self.replay or []) + self.pending
        self.replay, self.replay_bytes, self.sent = [], 0, False
        self._attempt()
        return True

    def _drop_upstream(self, *, reset: bool) -> None:
        if self.ep is not None:
            self.ep.active -= 1
            self.tried.append(self.ep)
            self.ep = None
        up, self.up = self.up, None
        if up is not None:
            up.done(self.usid, reset=reset)

    # === request direction ======================================================================

    def request_event(self, ev: Any) -> None:
        t = type(ev)
        if t is Data or t is Trailers:
            if self.done:
                return
            if t is Data:
                self.bytes_in += len(ev.data)
                if ev.end_stream:
                    self.req_done = True
            else:
                self.req_done = True
            if self.up is None:
                self.pending.append(ev)
                if t is Data and ev.data:
                    self.s.hold(self.sid, len(ev.data))
            else:
                self._forward(ev)
        elif t is StreamReset:
            self.reason = "downstream_reset"
            self.finish(reset_upstream=True)

    def _forward(self, ev: Any, account: bool = True) -> None:
        up = self.up
        assert up is not None
        if self.replay is not None:
            self.replay_bytes += len(ev.data) if type(ev) is Data else 0
            if self.replay_bytes > self.replay_limit:
                self.replay = None               # from here on the body streams without a copy: no retry
                up.pool.m_unbuffered.inc()
            else:
                self.replay.append(ev)
        if type(ev) is Data:
            up.codec.send_data(self.usid, ev.data, ev.end_stream)
            up.mark()
            n = len(ev.data)
            if not account:
                pass
            elif up.congested(self.usid):
                self.s.hold(self.sid, n)
            else:
                self.s.consumed(self.sid, n)
        else:
            up.codec.send_trailers(self.usid, ev.headers)
            up.mark()

    def upstream_writable(self) -> None:
        self.s.release(self.sid)

    def downstream_writable(self) -> None:
        if self.up is not None:
            self.up.release(self.usid)

    # === response direction =====================================================================

    def upstream_event(self, ev: Any) -> None:
        if self.done:
            return
        t = type(ev)
        s = self.s
        if t is Data:
            n = len(ev.data)
            self.bytes_out += n
            s.codec.send_data(self.sid, ev.data, ev.end_stream)
            s.mark()
            up = self.up
            if up is not None:
                if s.write_paused or (s.multiplexed and s.congested(self.sid)):
                    up.hold(self.usid, n)
                elif up.multiplexed:
                    up.consumed(self.usid, n)
            if ev.end_stream:
                self._response_done()
        elif t is ResponseHeaders:
            self._response_headers(ev)
        elif t is Trailers:
            s.codec.send_trailers(self.sid, ev.headers)
            s.mark()
            self._response_done()
        elif t is StreamReset:
            self._upstream_reset(ev)
        elif t is InformationalResponse:
            if not self.resp_started and (s.protocol == HTTP2 or self.req.expect_continue):
                s.codec.send_informational(self.sid, ev.status, forward_response_headers(ev.headers))
                s.mark()
        elif t is Upgrade:
            if not self.upgrade:
                self.reason = "unexpected_upgrade"
                self._drop_upstream(reset=True)
                self.local(502)

    def _response_headers(self, ev: ResponseHeaders) -> None:
        cluster = self.cluster
        assert cluster is not None and self.ep is not None
        status = ev.status
        if status >= 500 and not self.grpc:
            self._endpoint_failed()
            if self._retry(sent=True, status=status):
                return
        else:
            cluster.outlier.success(self.ep)
        self.status = status
        self.resp_started = True
        if status == 101 and self.timer is not None:    # a tunnel lives as long as its two ends want
            self.timer.cancel()
            self.timer = None
        s = self.s
        s.codec.send_response(self.sid, status, ev.headers if ev.hop_free else forward_response_headers(ev.headers),
                              ev.end_stream)
        s.mark()
        if status == 101:
            s.tunnel_opened()
        elif ev.end_stream:
            self._response_done()

    def _upstream_reset(self, ev: StreamReset) -> None:
        self.reason = ev.reason or "upstream_reset"
        if self.cluster is not None:
            l7_metrics.upstream(self.cluster.name, "reset").inc()
        if not self.resp_started:
            if self.up is not None:
                self.up.streams.pop(self.usid, None)
            self._endpoint_failed()
            if self._retry(sent=True, status=None):
                return
            self.local(502)
            return
        self.s.reset(self.sid)
        self.finish()

    def _response_done(self) -> None:
        self.finish()

    # === local answers, timeouts, the end =======================================================

    def local(self, status: int, detail: bytes = b"", policy: str = "") -> None:
        if self.done:
            return
        self.origin = "local"
        s = self.s
        if self.resp_started:
            s.reset(self.sid)
        else:
            st, headers, body = local_reply(status, grpc=self.grpc, detail=detail, policy=policy,
                                            name_policy=self.env.deny_header)
            self.status = status
            s.codec.send_response(self.sid, st, headers, not body)
            if body:
                s.codec.send_data(self.sid, body, True)
            s.mark()
            self.resp_started = True
        self.finish(reset_upstream=True)

    def _timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.cluster is not None:
            l7_metrics.upstream(self.cluster.name, "timeout").inc()
        self.reason = "request_timeout"
        self.local(504)
        self.env.flusher.flush()

    def finish(self, *, reset_upstream: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        cluster = self.cluster
        if cluster is not None:
            cluster.budget.requests -= 1
            if self.retrying:
                cluster.budget.retries -= 1
        self._drop_upstream(reset=reset_upstream or not self.req_done)
        self.pending = []
        self.replay = None
        s = self.s
        if not self.req_done and s.multiplexed and not s.closed:
            s.codec.reset_stream(self.sid, ErrorCode.NO_ERROR)   # answered: stop the rest of the body (RFC 9113 §8.1)
            s.mark()
        s.stream_finished(self)
        env = self.env
        env.m_requests(self.status, self.origin)()
        if env.access_log is not None:
            env.access_log.emit(self)
