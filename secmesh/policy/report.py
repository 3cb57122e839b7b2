"""`policy lint` output formats: text, json (stable contract), SARIF 2.1.0, GitHub annotations.

- text:   `file:line:col: error|warning CODE message`, one per line, then a summary on stderr.
- json:   `{"diagnostics": [{"file", "line", "column", "severity", "code", "message"}]}`.
- sarif:  one run of the `secmesh-policy-lint` driver with every code as a rule, for GitHub
          code scanning (`github/codeql-action/upload-sarif`); paths are made relative to the
          working directory (the checkout root in CI), as code scanning expects.
- github: workflow commands (`::error file=…,line=…,col=…,title=CODE::message`), which the
          Actions runner turns into annotations on the pull request's diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from secmesh.policy.diagnostics import Diagnostic
from secmesh.policy.lintcodes import CODES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "secmesh-policy-lint"


def text(diags: Iterable[Diagnostic]) -> str:
    return "".join(f"{d}\n" for d in diags)


def as_json(diags: Iterable[Diagnostic]) -> str:
    return json.dumps({"diagnostics": [d.to_dict() for d in diags]}, indent=2) + "\n"


def _relative(path: str, base: Path) -> str:
    """A forward-slash path relative to `base` when below it (code scanning's expectation)."""
    try:
        rel = os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:  # another drive
        return Path(path).as_posix()
    if rel.startswith(".."):
        return Path(path).resolve().as_uri()
    return Path(rel).as_posix()


def sarif(diags: Iterable[Diagnostic], version: str, base: Path | None = None) -> str:
    base = base or Path.cwd()
    diags = list(diags)
    rules = [{
        "id": c.code,
        "name": "".join(part.capitalize() for part in c.name.split("-")),
        "shortDescription": {"text": c.summary},
        "fullDescription": {"text": f"{c.code} {c.name}: {c.summary}"},
        "help": {"text": f"See {c.doc} for an example and the fix.",
                 "markdown": f"See [`{c.code}` in the lint codes]({c.doc}) for an example and the fix."},
        "defaultConfiguration": {"level": c.severity},
        "properties": {"tags": ["security", "istio", "authorization"]},
    } for c in CODES.values()]
    index = {c: i for i, c in enumerate(CODES)}
    results = []
    for d in diags:
        uri = _relative(d.file, base)
        result: dict[str, Any] = {
            "ruleId": d.code,
            "ruleIndex": index[d.code],
            "level": d.severity,
            "message": {"text": d.message},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": uri} | ({} if ":" in uri.split("/")[0] else {"uriBaseId": "%SRCROOT%"}),
                "region": {"startLine": d.line, "startColumn": d.column},
            }}],
            "partialFingerprints": {"secmeshLint/v1": f"{d.code}:{uri}:{d.message}"},
        }
        results.append(result)
    log = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": TOOL_NAME, "version": version, "informationUri":
                                "https://istio.io/latest/docs/reference/config/security/authorization-policy/",
                                "rules": rules}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": base.resolve().as_uri() + "/"}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
    return json.dumps(log, indent=2) + "\n"


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github(diags: Iterable[Diagnostic]) -> str:
    out = []
    for d in diags:
        props = (f"file={_escape_property(d.file)},line={d.line},col={d.column},"
                 f"title={_escape_property(d.code + ' ' + CODES[d.code].name)}")
        out.append(f"::{d.severity} {props}::{_escape_data(d.message)}\n")
    return "".join(out)


def summary(errors: int, warnings: int, files: int, objects: int) -> str:
    return (f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''} "
            f"in {files} file{'s' if files != 1 else ''} ({objects} valid object{'s' if objects != 1 else ''})")
