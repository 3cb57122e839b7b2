"""Mint Kubernetes-style service-account tokens for tests, with a JWKS file the CA and agent can load.

This stands in for the Kubernetes API server's token issuer (which cannot exist here); the
tokens have the shape a projected service-account token has (`iss`, `aud`, `sub`
`system:serviceaccount:NS:SA`, `exp`, `iat`, `nbf`, `kubernetes.io` claims).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_AUDIENCE = "istio-ca"


class TokenIssuer:
    def __init__(self, issuer: str = DEFAULT_ISSUER, kid: str | None = None) -> None:
        self.issuer = issuer
        self.kid = kid or uuid.uuid4().hex[:16]
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(self, namespace: str = "default", service_account: str = "default", *,
              audience: str | list[str] | None = DEFAULT_AUDIENCE, ttl: int = 3600, now: float | None = None,
              issuer: str | None = None, extra: dict[str, Any] | None = None, sub: str | None = None,
              key: ec.EllipticCurvePrivateKey | None = None) -> str:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": sub if sub is not None else f"system:serviceaccount:{namespace}:{service_account}",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + ttl),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "pod": {"name": f"{service_account}-0", "uid": str(uuid.uuid4())},
            },
        }
        if audience is not None:
            claims["aud"] = audience
        if extra:
            claims.update(extra)
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": self.kid})
