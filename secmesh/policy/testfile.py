"""`*.test.yaml`: named cases, each a `policy check` request plus the decision it must get.

    # optional: which policies to test (paths relative to this file); default: the policy
    # files under the paths given to `secmesh policy test`
    policies: [../mesh.yaml, .]
    # optional: merged (deeply) under every case's request
    defaults:
      workload: {namespace: shop, labels: {app: cart}}
      destination: {port: 8080}
    tests:
    - name: the frontend may read the cart
      request:                   # the `policy check` request schema, in YAML
        source: {principal: spiffe://cluster.local/ns/shop/sa/frontend}
        request: {method: GET, path: /cart}
      expect: ALLOW              # ALLOW | DENY
      policy: shop/cart-readers  # optional: the policy that must decide (ns/name, name, or "none")
      rule: 0                    # optional: and its rule index
      reason: allow_policy       # optional: the decision's reason code

A bare list of cases is accepted too. Every problem is a PolicyError naming file:line:col
(the CLI's exit 2), positions inside `defaults` included, because merged keys keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ruamel.yaml.comments import CommentedMap

from secmesh.errors import PolicyError
from secmesh.policy.decision import Reason
from secmesh.policy.fields import _fields, _str
from secmesh.policy.model import Pos
from secmesh.policy.normalize import PathNormalization
from secmesh.policy.request_json import CheckRequest, request_from_node
from secmesh.policy.yamlsrc import Node, parse_stream

_CASE_FIELDS = ("name", "request", "expect", "policy", "rule", "reason", "description")
_FILE_FIELDS = ("policies", "defaults", "tests")
_REASONS = tuple(r.value for r in Reason)


@dataclass(frozen=True, slots=True)
class TestCase:
    __test__ = False  # not a pytest class

    name: str
    pos: Pos
    check: CheckRequest
    expect: str                 # ALLOW | DENY
    policy: str | None = None   # None: not checked; "none": no policy may decide
    rule: int | None = None
    reason: str | None = None
    request: Any = None         # the merged request mapping (for reports)

    @property
    def file(self) -> str:
        return self.pos.file


@dataclass(frozen=True, slots=True)
class TestFile:
    __test__ = False

    path: Path
    cases: tuple[TestCase, ...]
    policies: tuple[Path, ...] | None  # None: the run's default policy set


def _root(path: Path) -> Node:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read test file: {exc}", location=f"{path}:1:1", reason="unreadable") from exc
    docs = list(parse_stream(text, str(path)))
    if len(docs) != 1:
        raise PolicyError(f"a test file holds exactly one YAML document, found {len(docs)}",
                          location=f"{path}:1:1", reason="test_file")
    return Node(docs[0].data, str(path), docs[0].pos, "")


def merge(base: Any, over: Any) -> Any:
    """Deep-merge two mappings, keeping each key's source position (for error messages)."""
    if not isinstance(base, CommentedMap) or not isinstance(over, CommentedMap):
        return over
    out = CommentedMap()
    out._yaml_set_line_col(over.lc.line, over.lc.col)
    for src in (base, over):
        for k, v in src.items():
            out[k] = merge(out[k], v) if k in out else v
            out._yaml_set_kv_line_col(k, list(src.lc.data[k]))
    return out


def _cases_node(root: Node) -> tuple[Node, Node | None, Node | None]:
    if root.is_seq():
        return root, None, None
    if not root.is_map():
        raise root.error("a test file is a list of cases or a mapping with `tests:`", reason="test_file")
    _fields(root, _FILE_FIELDS, "test file")
    if "tests" not in root.value or not isinstance(root.value["tests"], list):
        raise root.error("`tests` (a list of cases) is required", reason="test_file")
    defaults = root.child("defaults") if root.value.get("defaults") is not None else None
    if defaults is not None and not defaults.is_map():
        raise defaults.error("must be a mapping (merged under every case's request)", reason="test_file")
    policies = root.child("policies") if root.value.get("policies") is not None else None
    return root.child("tests"), defaults, policies


def load_test_file(path: str | Path, normalization: PathNormalization = PathNormalization.BASE) -> TestFile:
    path = Path(path)
    root = _root(path)
    tests, defaults, policies_node = _cases_node(root)
    policies: tuple[Path, ...] | None = None
    if policies_node is not None:
        items = list(policies_node.items()) if policies_node.is_seq() else [policies_node]
        policies = tuple((path.parent / _str(i)).resolve() for i in items)
        for i, p in zip(items, policies):
            if not p.exists():
                raise i.error(f"no such file or directory: {p}", reason="test_file")
    cases: list[TestCase] = []
    names: dict[str, Pos] = {}
    for item in tests.items():
        case = _case(item, defaults, normalization)
        if case.name in names:
            raise item.child("name").error(f"duplicate test name {case.name!r} (first at line "
                                           f"{names[case.name].line})", reason="test_file")
        names[case.name] = case.pos
        cases.append(case)
    return TestFile(path, tuple(cases), policies)


def _case(item: Node, defaults: Node | None, normalization: PathNormalization) -> TestCase:
    if not item.is_map():
        raise item.error("a test case must be a mapping with name, request and expect", reason="test_file")
    _fields(item, _CASE_FIELDS, "test case")
    for key in ("name", "request", "expect"):
        if item.value.get(key) is None:
            raise item.error(f"`{key}` is required", reason="test_file")
    name = _str(item.child("name"))
    expect_node = item.child("expect")
    expect = _str(expect_node).upper()
    if expect not in ("ALLOW", "DENY"):
        raise expect_node.error("must be ALLOW or DENY", reason="test_file")
    req = item.child("request")
    if not req.is_map():
        raise req.error("must be a mapping in the `policy check` request schema", reason="request")
    if defaults is not None:
        req = Node(merge(defaults.value, req.value), req.file, req.pos, req.path)
    check = request_from_node(req, normalization)
    policy = _str(item.child("policy")) if item.value.get("policy") is not None else None
    rule = None
    if item.value.get("rule") is not None:
        rnode = item.child("rule")
        rule = rnode.scalar()
        if isinstance(rule, bool) or not isinstance(rule, int) or rule < 0:
            raise rnode.error("must be a rule index (0, 1, …)", reason="test_file")
    reason = None
    if item.value.get("reason") is not None:
        reason = _str(item.child("reason"))
        if reason not in _REASONS:
            raise item.child("reason").error(f"unknown reason; expected one of {', '.join(_REASONS)}",
                                             reason="test_file")
    return TestCase(name, item.pos, check, expect, policy, rule, reason, req.value)


def case_workloads(path: Path) -> Iterator[tuple[str, dict[str, str], str, int | None]]:
    """(namespace, labels, origin, TCP port or None) per case, for the linter; never raises."""
    try:
        root = _root(path)
    except PolicyError:
        return
    data = root.value
    cases = data if isinstance(data, list) else data.get("tests") if isinstance(data, dict) else None
    defaults = data.get("defaults") if isinstance(data, dict) else None
    for n, case in enumerate(cases if isinstance(cases, list) else ()):
        req = case.get("request") if isinstance(case, dict) else None
        if not isinstance(req, dict):
            continue
        if isinstance(defaults, CommentedMap) and isinstance(req, CommentedMap):
            req = merge(defaults, req)
        wl = req.get("workload") or {}
        if not isinstance(wl, dict):
            continue
        ns = wl.get("namespace") or "default"
        labels = wl.get("labels") or {}
        if not isinstance(ns, str) or not isinstance(labels, dict):
            continue
        port = (req.get("destination") or {}).get("port") if isinstance(req.get("destination"), dict) else None
        tcp = port if req.get("protocol") == "tcp" and isinstance(port, int) and not isinstance(port, bool) else None
        line = case.lc.line + 1 if hasattr(case, "lc") else 1
        yield ns, {str(k): str(v) for k, v in labels.items()}, f"{path}:{line}", tcp
