"""What the user sees: step results as they happen, the final table, and the JSON document.

Human output goes through one rich `Console` (stderr when `--json` owns stdout). Spinners are
shown only on an interactive terminal; in CI (`--non-interactive` or no TTY) the same lines are
printed plainly, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table


@dataclass
class StepResult:
    """One claim of the demo and whether it held, with the evidence a user can check."""

    key: str                   # stable id for tests: allowed, denied, plaintext, rotation
    title: str
    claim: str
    ok: bool
    evidence: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "claim": self.claim, "ok": self.ok,
                "evidence": self.evidence, **self.data}


class Reporter:
    def __init__(self, *, json_mode: bool, interactive: bool) -> None:
        self.console = Console(file=sys.stderr if json_mode else sys.stdout, highlight=False,
                               soft_wrap=True)
        self.interactive = interactive and self.console.is_terminal

    def heading(self, text: str) -> None:
        self.console.print()
        self.console.rule(f"[bold]{escape(text)}", align="left")

    def line(self, text: str, style: str = "") -> None:
        self.console.print(escape(text), style=style or None)

    def command(self, text: str) -> None:
        self.console.print(f"[dim]$[/dim] [cyan]{escape(text)}[/cyan]")

    def block(self, text: str, limit: int = 24) -> None:
        lines = text.rstrip().splitlines()
        shown = lines[:limit] + ([f"… ({len(lines) - limit} more lines)"] if len(lines) > limit else [])
        for ln in shown:
            self.console.print(f"  [dim]│[/dim] {escape(ln)}")

    def ok(self, text: str) -> None:
        self.console.print(f"[bold green]✔[/bold green] {escape(text)}")

    def fail(self, text: str) -> None:
        self.console.print(f"[bold red]✘[/bold red] {escape(text)}")

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]ℹ[/yellow] {escape(text)}")

    def result(self, r: StepResult) -> None:
        for ev in r.evidence:
            self.console.print(f"  [dim]•[/dim] {escape(ev)}")
        (self.ok if r.ok else self.fail)(f"{r.title}: {r.claim}")

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        if self.interactive:
            with self.console.status(escape(text)):
                yield
        else:
            self.console.print(f"[dim]… {escape(text)}[/dim]")
            yield


def table(results: list[StepResult]) -> Table:
    t = Table(title="secmesh demo: summary", title_justify="left", show_lines=False)
    t.add_column("#", justify="right")
    t.add_column("step")
    t.add_column("claim")
    t.add_column("result")
    for i, r in enumerate(results, 1):
        t.add_row(str(i), r.title, r.claim, "[green]PASS[/green]" if r.ok else "[red]FAIL[/red]")
    return t


def document(results: list[StepResult], *, ok: bool, elapsed: float, workdir: str, kept: bool,
             layout: dict[str, Any] | None, metrics: dict[str, Any], error: str | None,
             network: dict[str, Any] | None = None) -> str:
    return json.dumps({"ok": ok, "elapsed_seconds": round(elapsed, 2), "workdir": workdir, "kept": kept,
                       "error": error, "steps": [r.to_json() for r in results], "metrics": metrics,
                       "layout": layout, "network": network}, indent=2, default=str)
