"""Rotation timing: istio-agent's `expiry − jitterRatio × lifetime`, with randomness injected."""

from __future__ import annotations

import datetime as dt

import pytest

from secmesh.identity.rotation import delay_until_rotation, jittered_fraction, rotate_at, should_rotate

NB = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
NA = NB + dt.timedelta(hours=24)
H = dt.timedelta(hours=1)


def const(u: float):
    return lambda: u


@pytest.mark.parametrize(("u", "expected"), [
    (0.5, NB + 12 * H),                                        # no jitter: half-life
    (0.0, NB + 12 * H + dt.timedelta(minutes=14, seconds=24)),  # ratio 0.49 → grace 11h45m36s
    (1.0, NB + 12 * H - dt.timedelta(minutes=14, seconds=24)),  # ratio 0.51 → grace 12h14m24s
])
def test_default_24h_cert_rotates_near_12h(u: float, expected: dt.datetime) -> None:
    assert rotate_at(NB, NA, rand=const(u)) == expected


def test_jitter_stays_within_bounds() -> None:
    for i in range(101):
        t = rotate_at(NB, NA, 0.5, 0.01, rand=const(i / 101))
        assert NB + 12 * H - dt.timedelta(minutes=15) < t < NB + 12 * H + dt.timedelta(minutes=15)


@pytest.mark.parametrize(("fraction", "jitter", "u", "expected_ratio"), [
    (0.5, 0.0, 0.9, 0.5),
    (0.2, 0.1, 0.0, 0.1),   # grace ratio 0.2 − 0.1: rotate when 10 % of the lifetime is left
    (0.2, 0.1, 1.0, 0.3),
    (0.0, 0.1, 1.0, 0.1),
    (0.0, 0.1, 0.0, 0.0),   # clamped at 0: rotate at expiry
    (1.0, 0.1, 1.0, 1.0),   # clamped at 1: rotate at issuance
    (1.0, 0.1, 0.0, 0.9),
])
def test_fraction_is_the_share_of_lifetime_left(fraction, jitter, u, expected_ratio) -> None:
    assert jittered_fraction(fraction, jitter, const(u)) == pytest.approx(expected_ratio)
    assert rotate_at(NB, NA, fraction, jitter, const(u)) == NA - (NA - NB) * expected_ratio


def test_should_rotate() -> None:
    r = const(0.5)
    assert not should_rotate(NB, NB, NA, rand=r)
    assert not should_rotate(NB + 12 * H - dt.timedelta(seconds=1), NB, NA, rand=r)
    assert should_rotate(NB + 12 * H, NB, NA, rand=r)
    assert should_rotate(NA, NB, NA, rand=r)
    assert should_rotate(NA + H, NB, NA, rand=r)               # expired: always
    assert should_rotate(NA + H, NB, NA, fraction=0.0, jitter=0.0, rand=r)


def test_delay_until_rotation_never_negative() -> None:
    r = const(0.5)
    assert delay_until_rotation(NB, NB, NA, rand=r) == 12 * H
    assert delay_until_rotation(NB + 20 * H, NB, NA, rand=r) == dt.timedelta(0)


@pytest.mark.parametrize("kwargs", [{"fraction": -0.1}, {"fraction": 1.5}, {"jitter": -0.01}, {"jitter": 2.0}])
def test_bad_parameters(kwargs) -> None:
    with pytest.raises(ValueError):
        rotate_at(NB, NA, rand=const(0.5), **kwargs)


def test_not_after_before_not_before() -> None:
    with pytest.raises(ValueError):
        rotate_at(NA, NB, rand=const(0.5))
