"""Injected time, so that cores never call time() themselves and tests can move time by hand."""

from __future__ import annotations

import datetime as _dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> _dt.datetime:
        """Current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.timezone.utc)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: _dt.datetime | None = None) -> None:
        self._now = start or _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)

    def now(self) -> _dt.datetime:
        return self._now

    def advance(self, delta: _dt.timedelta | float) -> None:
        if not isinstance(delta, _dt.timedelta):
            delta = _dt.timedelta(seconds=delta)
        self._now += delta


SYSTEM_CLOCK = SystemClock()
