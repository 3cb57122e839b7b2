"""Read YAML policy sources with positions: files, directories, multi-document streams.

ruamel.yaml's round-trip loader is used because it keeps a line/column for every mapping
key, sequence item and value (`.lc`, 0-based) and refuses duplicate keys (which PyYAML
silently resolves to the last one — a repeated `rules:` key would then vanish unnoticed).
Round-trip mode keeps unknown tags as data instead of executing them; `Node.check_tag`
turns any non-standard tag into an error, since Kubernetes would never accept one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from secmesh.errors import PolicyError
from secmesh.policy.model import Pos

_STD = "tag:yaml.org,2002:"
_CONTAINER_TAGS = {None, _STD + "map", _STD + "seq", _STD + "omap"}


@dataclass(frozen=True, slots=True)
class Document:
    data: Any
    file: str
    pos: Pos  # where the document starts


def policy_files(path: str | Path) -> list[Path]:
    """A file, or every *.yaml / *.yml below a directory, in sorted (deterministic) order."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".yaml", ".yml"))
    if p.is_file():
        return [p]
    raise PolicyError(f"no such file or directory: {p}", location=str(p), reason="not_found")


def load_documents(path: str | Path) -> list[Document]:
    docs: list[Document] = []
    for f in policy_files(path):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file: {exc}", location=f"{f}:1:1", reason="unreadable") from exc
        docs.extend(parse_stream(text, str(f)))
    return docs


def parse_stream(text: str, filename: str) -> Iterator[Document]:
    yaml = YAML(typ="rt")
    try:
        for data in yaml.load_all(io.StringIO(text)):
            if data is None:
                continue  # empty document (`---` with only comments)
            line, col = _start(data)
            yield Document(data, filename, Pos(filename, line + 1, col + 1))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else f"{filename}:1:1"
        problem = exc.problem or "invalid YAML"
        if "duplicate key" in problem:
            problem = problem.split(" with value")[0]
        raise PolicyError(f"YAML error: {problem}", location=where, reason="yaml") from None
    except YAMLError as exc:
        raise PolicyError(f"YAML error: {exc}", location=f"{filename}:1:1", reason="yaml") from None


def _start(data: Any) -> tuple[int, int]:
    lc = getattr(data, "lc", None)
    if lc is not None and lc.line is not None:
        return lc.line, lc.col
    return 0, 0


class Node:
    """A YAML value plus the means to name where it is (`file:line:col`) and what it is (`spec.rules[0]`)."""

    __slots__ = ("value", "file", "pos", "path")

    def __init__(self, value: Any, file: str, pos: Pos, path: str) -> None:
        self.value = value
        self.file = file
        self.pos = pos
        self.path = path

    def error(self, message: str, *, reason: str = "invalid") -> PolicyError:
        return PolicyError(f"{self.path}: {message}", location=str(self.pos), field=self.path, reason=reason)

    def check_tag(self) -> None:
        v = self.value
        tag = getattr(getattr(v, "tag", None), "value", None)
        if isinstance(v, TaggedScalar):
            if tag != _STD + "str":
                raise self.error(f"non-standard YAML tag {tag!r} is not allowed", reason="yaml_tag")
        elif isinstance(v, (CommentedMap, CommentedSeq)) and tag not in _CONTAINER_TAGS:
            raise self.error(f"non-standard YAML tag {tag!r} is not allowed", reason="yaml_tag")

    def scalar(self) -> Any:
        self.check_tag()
        return self.value.value if isinstance(self.value, TaggedScalar) else self.value

    def child(self, key: Any) -> Node:
        """The value under `key` of this mapping, positioned at the value."""
        m = self.value
        line, col = m.lc.value(key) if key in m else (m.lc.line, m.lc.col)
        return Node(m[key], self.file, Pos(self.file, line + 1, col + 1), f"{self.path}.{key}" if self.path else str(key))

    def key_pos(self, key: Any) -> Pos:
        line, col = self.value.lc.key(key)
        return Pos(self.file, line + 1, col + 1)

    def items(self) -> Iterator[Node]:
        seq = self.value
        for i in range(len(seq)):
            line, col = seq.lc.item(i)
            yield Node(seq[i], self.file, Pos(self.file, line + 1, col + 1), f"{self.path}[{i}]")

    def is_map(self) -> bool:
        return isinstance(self.value, CommentedMap)

    def is_seq(self) -> bool:
        return isinstance(self.value, CommentedSeq)
