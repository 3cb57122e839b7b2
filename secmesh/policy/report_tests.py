"""`policy test` output: a table for people, JUnit XML for CI, JSON for tools, and coverage.

The JUnit file follows the shape CI systems (GitHub test reporters, GitLab, Jenkins) read:
`<testsuites>` → one `<testsuite>` per test file → one `<testcase>` per case, with
`<failure>` (wrong decision) or `<error>` (the policy could not be evaluated) children.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from typing import Any

from secmesh.policy.testing import CaseResult, Coverage, TestRun

_MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}


def _loc(r: CaseResult) -> str:
    return f"{r.case.pos.file}:{r.case.pos.line}"


def table(run: TestRun) -> str:
    rows = [("RESULT", "CASE", "EXPECTED", "ACTUAL", "DECIDED BY", "WHERE")]
    for r in run.results:
        rows.append((_MARK[r.status], r.case.name, r.case.expect, r.actual or "-", r.decided_by or "-", _loc(r)))
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c if len(c) <= widths[i] else c[: widths[i] - 1] + "…" for i, c in enumerate(row)]
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip())
    problems = [r for r in run.results if r.status != "pass"]
    if problems:
        lines.append("")
        for r in problems:
            lines.append(f"{_MARK[r.status]} {_loc(r)}: {r.case.name}: {r.message}")
    lines.append("")
    lines.append(f"{run.passed} passed, {run.failed} failed")
    return "\n".join(lines) + "\n"


def coverage_text(cov: Coverage) -> str:
    lines = [f"coverage: {cov.covered}/{cov.total} rules matched by at least one case ({cov.percent:.0f}%)"]
    for u in cov.uncovered:
        lines.append(f"  {u.pos}: {u.action} {u.policy} rule {u.rule}: {u.why}")
    return "\n".join(lines) + "\n"


def as_json(run: TestRun) -> str:
    doc: dict[str, Any] = {
        "passed": run.passed, "failed": run.failed,
        "results": [{"file": r.case.pos.file, "line": r.case.pos.line, "name": r.case.name, "status": r.status,
                     "expected": r.case.expect, "actual": r.actual, "decided_by": r.decided_by,
                     "message": r.message} for r in run.results],
    }
    if run.coverage is not None:
        c = run.coverage
        doc["coverage"] = {"total": c.total, "covered": c.covered,
                           "uncovered": [{"policy": u.policy, "rule": u.rule, "action": u.action, "file": u.pos.file,
                                          "line": u.pos.line, "column": u.pos.col, "why": u.why}
                                         for u in c.uncovered]}
    return json.dumps(doc, indent=2) + "\n"


def junit(run: TestRun) -> bytes:
    suites = ET.Element("testsuites", name="secmesh policy test", tests=str(len(run.results)),
                        failures=str(sum(r.status == "fail" for r in run.results)),
                        errors=str(sum(r.status == "error" for r in run.results)),
                        time=f"{sum(r.seconds for r in run.results):.6f}")
    by_file: OrderedDict[str, list[CaseResult]] = OrderedDict()
    for r in run.results:
        by_file.setdefault(r.case.pos.file, []).append(r)
    for file, results in by_file.items():
        suite = ET.SubElement(suites, "testsuite", name=file, tests=str(len(results)),
                              failures=str(sum(r.status == "fail" for r in results)),
                              errors=str(sum(r.status == "error" for r in results)), skipped="0",
                              time=f"{sum(r.seconds for r in results):.6f}")
        classname = Path(file).as_posix().removesuffix(".yaml").removesuffix(".yml").replace("/", ".")
        for r in results:
            tc = ET.SubElement(suite, "testcase", classname=classname, name=r.case.name, file=file,
                               line=str(r.case.pos.line), time=f"{r.seconds:.6f}")
            if r.status == "fail":
                el = ET.SubElement(tc, "failure", message=r.message, type="WrongDecision")
                el.text = f"{_loc(r)}: expected {r.case.expect}, got {r.actual} ({r.decided_by or 'no policy'})\n" \
                          f"{r.message}"
            elif r.status == "error":
                el = ET.SubElement(tc, "error", message=r.message, type="PolicyError")
                el.text = r.message
            else:
                out = ET.SubElement(tc, "system-out")
                out.text = r.message
    if run.coverage is not None:
        props = ET.Element("properties")
        ET.SubElement(props, "property", name="coverage.rules.total", value=str(run.coverage.total))
        ET.SubElement(props, "property", name="coverage.rules.covered", value=str(run.coverage.covered))
        for suite in suites:
            suite.insert(0, props)
            break
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
