"""CI policy tools benchmark: `policy lint` + `policy test` over 1,000 policies (target < 2 s).

The tree is generated to look like a real mono-repo of mesh policies: 50 namespaces, each
with a file of 20 AuthorizationPolicies (allow-by-principal with methods and paths,
deny-by-IP, JWT-protected admin paths, a TCP database port) and a PeerAuthentication, the
Services that declare the database ports TCP, and a `*.test.yaml` file with one case per
policy (1,000 cases). Measured in-process (what a pre-commit hook or a CI
step pays after interpreter start-up) and as the real CLI processes.

Run: .venv/bin/python bench/policy_tools.py [--policies 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from secmesh.policy.load import load_tree  # noqa: E402
from secmesh.policy.lint import lint_paths  # noqa: E402
from secmesh.policy.testfile import load_test_file  # noqa: E402
from secmesh.policy.testing import run_tests  # noqa: E402
from secmesh.policy.yamlsrc import find_test_files  # noqa: E402

PER_NS = 20

_ALLOW = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/{ns}/sa/client{i}", "cluster.local/ns/{ns}/sa/batch{i}"]
    to:
    - operation:
        methods: ["GET", "POST"]
        paths: ["/api/v1/{app}/*", "/healthz"]
  - from:
    - source:
        namespaces: ["monitoring"]
    to:
    - operation:
        ports: ["9090"]
"""
_DENY_IP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: DENY
  rules:
  - from:
    - source:
        remoteIpBlocks: ["203.0.113.0/24", "198.51.{i}.0/24"]
"""
_JWT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["https://login.example.com/*"]
    to:
    - operation:
        paths: ["/admin", "/admin/*"]
    when:
    - key: request.auth.claims[groups]
      values: ["admins"]
"""
_TCP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/{ns}/sa/client{i}"]
    to:
    - operation:
        ports: ["5432"]
"""
_MANIFESTS = """\
apiVersion: v1
kind: Service
metadata:
  name: {app}
  namespace: {ns}
spec:
  selector:
    app: {app}
  ports:
  - name: {port_name}
    port: {port}
"""
_CASE = """\
- name: case {i}
  request:
    workload: {{namespace: {ns}, labels: {{app: {app}}}}}
{body}  expect: {expect}
"""


def _case(kind: str, ns: str, app: str, i: int) -> str:
    principal = f"spiffe://cluster.local/ns/{ns}/sa/client{i}"
    if kind == "tcp":
        body = (f"    protocol: tcp\n    source: {{principal: {principal}}}\n"
                f"    destination: {{port: 5432}}\n")
        return _CASE.format(i=i, ns=ns, app=app, body=body, expect="ALLOW")
    if kind == "deny":
        body = (f"    source: {{principal: {principal}, ip: 10.0.0.1, remote_ip: 198.51.{i % 250}.9}}\n"
                "    request: {method: GET, path: /}\n")
        return _CASE.format(i=i, ns=ns, app=app, body=body, expect="DENY")
    if kind == "jwt":
        body = (f"    source: {{principal: {principal}}}\n"
                "    request: {method: GET, path: /admin/x, auth: {claims: {iss: https://login.example.com, "
                "sub: ada, groups: [admins]}}}\n")
        return _CASE.format(i=i, ns=ns, app=app, body=body, expect="ALLOW")
    body = f"    source: {{principal: {principal}}}\n    request: {{method: GET, path: /api/v1/{app}/items}}\n"
    return _CASE.format(i=i, ns=ns, app=app, body=body, expect="ALLOW")


def generate(root: Path, n: int) -> None:
    kinds = ["allow", "allow", "deny", "jwt", "tcp"]
    for start in range(0, n, PER_NS):
        ns = f"team{start // PER_NS}"
        docs, manifests, cases = [], [], []
        for i in range(start, min(n, start + PER_NS)):
            kind = kinds[i % len(kinds)]
            app = f"svc{i}"
            tmpl = {"allow": _ALLOW, "deny": _DENY_IP, "jwt": _JWT, "tcp": _TCP}[kind]
            docs.append(tmpl.format(name=f"{kind}-{i}", ns=ns, app=app, i=i % 250))
            if kind == "tcp":  # the Service that tells lint the database port is TCP
                manifests.append(_MANIFESTS.format(app=app, ns=ns, port=5432, port_name="tcp-postgres"))
            cases.append(_case(kind, ns, app, i % 250))
        docs.append(f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n"
                    f"  namespace: {ns}\nspec:\n  mtls:\n    mode: STRICT\n")
        (root / f"{ns}.yaml").write_text("---\n".join(docs))
        (root / f"{ns}-workloads.yaml").write_text("---\n".join(manifests))
        (root / f"{ns}.test.yaml").write_text("tests:\n" + "".join(cases))


def in_process(root: Path) -> tuple[float, float, int, int, float]:
    """(lint s, test s, objects, cases, CPU s): wall times, plus the process CPU time of both,
    which is what the run costs when other work shares the machine's cores."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = lint_paths([root])
    t1 = time.perf_counter()
    tests = [load_test_file(f) for f in find_test_files(root)]
    run = run_tests(tests, load_tree([root]), load_tree, coverage=True)
    t2, c2 = time.perf_counter(), time.process_time()
    assert result.errors == 0, result.diagnostics[:3]
    assert run.failed == 0, [r.message for r in run.results if r.status != "pass"][:3]
    return t1 - t0, t2 - t1, result.objects, len(run.results), c2 - c0


def cli(root: Path) -> tuple[float, float]:
    times = []
    for args in (["lint", "--strict", str(root)], ["test", "--coverage", str(root)]):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "secmesh", "policy", *args], capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, args.policies)
        best = min((in_process(root) for _ in range(args.repeat)), key=lambda r: r[0] + r[1])
        lint_s, test_s, objects, cases, cpu = best
        print(f"{args.policies} policies ({objects} objects incl. PeerAuthentications), {cases} test cases")
        print(f"in-process: lint {lint_s:.3f} s + test --coverage {test_s:.3f} s = {lint_s + test_s:.3f} s wall, "
              f"{cpu:.3f} s CPU (best of {args.repeat}; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores)")
        c_lint, c_test = min((cli(root) for _ in range(args.repeat)), key=sum)
        print(f"CLI processes: lint --strict {c_lint:.3f} s + test --coverage {c_test:.3f} s = "
              f"{c_lint + c_test:.3f} s (best of {args.repeat}, interpreter start-up included)")
        verdict = "OK" if lint_s + test_s < 2.0 else "OVER BUDGET (wall)"
        print(f"target: lint + test < 2 s in-process: {verdict}")


if __name__ == "__main__":
    main()
