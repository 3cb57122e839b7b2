"""Read YAML policy sources with positions: files, directories, multi-document streams.

ruamel.yaml's round-trip loader is used because it keeps a line/column for every mapping
key, sequence item and value (`.lc`, 0-based) and refuses duplicate keys (which PyYAML
silently resolves to the last one — a repeated `rules:` key would then vanish unnoticed).
Round-trip mode keeps unknown tags as data instead of executing them; `Node.check_tag`
turns any non-standard tag into an error, since Kubernetes would never accept one.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from secmesh.errors import PolicyError
from secmesh.policy import fastyaml
from secmesh.policy.model import Pos

_STD = "tag:yaml.org,2002:"
_CONTAINER_TAGS = {None, _STD + "map", _STD + "seq", _STD + "omap"}
_PLAIN_TYPES = (str, int, bool, float, type(None))


@dataclass(frozen=True, slots=True)
class Document:
    data: Any
    file: str
    pos: Pos  # where the document starts


TEST_SUFFIXES = (".test.yaml", ".test.yml")


def is_test_file(path: str | Path) -> bool:
    """`*.test.yaml` files hold `policy test` cases, not policies."""
    return str(path).endswith(TEST_SUFFIXES)


def policy_files(path: str | Path) -> list[Path]:
    """A file, or every *.yaml / *.yml below a directory (test files excluded), sorted."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".yaml", ".yml")
                      and not is_test_file(f.name))
    if p.is_file():
        return [p]
    raise PolicyError(f"no such file or directory: {p}", location=str(p), reason="not_found")


def find_test_files(path: str | Path) -> list[Path]:
    """A test file, or every `*.test.yaml` / `*.test.yml` below a directory, sorted."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and is_test_file(f.name))
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
    """The documents of a YAML stream, positioned; fast reader first, ruamel when it declines."""
    try:
        fast = list(fastyaml.load_all(text))
    except fastyaml.Unsupported:
        pass
    else:
        for data in fast:
            if data is not None:
                line, col = _start(data)
                yield Document(data, filename, Pos(filename, line + 1, col + 1))
        return
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
        reason = "yaml"
        if "duplicate key" in problem:
            problem = problem.split(" with value")[0]
            reason = "duplicate_key"
        raise PolicyError(f"YAML error: {problem}", location=where, reason=reason) from None
    except YAMLError as exc:
        raise PolicyError(f"YAML error: {exc}", location=f"{filename}:1:1", reason="yaml") from None


def parse_stream_lenient(text: str, filename: str) -> tuple[list[Document], list[PolicyError]]:
    """Every document that parses, plus every problem found, for the linter.

    A syntax error ends the stream (the parser cannot resynchronise), but the documents
    before it are kept. Duplicate keys do not: all of them are reported (from a compose
    pass, which does not check duplicates) and the stream is re-read keeping the first
    value, so that the rest of the file can still be linted.
    """
    docs: list[Document] = []
    try:
        for doc in parse_stream(text, filename):
            docs.append(doc)
        return docs, []
    except PolicyError as exc:
        if exc.reason != "duplicate_key":
            return docs, [exc]
    errors = duplicate_keys(text, filename)
    docs = []
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True
    try:
        for data in yaml.load_all(io.StringIO(text)):
            if data is not None:
                line, col = _start(data)
                docs.append(Document(data, filename, Pos(filename, line + 1, col + 1)))
    except YAMLError as exc:  # pragma: no cover - the first pass would have seen it
        errors.append(PolicyError(f"YAML error: {exc}", location=f"{filename}:1:1", reason="yaml"))
    return docs, errors


def duplicate_keys(text: str, filename: str) -> list[PolicyError]:
    """Every repeated mapping key in the stream, positioned at the repetition."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    out: list[PolicyError] = []

    def walk(node: Any) -> None:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for k, v in node.value:
                key = k.value if not isinstance(k.value, list) else id(k)
                if key in seen:
                    first = seen[key].start_mark
                    out.append(PolicyError(
                        f"YAML error: duplicate key {key!r} (first defined at line {first.line + 1})",
                        location=f"{filename}:{k.start_mark.line + 1}:{k.start_mark.column + 1}",
                        reason="duplicate_key"))
                else:
                    seen[key] = k
                walk(v)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                walk(item)

    try:
        for root in YAML(typ="rt").compose_all(io.StringIO(text)):
            walk(root)
    except YAMLError:
        pass
    return out


# --- collecting problems instead of stopping at the first --------------------------------

_SINK: ContextVar[list[PolicyError] | None] = ContextVar("secmesh_policy_problems", default=None)


@contextmanager
def collecting() -> Iterator[list[PolicyError]]:
    """Inside this block, `report` records problems instead of raising (the linter's mode)."""
    errors: list[PolicyError] = []
    token = _SINK.set(errors)
    try:
        yield errors
    finally:
        _SINK.reset(token)


def report(err: PolicyError) -> None:
    """A problem that does not stop the reading of a document: raised, unless collecting.

    `policy check` and the sidecar keep failing at the first problem (fail closed, one clear
    message); `policy lint` sees every problem of a document in one run.
    """
    sink = _SINK.get()
    if sink is None:
        raise err
    sink.append(err)


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
        """The error for this node; `raise` it (fatal for the document) or `report` it."""
        text = f"{self.path}: {message}" if self.path else message
        return PolicyError(text, location=str(self.pos), field=self.path or None, reason=reason)

    def check_tag(self) -> None:
        v = self.value
        if type(v) in _PLAIN_TYPES:
            return
        if isinstance(v, (CommentedMap, CommentedSeq)) and not hasattr(v, "_yaml_tag"):
            return  # no tag was ever set (ruamel's `.tag` property would create one)
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
