"""The fast YAML reader gives exactly what ruamel gives (values, types, positions), or declines."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from secmesh.policy import fastyaml

REPO = Path(__file__).resolve().parents[3]


def same(a: Any, b: Any, path: str = "$") -> str | None:
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, CommentedMap):
        if list(a) != list(b) or (a.lc.line, a.lc.col) != (b.lc.line, b.lc.col):
            return f"{path}: keys/position differ"
        for k in a:
            if list(a.lc.data[k]) != list(b.lc.data[k]):
                return f"{path}.{k}: {a.lc.data[k]} != {b.lc.data[k]}"
            if (r := same(a[k], b[k], f"{path}.{k}")) is not None:
                return r
        return None
    if isinstance(a, CommentedSeq):
        if len(a) != len(b) or (a.lc.line, a.lc.col) != (b.lc.line, b.lc.col):
            return f"{path}: length/position differ"
        for i in range(len(a)):
            if list(a.lc.data[i]) != list(b.lc.data[i]):
                return f"{path}[{i}]: {a.lc.data[i]} != {b.lc.data[i]}"
            if (r := same(a[i], b[i], f"{path}[{i}]")) is not None:
                return r
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def agree(text: str) -> bool:
    """True when the fast reader took the text (and then it must equal ruamel); False if it declined."""
    try:
        fast = [d for d in fastyaml.load_all(text) if d is not None]
    except fastyaml.Unsupported:
        return False
    ref = [d for d in YAML(typ="rt").load_all(io.StringIO(text)) if d is not None]
    assert len(fast) == len(ref), text
    for a, b in zip(fast, ref):
        assert same(a, b) is None, (same(a, b), text)
    return True


def test_every_yaml_file_in_the_repository() -> None:
    files = [f for pattern in ("policies/**/*.yaml", "configs/*.yaml", "deploy/**/*.yaml")
             for f in REPO.glob(pattern)]
    taken = sum(agree(f.read_text()) for f in files)
    assert files and taken >= len([f for f in files if "policies" in f.parts]) // 2


TRICKY = [
    "a:\n", "a:\nb:\n", "a: 1\n---\nb:\n", "---\na: 1\n", "a:\n  - x\n  - y\nb: 2\n", "a:\n- x\n-  y\n",
    "- a\n- b: 1\n  c: 2\n- - x\n  - y\n", "a: [1, 2 , x]\nb: {k: v, z: [ ]}\n", "a: 'it''s'\nb: \"q\" # c\n",
    "a: b # c\nd: e#f\n", "a:\n  b:\n    c: 1\n  d: 2\ne: 3\n", "a: # c\n  b: 1\n", "a:\n\n  # comment\n  b: 1\n",
    "a: 0\nb: 10\ng: yes\nh: ~\ni: TRUE\nj: null\n", "9104: x\n", "a: http://x/y\n",
    "a: x:y\n", "a: \"\"\n", "a: ['x', \"y\", [z, {k: [1]}]]\n", "a:\n  -   x: 1\n      y: 2\n", "a: \"x # y\"\n",
    "metadata:\n  annotations:\n    istio.io/dry-run: \"true\"\n", "a: 10.0.0.0/8\nb: '*'\nc: /api/*\n",
]
DECLINED = ["c: 00\n", "d: -1\n", "e: 1.5\n", "f: 2024-01-01\n", "a: # c\nb: 1\n", "a: x\n  y\n", "a: {x: 1, x: 2}\n", "a: 1\na: 2\n", "a: &x 1\nb: *x\n", "a: |\n  text\n", "a: !t x\n",
            "a: [x,\n  y]\n", "a:\tb\n", "a: \"\\n\"\n", "a: b: c\n", "x\n"]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_but_supported(text: str) -> None:
    assert agree(text)


@pytest.mark.parametrize("text", DECLINED)
def test_declined_texts_are_left_to_ruamel(text: str) -> None:
    with pytest.raises(fastyaml.Unsupported):
        list(fastyaml.load_all(text))


# --- generated documents, rendered in block and flow styles ---------------------------------

_words = st.sampled_from(["a", "app", "GET", "/api/*", "*", "10.0.0.0/8", "cluster.local/ns/a/sa/b", "0", "7",
                          "true", "null", "x y", "it's", "-x", "1.5", "8080", "ns:a", "#x", "a #b", ""])
_keys = st.sampled_from(["name", "paths", "ports", "k1", "metadata", "9104", "istio.io/dry-run", "a-b_c"])
_values = st.recursive(
    _words,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12)


def _scalar(v: str, quote: int) -> str:
    if quote == 1:
        return "'" + v.replace("'", "''") + "'"
    if quote == 2:
        return '"' + v + '"'
    return v


def render(v: Any, indent: int, draw_bits: list[int], flow: bool = False) -> str:
    bit = draw_bits.pop() if draw_bits else 0
    if isinstance(v, str):
        return _scalar(v, bit % 3)
    if isinstance(v, list):
        if flow or bit % 2 or not v:
            return "[" + ", ".join(render(x, indent, draw_bits, True) for x in v) + "]"
        pad = " " * indent
        out = []
        for x in v:
            body = render(x, indent + 2, draw_bits)
            out.append(f"{pad}- {body.lstrip() if isinstance(x, dict) and x and not body.startswith(('{', '[')) else body}")
        return "\n" + "\n".join(out)
    if flow or bit % 2 or not v:
        return "{" + ", ".join(f"{k}: {render(x, indent, draw_bits, True)}" for k, x in v.items()) + "}"
    pad = " " * indent
    lines = []
    for k, x in v.items():
        body = render(x, indent + 2, draw_bits)
        lines.append(f"{pad}{k}:{body}" if body.startswith("\n") else f"{pad}{k}: {body}")
    return "\n" + "\n".join(lines)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, min_size=1, max_size=4), st.lists(st.integers(0, 5), max_size=40))
def test_generated_documents(doc: dict[str, Any], bits: list[int]) -> None:
    text = render(doc, 0, list(bits)).lstrip("\n") + "\n"
    try:
        agree(text)
    except AssertionError:
        raise
    except Exception:  # noqa: BLE001 - ruamel refused it: then the fast reader must have declined too
        with pytest.raises(fastyaml.Unsupported):
            list(fastyaml.load_all(text))
