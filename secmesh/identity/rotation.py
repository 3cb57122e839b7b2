"""When to rotate a certificate: istio-agent's formula as a pure function of its inputs.

istio-agent (`secretcache.go rotateTime`) keeps a *grace period* of `ratio × lifetime` before
expiry and fires at `expiry − grace`; the ratio is jittered by up to ±`jitter` so a fleet issued
at the same moment does not renew in one burst (0.01 of 24h ≈ ±15 minutes). With the default
ratio 0.5 a 24h certificate is rotated after ~12h.

`fraction` here is that grace ratio (Istio's SECRET_GRACE_PERIOD_RATIO: the share of the lifetime
*left* when rotation fires). Randomness is injected (`rand() -> float in [0, 1)`), so tests are
deterministic and the agent decides once per certificate when to fire. Istio draws the sign and
magnitude separately (with a third of the mass on "no jitter"); here one draw maps uniformly onto
[−jitter, +jitter], which has the same bounds.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Callable

DEFAULT_FRACTION = 0.5
DEFAULT_JITTER = 0.01

Rand = Callable[[], float]


def _check(not_before: dt.datetime, not_after: dt.datetime, fraction: float, jitter: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rotation fraction must be within [0, 1], got {fraction}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"rotation jitter must be within [0, 1], got {jitter}")
    if not_after < not_before:
        raise ValueError("certificate not_after precedes not_before")


def jittered_fraction(fraction: float, jitter: float, rand: Rand) -> float:
    """`fraction ± jitter`, from one uniform draw, clamped to [0, 1] as Istio clamps it."""
    u = rand()
    return min(1.0, max(0.0, fraction + (2.0 * u - 1.0) * jitter))


def rotate_at(not_before: dt.datetime, not_after: dt.datetime, fraction: float = DEFAULT_FRACTION,
              jitter: float = DEFAULT_JITTER, rand: Rand = random.random) -> dt.datetime:
    """The instant to rotate: `not_after − jittered_fraction × (not_after − not_before)`."""
    _check(not_before, not_after, fraction, jitter)
    grace = (not_after - not_before) * jittered_fraction(fraction, jitter, rand)
    return not_after - grace


def should_rotate(now: dt.datetime, not_before: dt.datetime, not_after: dt.datetime,
                  fraction: float = DEFAULT_FRACTION, jitter: float = DEFAULT_JITTER,
                  rand: Rand = random.random) -> bool:
    """True once `now` has reached the rotation instant (always true for an expired certificate)."""
    if now >= not_after:
        return True
    return now >= rotate_at(not_before, not_after, fraction, jitter, rand)


def delay_until_rotation(now: dt.datetime, not_before: dt.datetime, not_after: dt.datetime,
                         fraction: float = DEFAULT_FRACTION, jitter: float = DEFAULT_JITTER,
                         rand: Rand = random.random) -> dt.timedelta:
    """Istio's `max(rotate_at − now, 0)`: how long a timer should sleep before rotating."""
    return max(rotate_at(not_before, not_after, fraction, jitter, rand) - now, dt.timedelta(0))
