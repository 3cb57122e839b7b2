"""Service-account tokens for the demo's "pods", signed like a Kubernetes API server would sign them.

There is no Kubernetes here, so the demo plays the API server: one ES256 key, a JWKS file the CA
and the agents trust, and one projected token (audience `istio-ca`) per workload. The claims have
the shape of a real projected token so the agent and CA code paths are the production ones.
Tokens are written 0600 and never printed.
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

from secmesh.identity.keys import write_atomic

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "istio-ca"


class TokenMinter:
    """One signing key (the "API server"), its JWKS, and tokens for `system:serviceaccount:NS:SA`."""

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.kid = uuid.uuid4().hex[:16]
        self._key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    def write_jwks(self, path: Path) -> Path:
        write_atomic(path, json.dumps(self.jwks()).encode(), 0o644)
        return path

    def claims(self, namespace: str, service_account: str, *, ttl: int, now: float) -> dict[str, Any]:
        return {
            "iss": self.issuer,
            "aud": [AUDIENCE],
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": int(now), "nbf": int(now), "exp": int(now + ttl),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                "pod": {"name": f"{service_account}-0", "uid": str(uuid.uuid4())},
            },
        }

    def token(self, namespace: str, service_account: str, *, ttl: int = 3600, now: float | None = None) -> str:
        claims = self.claims(namespace, service_account, ttl=ttl, now=time.time() if now is None else now)
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})

    def write_token(self, path: Path, namespace: str, service_account: str, *, ttl: int = 3600) -> Path:
        write_atomic(path, self.token(namespace, service_account, ttl=ttl).encode(), 0o600)
        return path
