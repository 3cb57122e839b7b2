"""Composition of the L7 data path for one worker: clusters, pools, routers, authorizers, JWKS.

Built once per worker from the (immutable) config; `env_for` gives each `protocol: http`
listener its `L7Env`. A listener without routes gets an implicit cluster named after it
(`<listener>.upstream`) that points at its `upstream`: outbound with mTLS and the listener's
`peer_ids`/`sni`, inbound as plaintext to the app.

Remote JWKS for RequestAuthentication are fetched off the event loop (`run_in_executor` with
the synchronous `UrllibJwksFetcher`) by `JwksRefresher`, never blocking start-up: until keys
arrive, a request whose token needs them gets 401 ("Jwks remote fetch is failed"), as Envoy
answers when its fetch fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable

from secmesh.identity.spiffe import TrustDomain
from secmesh.log import log_event
from secmesh.sidecar.accesslog import AccessLog
from secmesh.sidecar.authz_l7 import RequestAuthorizer
from secmesh.sidecar.http_proxy import L7Env
from secmesh.sidecar.l7_config import ClusterConfig, HttpConfig
from secmesh.sidecar.l7_flow import Flusher
from secmesh.sidecar.l7_tls import AlpnContexts
from secmesh.sidecar.clusters import ClusterManager
from secmesh.sidecar.router import Router
from secmesh.sidecar.upstream import ClusterState

log = logging.getLogger("secmesh.sidecar.l7")


def implicit_cluster(listener: Any, http: HttpConfig) -> ClusterConfig:
    """The cluster of a listener without routes: its own upstream."""
    outbound = listener.kind == "outbound"
    return ClusterConfig(name=f"{listener.name}.upstream", endpoints=[listener.upstream], tls=outbound,
                         peer_ids=list(listener.peer_ids) if outbound else [], sni=listener.sni if outbound else "",
                         protocol=http.upstream_protocol, connect_timeout=listener.connect_timeout)


class JwksRefresher:
    """Keeps a `JwksCache` filled for the remote `jwks_uri`s the current authenticator names."""

    def __init__(self, cache: Any, sources: Callable[[], Iterable[tuple[str, float]]], fetcher: Any = None,
                 now: Callable[[], float] = time.time, interval: float = 1.0) -> None:
        if fetcher is None:
            from secmesh.policy.jwks_http import UrllibJwksFetcher

            fetcher = UrllibJwksFetcher()
        self.cache, self.sources, self.fetcher, self.now = cache, sources, fetcher, now
        self.interval = interval

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sources = list(self.sources())
            self.cache.retain([uri for uri, _ in sources])  # forget keys of rules a reload removed
            for uri, timeout in sources:
                if not self.cache.due(uri, self.now()):
                    continue
                try:
                    text = await loop.run_in_executor(None, self.fetcher.fetch, uri, timeout)
                except Exception as exc:  # any fetch failure: back off, keep old keys
                    error = str(exc)[:200]
                    self.cache.failed(uri, self.now(), error)
                    log_event(log, logging.WARNING, "JWKS fetch failed", uri=uri, error=error)
                    continue
                self.cache.update(uri, text, self.now())
            await asyncio.sleep(self.interval)


class L7Runtime:
    """Per-worker L7 state shared by every HTTP listener of the worker."""

    def __init__(self, *, clusters: list[ClusterConfig], listeners: list[tuple[Any, HttpConfig]],
                 holder: Any, trust_domain: TrustDomain | None, loop: asyncio.AbstractEventLoop,
                 min_version: str = "1.3", ciphers_tls12: str = "ECDHE+AESGCM:ECDHE+CHACHA20",
                 authenticator: Callable[[], Any] = lambda: None, access_log: bool = True) -> None:
        self.loop = loop
        self.flusher = Flusher()
        self.contexts = AlpnContexts(holder, min_version=min_version, ciphers_tls12=ciphers_tls12) \
            if holder is not None else None
        states = {c.name: ClusterState(c) for c in clusters}
        self._implicit: dict[str, str] = {}
        for lcfg, http in listeners:
            if not http.routes:
                c = implicit_cluster(lcfg, http)
                states[c.name] = ClusterState(c)
                self._implicit[lcfg.name] = c.name
        self.manager = ClusterManager(states, loop=loop, flusher=self.flusher, contexts=self.contexts,
                                      trust_domain=trust_domain)
        self.authenticator = authenticator
        self.access_log = AccessLog(loop) if access_log else None
        from secmesh.policy.requestauth import JwksCache

        self.jwks = JwksCache()
        self.envs: list[L7Env] = []

    def env_for(self, lcfg: Any, http: HttpConfig) -> L7Env:
        default = self._implicit.get(lcfg.name)
        router = Router(http.routes, default)
        missing = router.clusters - set(self.manager.clusters)
        if missing:
            raise ValueError(f"listener {lcfg.name}: routes name unknown clusters: {', '.join(sorted(missing))}")
        authorizer = RequestAuthorizer(normalization=http.path_normalization, now=time.time,
                                       authenticator=self.authenticator, keys=self.jwks)
        env = L7Env(lcfg.name, http, loop=self.loop, flusher=self.flusher, authorizer=authorizer, router=router,
                    clusters_mgr=self.manager, access_log=self.access_log)
        self.envs.append(env)
        return env

    def jwks_task(self) -> asyncio.Task[None]:
        def sources() -> list[tuple[str, float]]:
            a = self.authenticator()
            return a.remote_sources if a is not None else []

        return self.loop.create_task(JwksRefresher(self.jwks, sources).run(), name="jwks")

    def drain(self) -> None:
        for env in self.envs:
            env.drain()

    def close(self) -> None:
        self.manager.close()
        if self.access_log is not None:
            self.access_log.flush()


class AuthnSource:
    """The RequestAuthenticator of the policy set in force, rebuilt off the loop after each reload.

    A `PolicySnapshot` carries the compiled AuthorizationPolicy engine; RequestAuthentication
    needs the loaded `PolicySet`, taken from the snapshot when it keeps one (`policies`) or
    loaded again from the same files in a worker thread. Until a reload's authenticator is
    ready, the previous one keeps answering (a window of one file load).
    """

    def __init__(self, source: Any, workload: Any, root_namespace: str, initial: Any = None) -> None:
        self.source = source
        self.workload = workload
        self.root_namespace = root_namespace
        self.authenticator: Any = None
        if source is not None:
            self.authenticator = self.build(source.current) if initial is None else initial

    def build(self, snap: Any) -> Any:
        from secmesh.policy.requestauth import RequestAuthenticator

        policies = getattr(snap, "policies", None)
        if policies is None:
            if not _mentions_request_authentication(snap.path):
                return None                      # the common case: no YAML parse at all
            from secmesh.policy.load import load_policies

            policies = load_policies(snap.path)
        authn = RequestAuthenticator(policies, self.workload, self.root_namespace)
        return authn if authn.providers else None

    def __call__(self) -> Any:
        return self.authenticator

    def on_reload(self, snap: Any) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.build, snap)

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log_event(log, logging.ERROR, "RequestAuthentication reload failed; keeping the previous rules",
                          error=repr(exc))
                return
            if self.source.current is snap:
                self.authenticator = f.result()

        fut.add_done_callback(done)


def _mentions_request_authentication(path: str) -> bool:
    """A cheap text scan before a full YAML load (large AuthorizationPolicy sets take seconds to parse)."""
    from secmesh.errors import SecmeshError
    from secmesh.policy.yamlsrc import policy_files

    try:
        files = policy_files(path)
    except SecmeshError:
        return True
    for f in files:
        try:
            if b"RequestAuthentication" in open(f, "rb").read():
                return True
        except OSError:
            return True
    return False
