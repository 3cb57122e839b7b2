"""The committed stubs are exactly what `make proto` generates from the committed .proto files."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmesh.proto import generate


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    assert generate.main(tmp_path) == 0
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh, "nothing was generated"
    for name in fresh:
        committed = generate.PROTO_DIR / name
        assert committed.exists(), f"{name} is generated but not committed"
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), f"{name} differs: run `make proto`"
