"""Fixtures for the CA unit tests: a FakeClock and a CA directory created at that clock's time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from secmesh.ca.signer import Signer, TtlPolicy
from secmesh.ca.store import CaMaterial, init_ca
from secmesh.clock import FakeClock

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def material(tmp_path: Path, clock: FakeClock) -> CaMaterial:
    return init_ca(tmp_path / "ca", "example.org", now=clock.now())


@pytest.fixture
def signer(material: CaMaterial) -> Signer:
    gen = material.current
    return Signer(gen.intermediate_cert, gen.intermediate_key, root=gen.root_cert,
                  ttl=TtlPolicy(dt.timedelta(hours=24), dt.timedelta(days=90)))
