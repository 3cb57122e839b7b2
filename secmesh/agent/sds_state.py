"""Pure per-stream SDS bookkeeping: what to do with each DiscoveryRequest and each cache change.

Mirrors istio's `pkg/xds` `ShouldRespond` as used by the agent's SDS server:

1. `error_detail` set → NACK: log it, count it, keep the last good secret, send nothing.
2. empty `resource_names` → the client unsubscribed from everything (SDS is not a wildcard
   type): forget the watch, send nothing.
3. no `response_nonce`, or no watch yet → initial request or reconnect: watch the names and
   respond with all of them.
4. nonce ≠ the last nonce sent → stale (an ACK overtaken by a newer push): ignore.
5. nonce matches → ACK; if names were added respond with only the added names, if names were
   removed just shrink the watch.

A push (the cache says `default` and/or `ROOTCA` changed) is sent only for names the stream
watches and only after its first response, exactly like istio's `push` (`requested(name)`).
No I/O, no clock reads: the caller passes the stamp used for `version_info`.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

from secmesh.agent.secrets import SECRET_TYPE_URL

INITIAL, ACK, NACK, STALE, UNSUBSCRIBE, MORE = "initial", "ack", "nack", "stale", "unsubscribe", "more"

_versions = itertools.count(1)


def next_version(stamp: str) -> str:
    """istio's `time.Now().Format(RFC3339) + "/" + counter`: unique and increasing per process."""
    return f"{stamp}/{next(_versions)}"


def version_counter(version_info: str) -> int:
    """The increasing counter of a version we minted (0 for anything else)."""
    tail = version_info.rpartition("/")[2]
    return int(tail) if tail.isdigit() else 0


@dataclass(frozen=True)
class Decision:
    kind: str                       # INITIAL, ACK, NACK, STALE, UNSUBSCRIBE or MORE
    respond: tuple[str, ...] = ()   # names to send now (empty = send nothing)
    error: str = ""                 # NACK error_detail message


@dataclass
class SdsStreamState:
    watched: tuple[str, ...] = ()
    last_nonce: str = ""
    last_version: str = ""          # version of the last response sent
    acked_version: str = ""         # version the client last applied
    last_error: str = ""            # the client's last NACK message
    responses: int = 0
    sent_versions: dict[str, int] = field(default_factory=dict)  # change kind → newest version sent
    nonce_factory: Callable[[], str] = field(default=lambda: uuid.uuid4().hex, repr=False)

    def on_request(self, *, resource_names: Iterable[str], response_nonce: str, version_info: str,
                   error_message: str | None, type_url: str) -> Decision:
        names = tuple(dict.fromkeys(resource_names))  # de-duplicated, order kept
        if type_url and type_url != SECRET_TYPE_URL:
            from secmesh.errors import SdsError

            raise SdsError(f"type_url {type_url!r} is not {SECRET_TYPE_URL}", reason="malformed_request")
        if error_message is not None:
            if response_nonce and response_nonce == self.last_nonce:
                self.last_error = error_message
            return Decision(NACK, error=error_message)
        if not names:
            self.watched = ()
            return Decision(UNSUBSCRIBE)
        if not response_nonce or not self.watched:
            self.watched = names
            return Decision(INITIAL, respond=names)
        if response_nonce != self.last_nonce:
            return Decision(STALE)
        self.acked_version = version_info
        self.last_error = ""
        added = tuple(n for n in names if n not in self.watched)
        self.watched = names
        if added:
            return Decision(MORE, respond=added)
        return Decision(ACK)

    def on_change(self, changed: Iterable[str], kind_of: Callable[[str], str],
                  current: dict[str, int] | None = None) -> tuple[str, ...]:
        """Names to push for a cache change (`changed` holds change kinds: `default`, `ROOTCA`).

        `current` maps each kind to the cache's version now; a kind whose current version this
        stream was already sent (the change raced with the response that carried it) is skipped.
        """
        if not self.responses:
            return ()
        kinds = {k for k in changed if current is None or current.get(k) != self.sent_versions.get(k)}
        return tuple(n for n in self.watched if kind_of(n) in kinds)

    def record_sent(self, version: str, nonce: str, kind_versions: dict[str, int] | None = None) -> None:
        self.last_version = version
        self.last_nonce = nonce
        self.responses += 1
        if kind_versions:
            self.sent_versions.update(kind_versions)

    def new_nonce(self) -> str:
        return self.nonce_factory()
