"""`policy lint`: every problem in a tree of policy files, in one run, each with a code.

Unlike the loader (which stops at the first problem, as the sidecar must), the linter reads
each document on its own and collects: a YAML syntax error ends only its file, a bad
document only itself, and within a document every validation problem is reported. Only
documents without errors take part in the cross-object warnings (`lintrules.py`), which
also look at the other manifests in the tree (Deployments, Services) and at the workloads
of the `*.test.yaml` cases, to know which workloads and TCP ports exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from secmesh.errors import PolicyError
from secmesh.policy import inventory as inv
from secmesh.policy.diagnostics import Diagnostic, at as diag_at, from_error
from secmesh.policy.lintcodes import FATAL, IGNORE_ANNOTATION, parse_ignore
from secmesh.policy.lintrules import CHECKS, Context, Linted
from secmesh.policy.load import KINDS, doc_node, expand_lists, is_object, kind_of, parse_object, policy_set
from secmesh.policy.model import ROOT_NAMESPACE_DEFAULT, PolicySet
from secmesh.policy.yamlsrc import (Node, collecting, find_test_files, is_test_file, parse_stream_lenient,
                                    policy_files)


@dataclass(slots=True)
class LintResult:
    diagnostics: list[Diagnostic]
    files: int = 0
    objects: int = 0
    policies: PolicySet = field(default_factory=PolicySet)

    @property
    def errors(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == "warning")

    @property
    def fatal(self) -> bool:
        """Some input could not be read as Kubernetes YAML at all (exit 2, not 1)."""
        return any(d.code in FATAL for d in self.diagnostics)

    def exit_code(self, strict: bool = False) -> int:
        if self.fatal:
            return 2
        return 1 if self.errors or (strict and self.warnings) else 0


class Linter:
    """Feed it texts (and test files), then `finish()`."""

    def __init__(self, root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> None:
        self.root_namespace = root_namespace
        self.diagnostics: list[Diagnostic] = []
        self.objects: list[Linted] = []
        self.foreign: list[Node] = []
        self.inventory = inv.Inventory()
        self.files = 0
        self._order = 0

    def add_missing(self, path: str, message: str) -> None:
        self.diagnostics.append(Diagnostic(path, 1, 1, "error", "E024", message))

    def add_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.add_missing(str(path), f"cannot read policy file: {exc}")
            return
        self.add_text(text, str(path))

    def add_text(self, text: str, filename: str) -> None:
        self.files += 1
        docs, errors = parse_stream_lenient(text, filename)
        self.diagnostics.extend(from_error(e, filename) for e in errors)
        dup_lines = sorted(d.line for d in map(lambda e: from_error(e, filename), errors) if d.code == "E002")
        starts = [d.pos.line for d in docs] + [10 ** 9]
        for n, doc in enumerate(docs):
            tainted = any(starts[n] <= line < starts[n + 1] for line in dup_lines)
            try:
                nodes = list(expand_lists(doc_node(doc)))
            except PolicyError as exc:
                self.diagnostics.append(from_error(exc, filename))
                continue
            for node in nodes:
                self._add_object(node, tainted)

    def _add_object(self, node: Node, tainted: bool) -> None:
        if not is_object(node) and node.value.get("kind") not in KINDS:
            missing = [k for k in ("apiVersion", "kind") if not isinstance(node.value.get(k), str)]
            self.diagnostics.append(diag_at(node.pos, "E004", "not a Kubernetes object: "
                                            f"missing or non-string {' and '.join(missing)}"))
            return
        try:
            kind = kind_of(node)
        except PolicyError as exc:
            self.diagnostics.append(from_error(exc, node.file))
            return
        if kind is None:
            self.foreign.append(node)
            return
        self._order += 1
        with collecting() as errs:
            try:
                obj = parse_object(kind, node, self._order)
            except PolicyError as exc:
                errs.append(exc)
                obj = None
        self.diagnostics.extend(from_error(e, node.file) for e in errs)
        if obj is not None and not errs and not tainted:
            self.objects.append(Linted(obj, node, _ignored(node)))

    def add_test_file(self, path: Path) -> None:
        """Workloads (and TCP ports) named by test cases; broken test files are `policy test`'s business."""
        from secmesh.policy.testfile import case_workloads

        for ns, labels, origin, tcp_port in case_workloads(path):
            self.inventory.add_test_workload(ns, labels, origin, tcp_port)

    def finish(self) -> LintResult:
        found = inv.collect(self.foreign)
        self.inventory.workloads[:0] = found.workloads
        self.inventory.tcp_ports[:0] = found.tcp_ports
        policies = policy_set(lo.obj for lo in self.objects)
        ctx = Context(self.objects, policies, self.inventory, self.root_namespace)
        out = list(self.diagnostics)
        for check in CHECKS:
            for lo, d in check(ctx):
                if d.code not in lo.ignore:
                    out.append(d)
        out = sorted(set(out), key=Diagnostic.sort_key)
        return LintResult(out, self.files, len(self.objects), policies)


def _ignored(node: Node) -> frozenset[str]:
    ann = node.value.get("metadata", {}).get("annotations") if isinstance(node.value.get("metadata"), dict) else None
    value = ann.get(IGNORE_ANNOTATION) if isinstance(ann, dict) else None
    return parse_ignore(value) if isinstance(value, str) else frozenset()


def lint_paths(paths: Iterable[str | Path], root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> LintResult:
    linter = Linter(root_namespace)
    tests: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            linter.add_missing(str(p), f"no such file or directory: {p}")
        elif p.is_dir():
            for f in policy_files(p):
                linter.add_file(f)
            tests += find_test_files(p)
        elif is_test_file(p.name):
            tests.append(p)
        else:
            linter.add_file(p)
    for t in tests:
        linter.add_test_file(t)
    return linter.finish()


def lint_text(text: str, filename: str = "policy.yaml", root_namespace: str = ROOT_NAMESPACE_DEFAULT) -> LintResult:
    """Lint one YAML text (tests and editors)."""
    linter = Linter(root_namespace)
    linter.add_text(text, filename)
    return linter.finish()
