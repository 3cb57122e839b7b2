"""`policy diff` output: a table for the terminal, markdown for a pull-request comment, JSON.

JSON is the stable contract: `{"widened", "narrowed", "changes": [{"workload": {"namespace",
"labels"}, "request", "old", "new", "summary"}]}`, where each `request` is in the `policy
check` schema and really changes decision between OLD and NEW.
"""

from __future__ import annotations

import json

from secmesh.policy.diff import Change, DiffResult


def _where(c: Change) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(c.workload.labels.items()))
    return f"{c.workload.namespace}" + (f" ({labels})" if labels else "")


def _example(c: Change) -> str:
    r = c.request
    src = r["source"].get("principal") or f"plaintext from {r['source'].get('ip', '?')}"
    if c.protocol == "tcp":
        return f"{src} → TCP port {r['destination']['port']}"
    q = r["request"]
    return f"{src} → {q['method']} {q['path']} (port {r['destination']['port']})"


def _verdict(result: DiffResult) -> str:
    if not result.changes:
        return "no change in access"
    parts = []
    if result.widened:
        parts.append(f"{sum(c.new == 'ALLOW' for c in result.changes)} widening change(s)")
    if result.narrowed:
        parts.append(f"{sum(c.new == 'DENY' for c in result.changes)} narrowing change(s)")
    return ", ".join(parts) + f" in {result.workloads} workload scope(s)"


def text(result: DiffResult) -> str:
    if not result.changes:
        return "no change in access\n"
    lines = []
    for c in result.changes:
        arrow = "+ GAINS" if c.new == "ALLOW" else "- LOSES"
        lines.append(f"{arrow}  {_where(c)}{' [TCP]' if c.protocol == 'tcp' else ''}")
        lines.append(f"    who:  {c.sources}")
        lines.append(f"    what: {c.operations}")
        lines.append(f"    e.g.  {_example(c)}  ({c.old} → {c.new})")
    lines.append("")
    lines.append(_verdict(result))
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(result: DiffResult) -> str:
    out = ["### secmesh policy diff", ""]
    if not result.changes:
        out.append("No request changes decision: **no change in access**.")
        return "\n".join(out) + "\n"
    icon = "⚠️ access **widens**" if result.widened else "access only narrows"
    out.append(f"{icon}: {_verdict(result)}.")
    out.append("")
    out.append("| | Workload | Who | What | Example request | Old → New |")
    out.append("|---|---|---|---|---|---|")
    for c in result.changes:
        sign = "🟢 gains" if c.new == "ALLOW" else "🔴 loses"
        proto = " (TCP)" if c.protocol == "tcp" else ""
        out.append(f"| {sign} | `{_md(_where(c))}`{proto} | {_md(c.sources)} | {_md(c.operations)} | "
                   f"`{_md(_example(c))}` | {c.old} → {c.new} |")
    out.append("")
    out.append("<sub>Computed by evaluating both versions with the secmesh engine on every class of requests "
               "the policies distinguish; each example request changes decision under `secmesh policy check`."
               "</sub>")
    return "\n".join(out) + "\n"


def as_json(result: DiffResult) -> str:
    return json.dumps(result.to_dict(), indent=2) + "\n"
