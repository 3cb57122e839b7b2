"""The two sides of `policy diff`: directories/files on disk, or a git range over a path.

Git is read through `git rev-parse`, `git ls-tree` and `git show` (plain subprocesses in
the working directory, which must be inside the repository); nothing is checked out. Each
side is loaded with the strict CI loader, and its other manifests (Services) give the
inventory of TCP ports, so that TCP semantics are diffed where ports are TCP.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable

from secmesh.errors import PolicyError
from secmesh.policy import inventory
from secmesh.policy.load import doc_node, documents_to_policies, expand_lists, kind_of
from secmesh.policy.model import PolicySet
from secmesh.policy.yamlsrc import Document, is_test_file, load_documents, parse_stream

Side = tuple[PolicySet, inventory.Inventory]


def _side(docs: list[Document]) -> Side:
    policies = documents_to_policies(docs, require_objects=True)
    foreign = [n for d in docs for n in expand_lists(doc_node(d)) if kind_of(n) is None]
    return policies, inventory.collect(foreign)


def load_paths(paths: Iterable[str | Path]) -> Side:
    docs: list[Document] = []
    for p in paths:
        docs.extend(load_documents(p))
    return _side(docs)


def _git(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PolicyError("git is not installed (needed for --git)", reason="git") from None
    except subprocess.TimeoutExpired:
        raise PolicyError(f"git {' '.join(args)} timed out", reason="git") from None
    if proc.returncode != 0:
        raise PolicyError(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}", reason="git")
    return proc.stdout


def parse_range(spec: str, cwd: Path) -> tuple[str, str]:
    """`BASE..HEAD`, `BASE...HEAD` (from the merge base, as pull requests diff) or `BASE..`."""
    three = "..." in spec
    base, _, head = spec.partition("..." if three else "..")
    if not _ or not base:
        raise PolicyError(f"--git expects BASE..HEAD (or BASE...HEAD), got {spec!r}", reason="git")
    head = head or "HEAD"
    for rev in (base, head):
        try:
            _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd)
        except PolicyError:
            raise PolicyError(f"git range {spec!r}: unknown revision {rev!r}", reason="git") from None
    if three:
        base = _git(["merge-base", base, head], cwd).strip()
    return base, head


def load_git(rev: str, paths: Iterable[str], cwd: Path) -> Side:
    docs: list[Document] = []
    for path in paths:
        listing = _git(["ls-tree", "-r", "--name-only", "--full-name", rev, "--", path], cwd).splitlines()
        for name in sorted(listing):
            if not name.endswith((".yaml", ".yml")) or is_test_file(name):
                continue
            text = _git(["show", f"{rev}:{name}"], cwd)
            docs.extend(parse_stream(text, f"{rev}:{name}"))
    return _side(docs)
