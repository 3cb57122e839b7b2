"""Typed readers over positioned YAML nodes: strings, lists, maps, enums, known-field checks.

Each reader raises a PolicyError naming `file:line:col` and the dotted field path, with a
did-you-mean for unknown fields (camelCase hints for snake_case spellings), because these
are the errors users hit most.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from typing import Any, Callable, Iterable

from secmesh.errors import PolicyError
from secmesh.policy.yamlsrc import Node, report


def _fields(node: Node, allowed: Iterable[str], what: str) -> None:
    if not node.is_map():
        raise node.error(f"{what} must be a mapping, found {_type_name(node.value)}", reason="type")
    node.check_tag()
    allowed = tuple(allowed)
    for key in node.value:
        if not isinstance(key, str):
            report(PolicyError(f"{node.path or what}: field names must be strings, found {key!r}",
                               location=str(node.key_pos(key)), field=node.path, reason="type"))
        elif key not in allowed:  # reported, then ignored: the rest of the object is still read
            report(PolicyError(f"{_join(node.path, key)}: unknown field {key!r} in {what}{_suggest(key, allowed)}",
                               location=str(node.key_pos(key)), field=_join(node.path, key),
                               reason="unknown_field"))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
    if camel != key and camel in allowed:
        return f" (did you mean {camel!r}? fields are camelCase)"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:
        close = [a for a in allowed if a.lower() == key.lower()]
    return f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(allowed)}"


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, (_dt.date, _dt.datetime)):
        return "a timestamp"
    return "a string"


def _opt(node: Node, key: str) -> Node | None:
    if key not in node.value or node.value[key] is None:
        return None
    return node.child(key)


def _str(node: Node) -> str:
    v = node.scalar()
    if not isinstance(v, str):
        hint = " (quote it)" if isinstance(v, (int, float, bool, _dt.date)) else ""
        raise node.error(f"must be a string, found {_type_name(v)}{hint}", reason="type")
    return str(v)


def _str_list(node: Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    if not node.is_seq():
        raise node.error(f"must be a list of strings, found {_type_name(node.value)}", reason="type")
    node.check_tag()
    return tuple(_str(item) for item in node.items())


def _str_map(node: Node | None) -> dict[str, str]:
    if node is None:
        return {}
    if not node.is_map():
        raise node.error(f"must be a mapping of strings, found {_type_name(node.value)}", reason="type")
    node.check_tag()
    out: dict[str, str] = {}
    for key in node.value:
        if not isinstance(key, str):
            raise PolicyError(f"{node.path}: keys must be strings, found {key!r}", location=str(node.key_pos(key)),
                              field=node.path, reason="type")
        out[key] = _str(node.child(key))
    return out


def _bool(node: Node) -> bool:
    v = node.scalar()
    if not isinstance(v, bool):
        raise node.error(f"must be a boolean, found {_type_name(v)}", reason="type")
    return v


def _list_of(node: Node | None, parse: Callable[[Node], Any]) -> tuple[Any, ...] | None:
    if node is None:
        return None
    if not node.is_seq():
        raise node.error(f"must be a list, found {_type_name(node.value)}", reason="type")
    node.check_tag()
    return tuple(parse(item) for item in node.items())


def _enum(node: Node, enum_cls: Any) -> Any:
    text = _str(node)
    names = [e.value for e in enum_cls]
    if text not in names:
        raise node.error(f"invalid value {text!r}; expected one of {', '.join(names)}{_suggest(text, tuple(names))}"
                         if text.upper() not in names else f"invalid value {text!r}; enum values are upper case "
                         f"({text.upper()!r})", reason="enum")
    return enum_cls(text)
