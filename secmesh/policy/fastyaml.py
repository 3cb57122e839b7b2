"""A fast reader for the YAML that Kubernetes manifests are made of, exact or not at all.

ruamel.yaml's round-trip loader (needed for positions and duplicate-key errors) is pure
Python and reads about 600 small policies a second — too slow for linting and testing a
mono-repo of policies in CI. Manifests, though, use a small, regular subset of YAML: block
mappings and sequences, one-line flow collections, plain and simply-quoted scalars. This
module reads exactly that subset into the same objects ruamel builds (CommentedMap /
CommentedSeq with identical `.lc` positions, the same scalar types) and raises
`Unsupported` for anything else — anchors, tags, block scalars, multi-line scalars or
flows, escapes, odd indentation, duplicate keys, any syntax error — so that the caller
falls back to ruamel for that text, which then gives the canonical result or error.
Equality with ruamel is checked by tests over every YAML file in the repository and over
generated documents.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.scalarint import ScalarInt

_RESOLVER = YAML(typ="rt").resolver
_TAG = "tag:yaml.org,2002:"
_INT = re.compile(r"0|-?[1-9][0-9]*")
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.\-/]*|\"[^\"\\]*\"|'[^']*'):(?: +|$)")
_BAD_START = set("-?:,[]{}#&*!|>'\"%@`")
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULLS = {"~", "null", "Null", "NULL", ""}


class Unsupported(Exception):
    """Outside the subset (or invalid): read this text with ruamel instead."""


def _plain(text: str) -> Any:
    if text in _BOOLS:
        return _BOOLS[text]
    if text in _NULLS:
        return None
    c = text[0]
    if c in _BAD_START or ": " in text or " #" in text or "\t" in text or text.endswith(":"):
        raise Unsupported(text)
    if c.isdigit() or c in "+-.":
        tag = _RESOLVER.resolve(ScalarNode, text, (True, False))
        if tag == _TAG + "int" and _INT.fullmatch(text):
            # ruamel keeps the width of a leading-zero integer, and "0" is one
            return ScalarInt(0, width=1, underscore=None) if text == "0" else int(text)
        if tag != _TAG + "str":
            raise Unsupported(text)
    elif c in "<=" or text.lower() in (".inf", ".nan"):
        raise Unsupported(text)
    return text


def _quoted(text: str) -> str:
    q = text[0]
    body = text[1:-1]
    if q == '"':
        if "\\" in body or '"' in body:
            raise Unsupported(text)
        return body
    if "'" in body.replace("''", ""):
        raise Unsupported(text)
    return body.replace("''", "'")


def _strip_comment(rest: str) -> str:
    """Drop a trailing ` # comment` outside quotes and brackets' strings."""
    if "#" not in rest:
        return rest.rstrip()
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or rest[i - 1] in " [{,:"):
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].rstrip()
    if quote:
        raise Unsupported(rest)
    return rest.rstrip()


class _Flow:
    """One-line flow collections: `[a, "b", {k: v}]`."""

    def __init__(self, text: str, line: int, col: int) -> None:
        self.s, self.line, self.base, self.i = text, line, col, 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def node(self) -> Any:
        self.ws()
        if self.i >= len(self.s):
            raise Unsupported(self.s)
        c = self.s[self.i]
        if c == "[":
            return self.seq()
        if c == "{":
            return self.map()
        if c in "\"'":
            end = self.s.find(c, self.i + 1)
            if c == "'":
                while end != -1 and self.s[end + 1:end + 2] == "'":
                    end = self.s.find("'", end + 2)
            if end < 0:
                raise Unsupported(self.s)
            text = self.s[self.i:end + 1]
            self.i = end + 1
            return _quoted(text)
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in ",]}" and self.s[self.i:self.i + 2] not in (": ", ":,"):
            if self.s[self.i] in "[{":
                raise Unsupported(self.s)
            self.i += 1
        text = self.s[start:self.i].rstrip()
        if not text or text.endswith(":"):
            raise Unsupported(self.s)
        return _plain(text)

    def seq(self) -> CommentedSeq:
        out = CommentedSeq()
        lc = _lc(out, self.line, self.base + self.i)
        self.i += 1
        self.ws()
        if self.s[self.i:self.i + 1] == "]":
            self.i += 1
            return out
        while True:
            self.ws()
            pos = self.base + self.i
            out.append(self.node())
            lc.add_kv_line_col(len(out) - 1, [self.line, pos])
            self.ws()
            c = self.s[self.i:self.i + 1]
            self.i += 1
            if c == "]":
                return out
            if c != ",":
                raise Unsupported(self.s)
            self.ws()
            if self.s[self.i:self.i + 1] == "]":
                raise Unsupported(self.s)  # trailing comma: leave the subtleties to ruamel

    def map(self) -> CommentedMap:
        out = CommentedMap()
        lc = _lc(out, self.line, self.base + self.i)
        self.i += 1
        self.ws()
        if self.s[self.i:self.i + 1] == "}":
            self.i += 1
            return out
        while True:
            self.ws()
            kpos = self.base + self.i
            m = _KEY.match(self.s, self.i)
            if not m or self.s[m.end() - 1] != " ":
                raise Unsupported(self.s)
            key = _key(m.group(1))
            self.i = m.end()
            self.ws()
            vpos = self.base + self.i
            value = self.node()
            if key in out:
                raise Unsupported("duplicate key")
            out[key] = value
            lc.add_kv_line_col(key, [self.line, kpos, self.line, vpos])
            self.ws()
            c = self.s[self.i:self.i + 1]
            self.i += 1
            if c == "}":
                return out
            if c != ",":
                raise Unsupported(self.s)


def _lc(container: Any, line: int, col: int) -> Any:
    """Set a container's own position; return its LineCol (whose `data` holds the children's)."""
    lc = container.lc
    lc.line, lc.col = line, col
    return lc


def _key(text: str) -> Any:
    if text[0] in "\"'":
        return _quoted(text)
    v = _plain(text)
    if isinstance(v, bool) or v is None:
        raise Unsupported(text)
    return v


def _inline(text: str, line: int, col: int) -> Any:
    """A value that sits on one line (after `key: ` or `- `)."""
    c = text[0]
    if c in "[{":
        f = _Flow(text, line, col)
        v = f.node()
        f.ws()
        if f.i != len(text):
            raise Unsupported(text)
        return v
    if c in "\"'":
        if len(text) < 2 or text[-1] != c:
            raise Unsupported(text)
        return _quoted(text)
    return _plain(text)


Line = tuple[int, int, str, bool]  # (0-based line, indent, content without comment, had a comment)


class _Block:
    def __init__(self, lines: list[Line], end_mark: tuple[int, int]) -> None:
        self.lines = lines
        self.i = 0
        self.end_mark = end_mark

    def peek(self) -> Line | None:
        return self.lines[self.i] if self.i < len(self.lines) else None

    def next_mark(self) -> tuple[int, int]:
        nxt = self.peek()
        return (nxt[0], nxt[1]) if nxt else self.end_mark

    def node(self, indent: int) -> Any:
        first = self.peek()
        assert first is not None
        if first[2] == "-" or first[2].startswith("- "):
            return self.seq(first[1])
        return self.map(first[1])

    def map(self, indent: int) -> CommentedMap:
        out = CommentedMap()
        first = self.peek()
        lc = _lc(out, first[0], first[1])  # type: ignore[index]
        while (ln := self.peek()) is not None and ln[1] == indent:
            line, _, text, _c = ln
            if text == "-" or text.startswith("- "):
                raise Unsupported(text)
            m = _KEY.match(text)
            if not m:
                raise Unsupported(text)
            key = _key(m.group(1))
            if key in out:
                raise Unsupported("duplicate key")
            rest = text[m.end():]
            self.i += 1
            if rest:
                vcol = indent + m.end()
                value = _inline(rest, line, vcol)
                out[key] = value
                lc.add_kv_line_col(key, [line, indent, line, vcol])
                nxt = self.peek()
                if nxt is not None and nxt[1] > indent:
                    raise Unsupported("continuation line")  # a multi-line plain scalar
                continue
            nxt = self.peek()
            if nxt is not None and (nxt[1] > indent or (nxt[1] == indent and (nxt[2] == "-" or
                                                                              nxt[2].startswith("- ")))):
                vline, vcol = nxt[0], nxt[1]
                value = self.node(nxt[1])
            else:
                if ln[3]:
                    raise Unsupported("null value before a comment")  # ruamel positions it at the `#`
                value = None
                vline, vcol = self.next_mark()
            out[key] = value
            lc.add_kv_line_col(key, [line, indent, vline, vcol])
        ln = self.peek()
        if ln is not None and ln[1] > indent:
            raise Unsupported("bad indentation")
        return out

    def seq(self, indent: int) -> CommentedSeq:
        out = CommentedSeq()
        first = self.peek()
        lc = _lc(out, first[0], first[1])  # type: ignore[index]
        while (ln := self.peek()) is not None and ln[1] == indent and (ln[2] == "-" or ln[2].startswith("- ")):
            line, _, text, _c = ln
            if text == "-":
                raise Unsupported("empty sequence entry")
            rest = text[2:]
            pad = len(rest) - len(rest.lstrip(" "))
            rest = rest[pad:]
            col = indent + 2 + pad
            if _KEY.match(rest) or rest == "-" or rest.startswith("- "):
                self.lines[self.i] = (line, col, rest, ln[3])  # the entry's node starts here
                out.append(self.node(col))
            else:
                self.i += 1
                out.append(_inline(rest, line, col))
                nxt = self.peek()
                if nxt is not None and nxt[1] > indent:
                    raise Unsupported("continuation line")
            lc.add_kv_line_col(len(out) - 1, [line, col])
        ln = self.peek()
        if ln is not None and ln[1] > indent:
            raise Unsupported("bad indentation")
        return out


def load_all(text: str) -> Iterator[Any]:
    """The documents of `text`, like ruamel's `load_all` (None for empty ones); or Unsupported."""
    if "\t" in text or "\r" in text or "\\" in text or text.startswith(("%", "\ufeff")):
        raise Unsupported("tabs, CRs, escapes or directives")
    docs: list[list[Line]] = [[]]
    starts: list[int] = [0]
    raw = text.split("\n")
    for n, line in enumerate(raw):
        stripped = line.rstrip(" ")
        if not stripped:
            continue
        if stripped.startswith(("---", "...")):
            if stripped == "---" or stripped.startswith("--- #"):
                docs.append([])
                starts.append(n)
                continue
            if stripped.startswith("..."):
                raise Unsupported("document end marker")
        indent = len(stripped) - len(stripped.lstrip(" "))
        content = stripped[indent:]
        if content.startswith("#"):
            continue
        if not content.isprintable():
            raise Unsupported("control characters")
        stripped_content = _strip_comment(content)
        docs[-1].append((n, indent, stripped_content, len(stripped_content) != len(content)))
    out = []
    end = (len(raw) - 1 if raw[-1] == "" else len(raw), 0)
    for k, lines in enumerate(docs):
        if not lines:
            if k > 0 or len(docs) == 1:
                out.append(None)
            continue
        if lines[0][1] != 0:
            raise Unsupported("indented document")
        nxt = (starts[k + 1], 0) if k + 1 < len(starts) else end
        block = _Block(lines, nxt)
        value = block.node(0)
        if block.peek() is not None:
            raise Unsupported("trailing content")
        out.append(value)
    return iter(out)
