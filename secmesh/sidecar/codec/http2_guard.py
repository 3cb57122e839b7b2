"""Rapid-reset protection (CVE-2023-44487), pure: a clock is injected, nothing else is touched.

The attack opens streams and cancels them at once, so the server starts work that nobody
waits for, at no cost to the client. We count *premature* resets (the client reset a stream
before our response on it had ended, or made h2 reset it with a stream error: MadeYouReset,
CVE-2025-8671; plus streams we had to refuse) in a sliding window of
one-second buckets. The guard trips when, inside the window, there are more than `limit` of
them **and** they are at least `ratio` of the streams opened there. The ratio part is Envoy's
idea (premature_reset_total_stream_count with a 50 % share): a busy, healthy gRPC client that
cancels some calls by deadline never trips it, a reset loop always does.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class ResetLimits:
    limit: int = 100          # premature resets tolerated in the window…
    window: float = 10.0      # …of this many seconds…
    ratio: float = 0.5        # …unless they are under this share of streams opened


class RapidResetGuard:
    def __init__(self, limits: ResetLimits = ResetLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: deque[list[int]] = deque()   # [second, streams opened, premature resets]
        self._opened = 0
        self._resets = 0

    def _bucket(self) -> list[int]:
        now = int(self._clock())
        buckets = self._buckets
        horizon = now - int(self._limits.window)
        while buckets and buckets[0][0] <= horizon:
            _, opened, resets = buckets.popleft()
            self._opened -= opened
            self._resets -= resets
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, 0, 0])
        return buckets[-1]

    def opened(self) -> None:
        """A stream was opened by the peer."""
        self._bucket()[1] += 1
        self._opened += 1

    def premature_reset(self) -> bool:
        """Count one; True means the connection must go (GOAWAY ENHANCE_YOUR_CALM)."""
        self._bucket()[2] += 1
        self._resets += 1
        lim = self._limits
        return self._resets > lim.limit and self._resets >= lim.ratio * self._opened

    @property
    def counts(self) -> tuple[int, int]:
        """(streams opened, premature resets) inside the current window."""
        self._bucket()
        return self._opened, self._resets
