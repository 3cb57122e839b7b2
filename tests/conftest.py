"""Fixtures shared by every test package. Area-specific fixtures live in that area's own conftest."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
