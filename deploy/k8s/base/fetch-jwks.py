#!/usr/bin/env python3
"""Copy the cluster's service-account JWKS into a file, for `secmesh ca serve` and `secmesh agent`.

Both validate Kubernetes service-account tokens against the cluster's JWKS (OIDC issuer
discovery, `/openid/v1/jwks`). Reading that endpoint needs the pod's own service-account token
and the cluster CA; secmesh's `--jwks https://…` fetcher sends neither today, so this runs once
as an init container and the components read the file. Restart the pods (`kubectl rollout
restart`) after the cluster rotates its service-account signing key.

    fetch-jwks.py OUT_FILE
Environment: JWKS_URL (https://kubernetes.default.svc/openid/v1/jwks), SA_DIR
(/var/run/secrets/kubernetes.io/serviceaccount), ATTEMPTS (30; 1 s backoff doubling to 10 s).
Logs are one JSON object per line; the token is never printed.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request


def fetch(url: str, sa_dir: str) -> dict:
    context = ssl.create_default_context(cafile=os.path.join(sa_dir, "ca.crt"))
    with open(os.path.join(sa_dir, "token"), encoding="ascii") as f:
        token = f.read().strip()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310 - https only
        doc = json.loads(response.read(1 << 20))
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise ValueError("the response is not a JWKS with at least one key")
    return doc


def log(msg: str, **fields: object) -> None:
    print(json.dumps({"msg": msg, **fields}), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_FILE", file=sys.stderr)
        return 2
    out = argv[1]
    url = os.environ.get("JWKS_URL", "https://kubernetes.default.svc/openid/v1/jwks")
    sa_dir = os.environ.get("SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
    attempts = max(1, int(os.environ.get("ATTEMPTS", "30")))
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            doc = fetch(url, sa_dir)
            break
        except (OSError, ValueError) as exc:  # URLError/HTTPError are OSErrors; bad JSON is a ValueError
            log("JWKS fetch failed", url=url, attempt=attempt, attempts=attempts, error=str(exc))
            if attempt == attempts:
                return 1
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    tmp = f"{out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, out)  # readers never see half a file
    log("JWKS written", url=url, path=out, keys=len(doc["keys"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
