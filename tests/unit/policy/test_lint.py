"""`policy lint` core: every code fires where it should (file:line:col), and only there."""

from __future__ import annotations

import textwrap

import pytest

from secmesh.policy.lint import lint_text
from secmesh.policy.lintcodes import CODES

AP = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
STRICT = ("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, "
          "namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")


def ap(spec: str, name: str = "p", ns: str = "default", extra_meta: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return f"{AP}metadata:\n  name: {name}\n  namespace: {ns}\n{extra_meta}spec:\n{body}\n"


def codes(text: str) -> list[tuple[str, int, int]]:
    return [(d.code, d.line, d.column) for d in lint_text(text, "p.yaml").diagnostics]


# (case id, YAML, expected (code, line, column) — the first diagnostic)
ERRORS = [
    ("E001 yaml syntax", "a: [b\n", ("E001", 2, 1)),
    ("E002 duplicate key", AP + "metadata: {name: p}\nspec:\n  action: ALLOW\n  action: DENY\n", ("E002", 6, 3)),
    ("E003 yaml tag", ap("action: !foo ALLOW"), ("E003", 7, 11)),
    ("E004 not an object", "just: a mapping\n", ("E004", 1, 1)),
    ("E004 a list document", "- a\n- b\n", ("E004", 1, 1)),
    ("E005 api version", "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
     ("E005", 1, 13)),
    ("E006 unknown field", ap("rules:\n- to:\n  - operation:\n      pathz: [/a]"), ("E006", 10, 9)),
    ("E007 wrong type", ap("rules:\n- to:\n  - operation:\n      ports: [8080]"), ("E007", 10, 17)),
    ("E008 missing name", AP + "metadata: {namespace: a}\nspec: {}\n", ("E008", 3, 11)),
    ("E009 enum", ap("action: allow"), ("E009", 7, 11)),
    ("E010 empty from", ap("rules:\n- from: []"), ("E010", 8, 11)),
    ("E011 bad CIDR", ap('rules:\n- from:\n  - source:\n      ipBlocks: ["10.0.0.0/40"]'), ("E011", 10, 20)),
    ("E012 bad port", ap('rules:\n- to:\n  - operation:\n      ports: ["70000"]'), ("E012", 10, 17)),
    ("E013 bad path", ap('rules:\n- to:\n  - operation:\n      paths: ["/{id}"]'), ("E013", 10, 17)),
    ("E014 unknown attribute", ap('rules:\n- when:\n  - key: source.name\n    values: ["a"]'), ("E014", 10, 16)),
    ("E015 selector wildcard", ap("selector:\n  matchLabels:\n    app: '*'"), ("E015", 9, 12)),
    ("E016 CUSTOM without provider", ap("action: CUSTOM\nrules: [{}]"), ("E016", 7, 3)),
    ("E017 DENY without rules", ap("action: DENY"), ("E017", 7, 11)),
    ("E018 serviceAccounts with namespaces",
     ap('rules:\n- from:\n  - source:\n      serviceAccounts: ["a"]\n      namespaces: ["b"]'), ("E018", 10, 9)),
    ("E019 service account wildcard", ap('rules:\n- from:\n  - source:\n      serviceAccounts: ["a*"]'),
     ("E019", 10, 27)),
    ("E020 jwt rule", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\n"
                      "spec:\n  jwtRules:\n  - audiences: [a]\n", ("E020", 6, 5)),
    ("E021 port level on a namespace policy", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
     "metadata: {name: p}\nspec:\n  portLevelMtls: {80: {mode: STRICT}}\n", ("E021", 5, 18)),
    ("E022 CUSTOM with principals", ap('action: CUSTOM\nprovider: {name: opa}\nrules:\n- from:\n  - source:\n'
                                       '      principals: ["a"]'), ("E022", 12, 9)),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors(text: str, expected: tuple[str, int, int]) -> None:
    found = codes(text)
    assert expected in found, found
    assert CODES[expected[0]].severity == "error"


def test_every_problem_of_a_document_is_reported() -> None:
    text = ap("""
        rules:
        - to:
          - operation:
              pathz: [/a]
              ports: ["99999"]
          from:
          - source:
              ipBlocks: ["1.2.3.4/99"]
              notPrincipal: ["x"]
        """)
    assert [c for c, _, _ in codes(text)] == ["E006", "E012", "E011", "E006"]


def test_a_bad_document_does_not_hide_the_next_ones() -> None:
    text = ap("action: allow") + "---\n" + ap("action: DENY", name="q") + "---\nfoo: bar\n"
    assert [c for c, _, _ in codes(text)] == ["E009", "E017", "E004"]


def test_every_duplicate_key_is_reported_and_linting_goes_on() -> None:
    text = (AP + "metadata: {name: p}\nspec:\n  action: ALLOW\n  action: DENY\n---\n"
            + ap("rules:\n- from: []\n- from: []\n- from: []", name="q").replace("spec:\n", "spec:\n  action: ALLOW\n"
                                                                                  "  action: ALLOW\n"))
    found = codes(text)
    assert [c for c in found if c[0] == "E002"] == [("E002", 6, 3), ("E002", 15, 3)]


def test_clean_policies_have_no_diagnostics() -> None:
    text = ap("""
        selector:
          matchLabels: {app: web}
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/a/sa/b"]
          to:
          - operation:
              methods: ["GET"]
        """) + STRICT
    assert codes(text) == []


def test_w101_http_fields_on_a_tcp_port() -> None:
    svc = ("---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n"
           "spec:\n  selector: {app: db}\n  ports:\n  - {name: tcp-db, port: 5432}\n")
    text = ap("""
        selector: {matchLabels: {app: db}}
        rules:
        - to:
          - operation:
              methods: ["GET"]
        - to:
          - operation:
              ports: ["8080"]
              paths: ["/x"]
        """) + svc + STRICT
    found = codes(text)
    assert ("W101", 11, 18) in found
    assert len([c for c in found if c[0] == "W101"]) == 1  # rule 1 is limited to port 8080


def test_w102_principals_without_strict_mtls() -> None:
    text = ap("""
        rules:
        - from:
          - source:
              namespaces: ["a"]
        """)
    d = lint_text(text, "p.yaml").diagnostics
    assert [(x.code, x.line, x.column) for x in d] == [("W102", 10, 21)]
    assert "PERMISSIVE by default" in d[0].message
    assert codes(text + STRICT) == []
    permissive_port = ("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                       "metadata: {name: w, namespace: default}\nspec:\n  selector: {matchLabels: {app: w}}\n"
                       "  portLevelMtls: {9000: {mode: PERMISSIVE}}\n")
    scoped = ap('selector: {matchLabels: {app: w}}\nrules:\n- from:\n  - source: {principals: ["td/ns/a/sa/b"]}')
    assert [c[0] for c in codes(scoped + STRICT + permissive_port)] == ["W102"]


def test_w103_deny_with_only_http_fields() -> None:
    text = ap("action: DENY\nrules:\n- to:\n  - operation:\n      paths: ['/admin']") + STRICT
    assert codes(text) == [("W103", 9, 5)]
    with_port = ap("action: DENY\nrules:\n- to:\n  - operation:\n      ports: ['80']\n      paths: ['/admin']")
    assert codes(with_port + STRICT) == []


def test_w104_request_principals_star() -> None:
    text = ap("rules:\n- from:\n  - source:\n      requestPrincipals: ['*']") + STRICT
    assert codes(text) == [("W104", 10, 29)]
    assert codes(ap("rules:\n- from:\n  - source:\n      requestPrincipals: ['iss/*']") + STRICT) == []


def test_w105_allow_shadowed_by_deny() -> None:
    deny = ap("action: DENY\nrules:\n- to:\n  - operation: {ports: ['80'], paths: ['/admin/*']}", name="d")
    allow = ap("rules:\n- to:\n  - operation: {ports: ['80'], paths: ['/admin/users'], methods: [GET]}\n"
               "- to:\n  - operation: {ports: ['80'], paths: ['/public']}", name="a")
    found = lint_text(deny + "---\n" + allow + STRICT, "p.yaml").diagnostics
    assert [(d.code, d.line) for d in found] == [("W105", 19)]
    assert "DENY rule 0 of default/d" in found[0].message
    narrower = ap("action: DENY\nrules:\n- from:\n  - source: {ipBlocks: ['10.0.0.0/8']}", name="d")
    wider = ap("rules:\n- from:\n  - source: {ipBlocks: ['10.1.0.0/16']}", name="a")
    assert [c[0] for c in codes(narrower + "---\n" + wider + STRICT)] == ["W105"]
    assert codes(wider.replace("10.1.0.0/16", "192.168.0.0/16") + "---\n" + narrower + STRICT) == []


def test_w106_selector_matches_no_known_workload() -> None:
    deploy = ("---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: default}\n"
              "spec:\n  template:\n    metadata:\n      labels: {app: api}\n")
    text = ap("selector:\n  matchLabels: {app: apii}\nrules: [{}]") + deploy + STRICT
    assert codes(text) == [("W106", 8, 18)]
    assert codes(text.replace("apii", "api")) == []
    assert codes(ap("selector:\n  matchLabels: {app: x}\nrules: [{}]") + STRICT) == []  # nothing known: silent


def test_w107_v1beta1_and_suppression() -> None:
    text = ap("rules: [{}]").replace("/v1\n", "/v1beta1\n") + STRICT
    assert codes(text) == [("W107", 1, 13)]
    meta = "  annotations:\n    lint.secmesh.io/ignore: W107\n"
    assert codes(ap("rules: [{}]", extra_meta=meta).replace("/v1\n", "/v1beta1\n") + STRICT) == []


def test_w108_custom_and_envoy_filter_keys() -> None:
    text = ap("action: CUSTOM\nprovider: {name: opa}\nrules: [{}]") + STRICT
    assert codes(text) == [("W108", 7, 11)]


def test_documented_codes_match_the_registry() -> None:
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[3] / "docs" / "policy-lint-codes.md").read_text()
    for code in CODES.values():
        assert f"## {code.code} {code.name}" in doc, code.code
        section = doc.split(f"## {code.code} {code.name}", 1)[1].split("\n## ", 1)[0]
        assert "```yaml" in section and "Fix" in section, code.code
