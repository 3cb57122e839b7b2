"""Per-request authorization, after header decode and before routing. Pure, clock injected.

Order (Istio's): RequestAuthentication first — a token that is present but fails → 401, even
if a policy would allow; no token → no request principal — then the AuthorizationPolicy
decision the connection left open (`Engine.decide_request(residual, attrs)`). A DENY is
answered locally and no upstream is touched: 403 with a short body, or for gRPC a
trailers-only response with `grpc-status: 7` (PERMISSION_DENIED). Unless configured off, a
header names the denying policy (`x-secmesh-denied-by: ns[..]-policy[..]-rule[..]`), which
Envoy's bare "RBAC: access denied" never did; the log gets the full reference
(file:line:col). Tokens are never logged, only the request principal (iss/sub).

`Verdict` is what the proxy acts on; `local_reply` turns a refusal into (status, headers, body).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from secmesh.errors import PolicyError
from secmesh.policy.attrs import RequestAttrs
from secmesh.policy.decision import Decision, RuleRef
from secmesh.policy.normalize import PathNormalization, normalize_path
from secmesh.sidecar.authz_policy import policy_label
from secmesh.sidecar.codec.stream import Headers, RequestHeaders

DENIED_BY = b"x-secmesh-denied-by"
GRPC_PERMISSION_DENIED = b"7"
GRPC_UNAUTHENTICATED = b"16"
_MEMO_MAX = 4096


@dataclass(slots=True)   # (not frozen: a frozen init is one object.__setattr__ per field; never mutated)
class Verdict:
    allowed: bool
    status: int = 0                     # the local answer when refused: 401, 403 or 400
    code: str = "no_authz"              # closed reason (metric label / access log)
    policy: str = ""                    # policy label ("" when no policy decided)
    message: str = ""                   # for the log (names the policy and its source position)
    principal: str | None = None        # request principal (iss/sub) when a token verified
    remove_headers: tuple[bytes, ...] = ()
    add_headers: Headers = ()           # type: ignore[assignment]
    ref: RuleRef | None = None


ALLOW_NO_AUTHZ = Verdict(True)


def is_grpc(headers: Headers) -> bool:
    for n, v in headers:
        if n == b"content-type":
            return v.startswith(b"application/grpc")
    return False


def _str_headers(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, v in headers:
        name = n.decode("latin-1")
        value = v.decode("latin-1")
        prev = out.get(name)
        out[name] = value if prev is None else prev + "," + value
    return out


class RequestAuthorizer:
    """One listener's L7 checks. `authenticator` is a `RequestAuthenticator` (or None), `keys` a
    `JwksSource` for remote key sets; both may be swapped by a policy reload (read per call)."""

    def __init__(self, *, normalization: str = "BASE", now: Callable[[], float],
                 authenticator: Callable[[], Any] = lambda: None, keys: Any = None) -> None:
        self._norm = PathNormalization(normalization)
        self._paths: dict[bytes, str] = {}       # raw path → normalized (paths repeat; bounded)
        self._verdicts: dict[int, tuple[Decision, Verdict]] = {}   # id(decision) → plain verdict
        self._now = now
        self._authn = authenticator
        self._keys = keys

    def check(self, req: RequestHeaders, engine: Any, residual: Any) -> Verdict:
        """`engine`/`residual` from the connection's L4 decision; None when no policy engine runs."""
        authn = self._authn()
        principal = None
        claims = None
        remove: tuple[bytes, ...] = ()
        add: Headers = []
        hdrs: dict[str, str] | None = None
        if authn is not None and authn.providers:
            hdrs = _str_headers(req.headers)
            path = req.path.decode("latin-1")
            _, _, query = path.partition("?")
            res = authn.authenticate(hdrs, query, self._now(), self._keys)
            if res.status == "invalid":
                return Verdict(False, 401, "jwt_invalid", "", f"request authentication failed: {res.message}")
            if res.status in ("ok", "none"):
                # claim-output header names are stripped even without a token, so a client cannot forge them
                remove = tuple(h.encode() for h in res.remove_headers)
            if res.status == "ok":
                claims, principal = res.claims, res.principal
                add = [(k.lower().encode(), v.encode()) for k, v in res.add_headers]
        if engine is None or residual is None:
            if principal is None and not remove and not add:
                return ALLOW_NO_AUTHZ
            return Verdict(True, 0, "no_authz", "", "", principal, remove, add)
        final = getattr(residual, "final", None)
        if final is not None and claims is None:
            return self._verdict(final, principal, remove, add)
        path = self._paths.get(req.path)
        if path is None:
            try:
                path = normalize_path(req.path.decode("latin-1"), self._norm)
            except PolicyError as exc:
                return Verdict(False, 400, "invalid_path", "", exc.message, principal)
            if len(self._paths) >= _MEMO_MAX:
                self._paths.clear()
            self._paths[req.path] = path
        attrs = RequestAttrs.of_decoded(req.method.decode("latin-1"), path, req.authority.decode("latin-1"),
                                        hdrs if hdrs is not None else _str_headers(req.headers), claims)
        d = engine.decide_request(residual, attrs)
        if principal is None and not remove and not add:
            # The engine memoizes its decisions: the verdict of a decision is built once.
            hit = self._verdicts.get(id(d))
            if hit is not None and hit[0] is d:
                return hit[1]
            v = self._verdict(d, None, (), [])
            if len(self._verdicts) >= _MEMO_MAX:
                self._verdicts.clear()
            self._verdicts[id(d)] = (d, v)
            return v
        return self._verdict(d, principal, remove, add)

    @staticmethod
    def _verdict(d: Decision, principal: str | None, remove: tuple[bytes, ...], add: Headers) -> Verdict:
        label = policy_label(d.policy)
        if d.allowed:
            return Verdict(True, 0, d.reason.value, label, "", principal, remove, add, d.policy)
        return Verdict(False, 403, d.reason.value, label, d.message(), principal, ref=d.policy)


def local_reply(status: int, *, grpc: bool, detail: bytes = b"", policy: str = "",
                name_policy: bool = True) -> tuple[int, Headers, bytes]:
    """A response the sidecar makes itself: (HTTP status, headers, body).

    gRPC clients read the status from `grpc-status`, so a gRPC refusal is HTTP 200 with a
    trailers-only response (headers + END_STREAM) carrying grpc-status / grpc-message.
    """
    headers: Headers = []
    if name_policy and policy:
        headers.append((DENIED_BY, policy.encode()))
    if grpc:
        code = {401: GRPC_UNAUTHENTICATED, 403: GRPC_PERMISSION_DENIED}.get(status, _grpc_code(status))
        return 200, [(b"content-type", b"application/grpc"), (b"grpc-status", code),
                     (b"grpc-message", detail.replace(b"\r", b" ").replace(b"\n", b" "))] + headers, b""
    body = detail or REASONS.get(status, b"error")
    if name_policy and policy and not detail:
        body += b" by " + policy.encode()     # Envoy says only "RBAC: access denied"; we say which policy
    body += b"\n"
    headers += [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="secmesh"'))
    return status, headers, body


REASONS = {400: b"bad request", 401: b"Jwt verification fails", 403: b"RBAC: access denied",
           404: b"no route", 408: b"request timeout", 413: b"payload too large",
           502: b"upstream connect error or disconnect/reset before headers",
           503: b"no healthy upstream", 504: b"upstream request timeout"}


def _grpc_code(status: int) -> bytes:
    """HTTP → gRPC status (grpc/doc/http-grpc-status-mapping.md)."""
    return {400: b"13", 404: b"12", 408: b"4", 429: b"14", 502: b"14", 503: b"14", 504: b"4"}.get(status, b"2")
