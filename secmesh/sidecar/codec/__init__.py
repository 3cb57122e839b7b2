"""Codecs: bytes ⇄ the protocol-neutral stream model (`stream.py`), sans-I/O.

`detect.detect()` names a protocol per connection; `server_codec` / `client_codec` build the
codec its `detect.Rule` names (imported on first use, so `import secmesh.sidecar.codec` stays
light). `headers.py` holds the pure header rewrites a proxy applies between two codecs.
"""

from __future__ import annotations

import importlib
from typing import Any

from secmesh.sidecar.codec import detect


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def server_codec(protocol: str, **options: Any) -> Any:
    """The downstream codec (`stream.ServerCodec`) for a detected protocol; None for TCP."""
    rule = detect.rule_for(protocol)
    return _load(rule.server)(**options) if rule is not None and rule.server else None


def client_codec(protocol: str, **options: Any) -> Any:
    """The upstream codec (`stream.ClientCodec`) for a protocol; None for TCP."""
    rule = detect.rule_for(protocol)
    return _load(rule.client)(**options) if rule is not None and rule.client else None
