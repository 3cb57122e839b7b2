"""`secmesh policy …`: offline tools over Istio security policies, for people and for CI.

- `check`: decide one request. Exit 0 ALLOW, 1 DENY, 2 error.
- `lint`:  every problem in a tree of policies, with codes. Exit 0 clean, 1 errors (or
           warnings with --strict), 2 input that is not YAML / Kubernetes objects at all.
- `test`:  run `*.test.yaml` cases. Exit 0 all pass, 1 a case failed, 2 bad input.
- `diff`:  who gains or loses access between two versions. Exit 0, 1 with --fail-on and a
           matching change, 2 bad input.

Bad input is always one line on stderr, `error: file:line:col: message`, never a traceback.
The commands here only parse options and print: the work is in `secmesh.policy`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

import click

EXIT_ALLOW, EXIT_DENY, EXIT_ERROR = 0, 1, 2
_ROOT_NS = click.option("--root-namespace", default="istio-system", show_default=True,
                        help="Istio's meshConfig.rootNamespace: policies there apply mesh-wide.")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _emit(text: str | bytes, output: str | None) -> None:
    if output is None:
        click.echo(text if isinstance(text, str) else text.decode(), nl=False)
        return
    try:
        Path(output).write_bytes(text.encode() if isinstance(text, str) else text)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc}")


@click.group(name="policy", help="Istio AuthorizationPolicy tools: check, lint, test, diff.")
def cli() -> None:
    pass


@cli.command("check")
@click.option("--policies", "policies_path", required=True, type=click.Path(exists=False),
              help="A policy file or a directory (every *.yaml / *.yml below it).")
@click.option("--request", "request_path", required=True, type=click.Path(exists=False),
              help="The request to decide, as JSON (see docs: workload, protocol, source, destination, request).")
@click.option("--root-namespace", default="istio-system", show_default=True,
              help="Istio's meshConfig.rootNamespace: policies there apply mesh-wide.")
@click.option("--path-normalization", type=click.Choice(["BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "NONE"]),
              default="BASE", show_default=True, help="meshConfig.pathNormalization applied before path matching.")
def check(policies_path: str, request_path: str, root_namespace: str, path_normalization: str) -> None:
    """Decide one request the way Istio would; exit 0 ALLOW, 1 DENY, 2 error."""
    from secmesh.errors import SecmeshError
    from secmesh.policy.engine import Engine
    from secmesh.policy.load import load_policies
    from secmesh.policy.normalize import PathNormalization
    from secmesh.policy.request_json import load_request

    try:
        policies = load_policies(policies_path)
        req = load_request(request_path, PathNormalization(path_normalization))
        engine = Engine(policies, req.workload, root_namespace)
        decision = engine.decide(req.conn, req.request, req.protocol)
        mode = engine.peer.mode(req.conn.dest_port)
    except SecmeshError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_ERROR)
    out = decision.to_dict()
    out.update({"protocol": req.protocol, "mtls_mode": mode.value,
                "workload": {"namespace": req.workload.namespace, "labels": dict(req.workload.labels)}})
    click.echo(json.dumps(out, sort_keys=False))
    sys.exit(EXIT_ALLOW if decision.allowed else EXIT_DENY)


@cli.command("lint")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              show_default=True, help="text for people, json for tools, sarif for code scanning, github for "
                                      "workflow annotations.")
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to a file, not stdout.")
@_ROOT_NS
def lint(paths: tuple[str, ...], fmt: str, strict: bool, output: str | None, root_namespace: str) -> None:
    """Check policy files (and directories) for Istio validation errors and known traps.

    Prints `file:line:col: error|warning CODE message` (codes: docs/policy-lint-codes.md).
    Exit 0 clean, 1 errors (or warnings with --strict), 2 unreadable input.
    Silence a warning for one object with the annotation `lint.secmesh.io/ignore: "W101,W103"`.
    """
    from secmesh import __version__
    from secmesh.policy import report
    from secmesh.policy.lint import lint_paths

    result = lint_paths(paths, root_namespace)
    diags = result.diagnostics
    if fmt == "json":
        _emit(report.as_json(diags), output)
    elif fmt == "sarif":
        _emit(report.sarif(diags, __version__), output)
    elif fmt == "github":
        _emit(report.github(diags), output)
    else:
        _emit(report.text(diags), output)
    if fmt in ("text", "github") or output is not None:
        click.echo(report.summary(result.errors, result.warnings, result.files, result.objects), err=True)
    sys.exit(result.exit_code(strict))


@cli.command("test")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--policies", "policy_paths", multiple=True, type=click.Path(),
              help="Policies to test against (repeatable); default: the policy files under PATHS.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Also write a JUnit XML report.")
@click.option("--coverage", is_flag=True, help="Report the policy rules that no case matched.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--path-normalization", type=click.Choice(["BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "NONE"]),
              default="BASE", show_default=True, help="meshConfig.pathNormalization applied before path matching.")
@_ROOT_NS
def test(paths: tuple[str, ...], policy_paths: tuple[str, ...], junit_path: str | None, coverage: bool, fmt: str,
         path_normalization: str, root_namespace: str) -> None:
    """Run the `*.test.yaml` cases under PATHS (default: .) against the policies.

    Each case is a `policy check` request with the expected decision (and optionally the
    deciding policy). Exit 0 all pass, 1 a case failed, 2 bad input.
    """
    from secmesh.errors import SecmeshError
    from secmesh.policy import report_tests
    from secmesh.policy.load import load_tree
    from secmesh.policy.normalize import PathNormalization
    from secmesh.policy.testfile import load_test_file
    from secmesh.policy.testing import run_tests
    from secmesh.policy.yamlsrc import find_test_files, is_test_file

    roots = paths or (".",)
    try:
        files = [f for p in roots for f in find_test_files(p)]
        if not files:
            _fail(f"no *.test.yaml files under {', '.join(roots)}")
        tests = [load_test_file(f, PathNormalization(path_normalization)) for f in files]
        default_paths = policy_paths or tuple(p for p in roots if not is_test_file(Path(p).name))
        policies = load_tree(default_paths)
        run = run_tests(tests, policies, load_tree, root_namespace=root_namespace, coverage=coverage)
    except SecmeshError as exc:
        _fail(exc.message)
    if junit_path:
        _emit(report_tests.junit(run), junit_path)
    if fmt == "json":
        _emit(report_tests.as_json(run), None)
    else:
        _emit(report_tests.table(run), None)
        if run.coverage is not None:
            _emit(report_tests.coverage_text(run.coverage), None)
    sys.exit(1 if run.failed else 0)


@cli.command("diff")
@click.argument("sides", nargs=-1, type=click.Path())
@click.option("--git", "git_range", metavar="BASE..HEAD",
              help="Compare PATH at two git revisions (BASE...HEAD: from the merge base, as a pull request).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("--fail-on", type=click.Choice(["widen", "narrow", "any"]), default=None,
              help="Exit 1 when access widens (or narrows, or changes at all).")
@click.option("--protocol", type=click.Choice(["auto", "http", "tcp", "both"]), default="auto", show_default=True,
              help="auto: TCP semantics on the ports that Services in the trees declare TCP, HTTP elsewhere.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to a file, not stdout.")
@_ROOT_NS
def diff(sides: tuple[str, ...], git_range: str | None, fmt: str, fail_on: str | None, protocol: str,
         output: str | None, root_namespace: str) -> None:
    """Who gains or loses access between OLD and NEW (directories or files), or with
    `--git BASE..HEAD PATH…` between two revisions. A semantic diff, computed with the engine.

    Exit 0 (1 with --fail-on when it applies), 2 bad input.
    """
    from secmesh.errors import SecmeshError
    from secmesh.policy import report_diff
    from secmesh.policy.diff import diff as semantic_diff, verify
    from secmesh.policy.diffsource import load_git, load_paths, parse_range

    try:
        if git_range:
            if not sides:
                raise click.UsageError("--git needs the PATH(s) to compare")
            base, head = parse_range(git_range, Path.cwd())
            (old, _), (new, inv) = load_git(base, sides, Path.cwd()), load_git(head, sides, Path.cwd())
        else:
            if len(sides) != 2:
                raise click.UsageError("give OLD and NEW (files or directories), or --git BASE..HEAD PATH")
            (old, inv_old), (new, inv) = load_paths([sides[0]]), load_paths([sides[1]])
            inv.tcp_ports += inv_old.tcp_ports
        result = semantic_diff(old, new, root_namespace=root_namespace, inventory=inv, protocols=protocol)
        problems = verify(result, old, new, root_namespace)
    except SecmeshError as exc:
        _fail(exc.message)
    for note in result.notes + [f"internal check failed: {p}" for p in problems]:
        click.echo(f"warning: {note}", err=True)
    render = {"json": report_diff.as_json, "markdown": report_diff.markdown}.get(fmt, report_diff.text)
    _emit(render(result), output)
    failing = {"widen": result.widened, "narrow": result.narrowed,
               "any": bool(result.changes)}.get(fail_on or "", False)
    sys.exit(1 if failing or problems else 0)
