"""The closed set of `policy lint` codes: one per kind of problem, each documented.

Errors (E…) are what Istio's admission webhook or the Kubernetes API server would refuse,
so a file with one never reaches a cluster. Warnings (W…) are valid YAML that very likely
does not do what its author thinks (the known traps). Codes are stable: CI configurations
and suppressions (`lint.secmesh.io/ignore`) name them, and `docs/policy-lint-codes.md`
explains each with an example and a fix. A loader `reason` maps to exactly one code.
"""

from __future__ import annotations

from dataclasses import dataclass

from secmesh.errors import PolicyError

DOCS_PATH = "docs/policy-lint-codes.md"
IGNORE_ANNOTATION = "lint.secmesh.io/ignore"


@dataclass(frozen=True, slots=True)
class LintCode:
    code: str
    name: str
    severity: str  # error | warning
    summary: str

    @property
    def doc(self) -> str:
        """Where the code is explained (a repository-relative path with the heading's anchor)."""
        return f"{DOCS_PATH}#{self.code.lower()}-{self.name}"


_ALL = (
    LintCode("E001", "yaml-syntax", "error", "The file is not valid YAML."),
    LintCode("E002", "duplicate-key", "error", "A mapping repeats a key; Kubernetes rejects it (PyYAML would keep "
                                               "the last one silently)."),
    LintCode("E003", "yaml-tag", "error", "A non-standard YAML tag (such as !!python/object) is used."),
    LintCode("E004", "not-kubernetes-object", "error", "A document is not a Kubernetes object (a mapping with "
                                                       "apiVersion and kind)."),
    LintCode("E005", "api-version", "error", "A security.istio.io kind with a missing or unsupported apiVersion."),
    LintCode("E006", "unknown-field", "error", "A field the CRD does not define (often a typo or snake_case)."),
    LintCode("E007", "wrong-type", "error", "A value of the wrong type (a number where a string is expected, …)."),
    LintCode("E008", "missing-required", "error", "A required field is missing (metadata.name)."),
    LintCode("E009", "invalid-enum", "error", "An enum value that does not exist (action, mTLS mode)."),
    LintCode("E010", "empty-value", "error", "An empty list, source, operation or string where Istio requires "
                                             "a value."),
    LintCode("E011", "invalid-ip", "error", "An IP address or CIDR range that does not parse."),
    LintCode("E012", "invalid-port", "error", "A port that is not a number in 0..65535."),
    LintCode("E013", "invalid-path", "error", "A path template Istio does not support."),
    LintCode("E014", "invalid-condition", "error", "A `when` condition with an unknown key or a bad value."),
    LintCode("E015", "invalid-selector", "error", "A workload selector with a wildcard or an invalid label."),
    LintCode("E016", "custom-provider", "error", "CUSTOM without `provider.name`, or a provider on another "
                                                 "action."),
    LintCode("E017", "rules-required", "error", "A DENY or CUSTOM policy without `rules` never triggers."),
    LintCode("E018", "conflicting-fields", "error", "Fields that cannot be used together (selector with "
                                                    "targetRefs, serviceAccounts with principals)."),
    LintCode("E019", "invalid-service-account", "error", "A serviceAccounts entry with a wildcard or a bad "
                                                          "format."),
    LintCode("E020", "invalid-jwt-rule", "error", "A RequestAuthentication jwtRule Istio rejects."),
    LintCode("E021", "invalid-port-level-mtls", "error", "portLevelMtls on a mesh/namespace policy, empty, or "
                                                         "with a bad port."),
    LintCode("E022", "custom-unsupported-field", "error", "A source field or `when` key that CUSTOM does not "
                                                          "support."),
    LintCode("E023", "too-many-values", "error", "More rules or values than Istio allows."),
    LintCode("E024", "unreadable", "error", "A path that does not exist or a file that cannot be read."),
    LintCode("W101", "http-field-on-tcp-port", "warning", "HTTP-only fields on a port declared TCP: Istio skips "
                                                           "the ALLOW rule, or widens the DENY rule, there."),
    LintCode("W102", "principal-without-mtls", "warning", "principals/namespaces on a workload whose "
                                                           "PeerAuthentication allows plaintext (no principal)."),
    LintCode("W103", "deny-http-only", "warning", "A DENY rule whose only fields are HTTP: on TCP ports it "
                                                   "denies everything."),
    LintCode("W104", "request-principal-star", "warning", "requestPrincipals [\"*\"] does not match tokens "
                                                           "without `sub`."),
    LintCode("W105", "allow-shadowed-by-deny", "warning", "An ALLOW rule that can never allow anything: a DENY "
                                                           "rule always matches first."),
    LintCode("W106", "selector-matches-nothing", "warning", "A selector that matches no workload known in "
                                                             "the namespace."),
    LintCode("W107", "deprecated-v1beta1", "warning", "security.istio.io/v1beta1 is deprecated; use v1."),
    LintCode("W108", "not-enforced-by-secmesh", "warning", "Valid Istio that secmesh sidecars do not enforce "
                                                            "(CUSTOM, Envoy filter keys, targetRefs)."),
)
CODES: dict[str, LintCode] = {c.code: c for c in _ALL}

# loader/validator `reason` → code
_BY_REASON = {
    "yaml": "E001", "duplicate_key": "E002", "yaml_tag": "E003", "not_object": "E004", "api_version": "E005",
    "unknown_field": "E006", "type": "E007", "required": "E008", "enum": "E009", "empty_value": "E010",
    "ip": "E011", "port": "E012", "path": "E013", "condition": "E014", "selector": "E015",
    "custom_provider": "E016", "rules_required": "E017", "conflict": "E018", "service_account": "E019",
    "jwt": "E020", "port_level": "E021", "custom_field": "E022", "too_many": "E023", "not_found": "E024",
    "unreadable": "E024",
}
# codes after which a file cannot be linted at all: `policy lint` exits 2 ("bad input")
FATAL = frozenset({"E001", "E004", "E024"})


def code_for(err: PolicyError) -> str:
    return _BY_REASON.get(err.reason, "E010")


def parse_ignore(value: str) -> frozenset[str]:
    """`lint.secmesh.io/ignore: "W101, W103"` (or `all`) → the codes to drop for that object."""
    items = {v.strip().upper() for v in value.replace(";", ",").split(",") if v.strip()}
    return frozenset(CODES) if "ALL" in items else frozenset(items)
