"""A lint finding: where (1-based file:line:column), how bad, which code, what to do.

One value type shared by the linter, its output formats and the other policy tools (which
turn the first error into an exit-2 message). `from_error` converts a loader PolicyError,
whose location is a `file:line:col` string, without losing the position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secmesh.errors import PolicyError
from secmesh.policy.lintcodes import CODES, code_for
from secmesh.policy.model import Pos


@dataclass(frozen=True, slots=True)
class Diagnostic:
    file: str
    line: int
    column: int
    severity: str  # "error" | "warning"
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity} {self.code} {self.message}"

    def sort_key(self) -> tuple[Any, ...]:
        return (self.file, self.line, self.column, self.code, self.message)

    def to_dict(self) -> dict[str, Any]:
        """The stable `--format json` item: exactly these six keys."""
        return {"file": self.file, "line": self.line, "column": self.column, "severity": self.severity,
                "code": self.code, "message": self.message}


def split_location(location: str | None, default_file: str = "<unknown>") -> tuple[str, int, int]:
    """`path/with:colons.yaml:12:5` → (path, 12, 5); missing parts become line/column 1."""
    if not location:
        return default_file, 1, 1
    parts = location.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[0], max(1, int(parts[1])), max(1, int(parts[2]))
    head, _, tail = location.rpartition(":")
    if head and tail.isdigit():
        return head, max(1, int(tail)), 1
    return location, 1, 1


def strip_location(err: PolicyError) -> str:
    msg = err.message
    prefix = f"{err.location}: " if err.location else ""
    return msg[len(prefix):] if prefix and msg.startswith(prefix) else msg


def from_error(err: PolicyError, default_file: str = "<unknown>") -> Diagnostic:
    code = code_for(err)
    file, line, col = split_location(err.location, default_file)
    return Diagnostic(file, line, col, CODES[code].severity, code, strip_location(err))


def at(pos: Pos, code: str, message: str) -> Diagnostic:
    return Diagnostic(pos.file, max(1, pos.line), max(1, pos.col), CODES[code].severity, code, message)
