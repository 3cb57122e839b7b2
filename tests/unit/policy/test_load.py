"""Loader: files and directories, multi-document streams, and errors that name file:line:col and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmesh.errors import PolicyError
from secmesh.policy.load import load_policies, loads_policies
from secmesh.policy.model import Action

GOOD = """\
# leading comment
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: one
  namespace: ns1
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/a/sa/b"]}
---
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pa, namespace: ns1, creationTimestamp: 2024-01-01T00:00:00Z}
spec:
  mtls: {mode: STRICT}
"""


def test_multi_document_stream_with_comments_and_empty_docs() -> None:
    ps = loads_policies(GOOD, "good.yaml")
    (ap,) = ps.authorization
    assert ap.action is Action.DENY and ap.dry_run and ap.meta.namespace == "ns1"
    assert str(ap.meta.pos) == "good.yaml:2:1"
    assert str(ap.rules[0].pos) == "good.yaml:11:5"
    assert ps.peer_authentication[0].meta.creation_timestamp.startswith("2024-01-01")


def test_directory_is_loaded_recursively_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text(GOOD.replace("name: one", "name: two"))
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("not yaml: [")
    ps = load_policies(tmp_path)
    assert [ap.meta.name for ap in ps.authorization] == ["one", "two"]
    assert [ap.meta.order for ap in ps.authorization] == [1, 3]


@pytest.mark.parametrize("doc,where,field", [
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n"
     "  - to:\n    - operation:\n        methodz: [GET]\n", "e.yaml:8:9", "spec.rules[0].to[0].operation.methodz"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n"
     "  - when:\n    - key: source.ip\n      values: [\"300.1.1.1\"]\n", "e.yaml:8:16", "spec.rules[0].when[0].values[0]"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: 3\n",
     "e.yaml:5:11", "spec.action"),
    ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  namespace: x\n", "e.yaml:4:3",
     "name is required"),
])
def test_errors_name_file_line_col_and_field(doc: str, where: str, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        loads_policies(doc, "e.yaml")
    assert info.value.location == where
    assert field in str(info.value)


def test_yaml_syntax_error_has_a_location() -> None:
    with pytest.raises(PolicyError) as info:
        loads_policies("a: [1\n", "s.yaml")
    assert info.value.location.startswith("s.yaml:")


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        load_policies(tmp_path / "missing")


def test_kubectl_list_is_expanded() -> None:
    doc = ("apiVersion: v1\nkind: List\nitems:\n- apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n"
           "  metadata: {name: a}\n  spec: {}\n")
    assert loads_policies(doc).authorization[0].meta.name == "a"
