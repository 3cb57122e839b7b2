"""Path matching for `paths` / `notPaths`: Istio strings plus Envoy uri_template `{*}` / `{**}`.

A value containing `{*}` or `{**}` is a template (Envoy's uri_template matcher): `{*}` is
one non-empty path segment of RFC 3986 pchars, `{**}` the rest of the path (possibly
empty). Anything else is an ordinary Istio string (exact / `prefix*` / `*suffix` / `*`).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from secmesh.policy.matchers import string_matcher

TEMPLATE_ONE, TEMPLATE_ANY = "{*}", "{**}"
_LIT = r"a-zA-Z0-9\-._~%!$&'()+,;:@="
_VALID_LITERAL = re.compile(rf"^[{_LIT}]+$")


def is_template(value: str) -> bool:
    return TEMPLATE_ONE in value or TEMPLATE_ANY in value


def template_error(path: str) -> str | None:
    """Istio's `CheckValidPathTemplate` (plus Envoy's leading-slash rule); None when valid."""
    templ = is_template(path)
    if templ and not path.startswith("/"):
        return "a path template must start with '/'"
    seen_any = False
    for glob in path.strip("/").split("/"):
        if glob in (TEMPLATE_ONE, TEMPLATE_ANY):
            if seen_any:
                return "{**} is not the last operator"
            seen_any = glob == TEMPLATE_ANY
            continue
        if "{" in glob or "}" in glob:
            return "contains '{' or '}' beyond a supported path template"
        if templ and not _VALID_LITERAL.match(glob):
            return f"contains segment {glob} with invalid string literal"
    return None


_LIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()+,;:@=")


def template_regex(path: str) -> re.Pattern[str]:
    """Envoy uri_template as a regex: `{*}` one non-empty segment, `{**}` the rest (may be empty)."""
    out = []
    i = 0
    while i < len(path):
        if path.startswith(TEMPLATE_ANY, i):
            out.append(f"[{_LIT}/]*")
            i += len(TEMPLATE_ANY)
        elif path.startswith(TEMPLATE_ONE, i):
            out.append(f"[{_LIT}]+")
            i += len(TEMPLATE_ONE)
        else:
            out.append(re.escape(path[i]))
            i += 1
    return re.compile("".join(out))


def template_test(path: str) -> Callable[[str], bool]:
    """The same match as `template_regex`, segment by segment (templates are whole segments once
    validated), so that thousands of templates compile in milliseconds instead of seconds."""
    segs = path.split("/")
    if TEMPLATE_ANY in segs[:-1] or any(is_template(s) and s not in (TEMPLATE_ONE, TEMPLATE_ANY) for s in segs):
        rx = template_regex(path)  # literal after {**}: rare, keep the general form
        return lambda p: rx.fullmatch(p) is not None
    lit = _LIT_CHARS
    lit_slash = lit | {"/"}
    n = len(segs)
    tail_any = segs[-1] == TEMPLATE_ANY
    head = tuple(segs[:-1]) if tail_any else tuple(segs)

    def match(p: str) -> bool:
        ps = p.split("/", len(head)) if tail_any else p.split("/")
        if tail_any:
            if len(ps) != n:
                return False
        elif len(ps) != n:
            return False
        for want, got in zip(head, ps):
            if want == TEMPLATE_ONE:
                if not got or not lit.issuperset(got):
                    return False
            elif want != got:
                return False
        return not tail_any or lit_slash.issuperset(ps[-1])
    return match


def template_prefix(path: str) -> str:
    return path[: path.index("{")]


def path_matcher(values: tuple[str, ...]) -> tuple[Callable[[str | None], bool], Any]:
    plain = tuple(v for v in values if not is_template(v))
    templates = tuple(v for v in values if is_template(v))
    test, anchors = string_matcher(plain, anchor="path") if plain else ((lambda s: False), ())
    if not templates:
        return test, anchors
    tests = tuple(template_test(t) for t in templates)
    t_anchors = tuple(("path_prefix", template_prefix(t)) for t in templates)

    def match(p: str | None) -> bool:
        return test(p) or (p is not None and any(t(p) for t in tests))
    return match, (anchors + t_anchors) if anchors is not None else None
