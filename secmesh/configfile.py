"""Component configuration: YAML file → frozen dataclasses, with `SECMESH_*` env vars and flags on top.

Precedence is defaults < file < environment < flags, as users of Envoy/istio-agent expect.
Every error names the place it comes from (`file:line:col` and the dotted field for the file;
`<environment or flags>` and the field for a bad env var or flag value), because a sidecar that refuses to start must say exactly why. Unknown keys
are errors (with a did-you-mean), never silently ignored: a typo in a security setting must not
fall back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from secmesh.errors import ConfigError

T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """`90d`, `24h`, `1h30m`, `10s`, `250ms` or a bare number of seconds → seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10s, 30m, 24h, 90d)")
    return total


class Duration(float):
    """A float of seconds that config files write as `24h`; marks a field for duration parsing."""


def _where(path: str, node: Any, key: Any = None, index: int | None = None) -> str:
    lc = getattr(node, "lc", None)    # only ruamel's round-trip nodes (from a file) know their position
    if lc is None:
        return path
    try:
        if key is not None and isinstance(node, Mapping):
            line, col = lc.key(key)
        elif index is not None and isinstance(node, list):
            line, col = lc.item(index)
        else:
            line, col = lc.line, lc.col
        return f"{path}:{line + 1}:{col + 1}"
    except (AttributeError, KeyError, TypeError):
        return path


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(value: Any, tp: Any, *, field: str, where: str, path: str) -> Any:
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"`{field}` must be a mapping", location=where, field=field)
        return _build(tp, value, path=path, prefix=field + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{field}` must be a list", location=where, field=field)
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [
            _convert(v, item_tp, field=f"{field}[{i}]", where=_where(path, value, index=i), path=path)
            for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"`{field}` must be a mapping", location=where, field=field)
        return dict(value)
    try:
        if tp is Duration:
            return Duration(parse_duration(value))
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError(f"expected true or false, got {value!r}")
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(f"expected an integer, got {value!r}")
            if isinstance(value, str) and value.startswith("0o"):
                return int(value, 8)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            if isinstance(value, (Mapping, list)):
                raise ValueError("expected a string")
            return str(value)
        if tp is Path:
            return Path(str(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`{field}`: {exc}", location=where, field=field) from None
    return value


def _build(cls: type[T], data: Mapping[str, Any], *, path: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    fields.update({f.name: f for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(str(key))
        where = _where(path, data, key=key)
        if f is None:
            names = sorted({f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean `{prefix}{close[0]}`?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown field `{prefix}{key}`{hint}", location=where, field=f"{prefix}{key}")
        kwargs[f.name] = _convert(value, hints[f.name], field=prefix + f.name, where=where, path=path)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}", location=_where(path, data), field=prefix.rstrip(".")) from None
    except ValueError as exc:  # __post_init__ validation
        raise ConfigError(str(exc), location=_where(path, data), field=prefix.rstrip(".")) from None


def read_yaml(path: Path) -> Any:
    # ruamel is imported here, not at the top: a component started from flags alone (the usual
    # sidecar of a benchmark or a test) never pays its ~2.5 MB of resident memory.
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    yaml = YAML(typ="rt")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", location=str(path)) from None
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", location=loc) from None
    except Exception as exc:  # ruamel raises DuplicateKeyError etc. (MarkedYAMLError subclasses mostly)
        raise ConfigError(f"invalid YAML: {exc}", location=str(path)) from None


def _env_overrides(cls: type, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """SECMESH_<FIELD> (and SECMESH_<SECTION>_<FIELD> for nested dataclasses) → nested dict."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name.upper()
        tp = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            nested = _env_overrides(tp, env, name + "_")
            if nested:
                out[f.name] = nested
        elif name in env:
            raw = env[name]
            origin = typing.get_origin(tp)
            out[f.name] = [s.strip() for s in raw.split(",") if s.strip()] if origin in (list, tuple) else raw
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _merge(dict(merged[k]), v)
        else:
            merged[k] = v
    return merged


def load_config(cls: type[T], path: Path | str | None = None, *, env: Mapping[str, str] | None = None,
                env_prefix: str = "SECMESH_", flags: Mapping[str, Any] | None = None) -> T:
    """Build `cls` from defaults, then the YAML file, then env vars, then flags (None values ignored)."""
    file_data: Any = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        loaded = read_yaml(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError("the top level must be a mapping", location=f"{p}:1:1")
        file_data = loaded
    config = _build(cls, file_data, path=source)
    env_data = _env_overrides(cls, env if env is not None else os.environ, env_prefix)
    flag_data = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    if env_data or flag_data:
        # re-validate the merged view; a bad env value is reported against the env var name
        as_dict = dataclasses.asdict(config)  # type: ignore[call-overload]
        config = _build(cls, _merge(_merge(as_dict, env_data), flag_data), path="<environment or flags>")
    return config
