"""Keep the operator docs honest: they must say what the code does, and keep saying it.

- every `secmesh_*` metric defined under `secmesh/` is in docs/metrics.md, and every metric name
  written anywhere in docs/ exists in the code;
- every reason of each closed reason set is in its own section of docs/reasons.md, and each
  section lists no reason the code cannot produce;
- every config field of the CA, the agent and the sidecar has a row in docs/configuration.md
  whose default, environment variable and flag match the code, and each worked example loads;
- every relative link (and #anchor) in docs/*.md and README.md points at something that exists.

The reason sets are read from the code itself: declared tuples and enums where they exist,
otherwise the string literals at the places that raise or count (via `ast`). So a new reason
added to the code fails this test until it is documented.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import typing
from pathlib import Path
from typing import Any, Iterable

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "secmesh"
DOCS = ROOT / "docs"


def _read(name: str) -> str:
    return (DOCS / name).read_text()


# ============================================================================ metrics

_METRIC_DEF = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|Enum|CounterMetricFamily|GaugeMetricFamily|"
    r"HistogramMetricFamily|SummaryMetricFamily|InfoMetricFamily)\(\s*[\"'](secmesh_[a-z0-9_]+)[\"']")
_KIND = {"Counter": "counter", "CounterMetricFamily": "counter", "Gauge": "gauge", "GaugeMetricFamily": "gauge",
         "Histogram": "histogram", "HistogramMetricFamily": "histogram", "Summary": "summary",
         "SummaryMetricFamily": "summary", "Info": "info", "InfoMetricFamily": "info", "Enum": "enum"}


def _code_metrics() -> dict[str, str]:
    """Every metric defined in the source: base name → kind (the base of a counter has no `_total`)."""
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        for ctor, name in _METRIC_DEF.findall(path.read_text()):
            kind = _KIND[ctor]
            base = name.removesuffix("_total") if kind == "counter" else name
            found[base] = kind
    return found


def _exposed(base: str, kind: str) -> tuple[str, set[str]]:
    """(the name operators query, every sample name Prometheus text may carry for it)."""
    if kind == "counter":
        return f"{base}_total", {f"{base}_total", f"{base}_created"}
    if kind in ("histogram", "summary"):
        return base, {base, f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
    if kind == "info":
        return f"{base}_info", {f"{base}_info"}
    return base, {base}


def _registry_families() -> set[str]:
    """Families on the one registry once every metrics module is imported (catches odd definitions)."""
    for path in list(SRC.rglob("metrics.py")) + list(SRC.rglob("*_metrics.py")):
        if path.parent == SRC:
            continue
        importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    from secmesh.metrics import REGISTRY

    return {family.name for family in REGISTRY.collect()}


def test_metric_definitions_are_found() -> None:
    code = _code_metrics()
    assert len(code) >= 30, code   # sanity: the scanner sees the definitions
    missing = sorted(_registry_families() - set(code))
    assert not missing, f"metrics registered but not found by the source scan: {missing}"


def test_every_metric_in_the_code_is_documented() -> None:
    doc = _read("metrics.md")
    missing = []
    for base, kind in sorted(_code_metrics().items()):
        primary, _ = _exposed(base, kind)
        if f"`{primary}`" not in doc:
            missing.append(primary)
    assert not missing, f"docs/metrics.md does not document: {missing}"


def test_every_metric_named_in_the_docs_exists() -> None:
    samples: set[str] = set()
    for base, kind in _code_metrics().items():
        samples |= _exposed(base, kind)[1]
    unknown = []
    for md in sorted(DOCS.glob("*.md")):
        for token in re.findall(r"\bsecmesh_[a-z0-9_]+\*?", md.read_text()):
            if token.endswith("*"):      # a family prefix such as secmesh_sidecar_http_*
                if not any(s.startswith(token[:-1]) for s in samples):
                    unknown.append(f"{md.name}: {token}")
            elif token not in samples:
                unknown.append(f"{md.name}: {token}")
    assert not unknown, f"metric names in docs that the code does not define: {sorted(set(unknown))}"


def _metric_row(doc: str, name: str) -> str:
    for line in doc.splitlines():
        if line.startswith(f"| `{name}` "):
            return line
    raise AssertionError(f"no table row for {name} in docs/metrics.md")


def test_closed_label_sets_are_listed_with_their_metric() -> None:
    from secmesh.agent import sds_state
    from secmesh.agent.ca_client import CA_REASONS
    from secmesh.ca.metrics import REJECTION_REASONS
    from secmesh.identity.tokens import TOKEN_REASONS

    doc = _read("metrics.md")
    sets = {
        "secmesh_ca_requests_rejected_total": REJECTION_REASONS,
        "secmesh_agent_tokens_rejected_total": TOKEN_REASONS,
        "secmesh_agent_ca_errors_total": CA_REASONS,
        "secmesh_agent_sds_requests_total": (sds_state.INITIAL, sds_state.ACK, sds_state.NACK, sds_state.STALE,
                                             sds_state.UNSUBSCRIBE, sds_state.MORE),
    }
    for metric, values in sets.items():
        row = _metric_row(doc, metric)
        missing = [v for v in values if f"`{v}`" not in row]
        assert not missing, f"{metric}: label values missing from its row: {missing}"


# ============================================================================ reasons (from the code)

def _tree(rel: str) -> ast.Module:
    return ast.parse((SRC / rel).read_text())


def _consts(node: ast.AST | None) -> set[str]:
    """String constants a value expression can evaluate to (constants, both arms of `if`/`or`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _consts(node.body) | _consts(node.orelse)
    if isinstance(node, ast.BoolOp):
        out: set[str] = set()
        for v in node.values:
            out |= _consts(v)
        return out
    return set()


def _within(tree: ast.Module, funcs: Iterable[str] | None) -> list[ast.AST]:
    if funcs is None:
        return [tree]
    wanted = set(funcs)
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in wanted]


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def kwarg_strings(rel: str, kw: str = "reason", funcs: Iterable[str] | None = None) -> set[str]:
    """Constants passed as `kw=` to any call (e.g. `raise TokenError(..., reason="expired")`)."""
    out: set[str] = set()
    for scope in _within(_tree(rel), funcs):
        for node in ast.walk(scope):
            if isinstance(node, ast.Call):
                for k in node.keywords:
                    if k.arg == kw:
                        out |= _consts(k.value)
    return out


def arg_strings(rel: str, callee: str, index: int) -> set[str]:
    """Constants passed as positional argument `index` to calls of `callee`: a name or attribute
    (`fail`), or `OBJ.attr` to require the receiver's name (`SDS_ERRORS.labels`)."""
    obj, _, name = callee.rpartition(".")
    out: set[str] = set()
    for node in ast.walk(_tree(rel)):
        if isinstance(node, ast.Call) and _callee(node) == name and len(node.args) > index:
            f = node.func
            if obj and not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == obj):
                continue
            out |= _consts(node.args[index])
    return out


def assigned_strings(rel: str, attr: str) -> set[str]:
    """Constants assigned to `<x>.attr` or to a plain name `attr` (tuple assignments included)."""
    out: set[str] = set()
    for node in ast.walk(_tree(rel)):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            else:
                pairs = [(target, node.value)]
            for t, v in pairs:
                if (isinstance(t, ast.Attribute) and t.attr == attr) or (isinstance(t, ast.Name) and t.id == attr):
                    out |= _consts(v)
    return out


def returned_strings(rel: str, func: str) -> set[str]:
    """Constants a function returns directly or through a dict literal it looks up."""
    out: set[str] = set()
    for scope in _within(_tree(rel), [func]):
        for node in ast.walk(scope):
            if isinstance(node, ast.Return) and node.value is not None:
                out |= {c.value for c in ast.walk(node.value)    # incl. `table.get(key, "default")`
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)}
            elif isinstance(node, ast.Dict):
                for v in node.values:
                    out |= _consts(v)
    return out


def _connection_results() -> set[str]:
    out: set[str] = set()
    for rel in ("sidecar/connection.py", "sidecar/listener.py", "sidecar/l7_conn.py"):
        out |= arg_strings(rel, "connections", 1) | arg_strings(rel, "fail", 0) | assigned_strings(rel, "result")
    out.add("refused_plaintext")   # "refused_" + the sniffed wire kind (only plaintext can be refused)
    return out - {"forwarded"}     # counted as `closed`


def _handshake_reasons() -> set[str]:
    out = returned_strings("sidecar/tls.py", "classify_handshake_error")
    out |= kwarg_strings("sidecar/tls.py", funcs=["peer_spiffe_id", "check_resumed_peer"])
    for rel in ("sidecar/connection.py", "sidecar/listener.py"):
        out |= arg_strings(rel, "handshake_failures", 1)
    return out


def _policy_reasons() -> set[str]:
    from secmesh.policy.decision import Reason

    return {r.value for r in Reason}


def _l4_reasons() -> set[str]:
    from secmesh.sidecar.authz_policy import NEEDS_REQUEST_NO_L7

    return (_policy_reasons() | kwarg_strings("sidecar/authz_l4.py", "code")
            | arg_strings("sidecar/authz_policy.py", "L4Decision", 4) | {NEEDS_REQUEST_NO_L7})


def _l7_reasons() -> set[str]:
    from secmesh.sidecar.authz_l7 import Verdict

    default = {f.default for f in dataclasses.fields(Verdict) if f.name == "code"}
    return _policy_reasons() | arg_strings("sidecar/authz_l7.py", "Verdict", 2) | default


def _codec_reasons() -> set[str]:
    from secmesh.sidecar.codec.stream import Reason

    declared = {v for k, v in vars(Reason).items() if k.isupper() and isinstance(v, str)}
    return declared | arg_strings("sidecar/http_proxy.py", "codec_errors", 1)


def _upstream_events() -> set[str]:
    out = arg_strings("sidecar/pool.py", "UpstreamFailure", 0)
    for rel in ("sidecar/pool.py", "sidecar/http_exchange.py"):
        out |= arg_strings(rel, "upstream", 1)
    return out


def _request_outcomes() -> set[str]:
    return (assigned_strings("sidecar/http_exchange.py", "reason")
            | assigned_strings("sidecar/http_proxy.py", "reason")) - {""}


def _cert_refusals() -> set[str]:
    return (kwarg_strings("sidecar/tls.py", funcs=["check_leaf_key", "validate_material"])
            | kwarg_strings("sidecar/certinfo.py", funcs=["certificates", "check_key_matches"])
            | kwarg_strings("sidecar/sds_client.py") | kwarg_strings("sidecar/certstore.py")
            | kwarg_strings("identity/bundle.py", funcs=["load_pem_certificates"])
            | kwarg_strings("identity/keys.py", funcs=["load_private_key_pem"]))


def _token_reasons() -> set[str]:
    from secmesh.identity.tokens import TOKEN_REASONS

    return set(TOKEN_REASONS)


def _ca_call_reasons() -> set[str]:
    from secmesh.agent.ca_client import CA_REASONS

    return set(CA_REASONS)


def _sds_reasons() -> set[str]:
    out = kwarg_strings("agent/secrets.py") | kwarg_strings("agent/sds_state.py") | kwarg_strings("agent/sds.py")
    return out | arg_strings("agent/sds.py", "SDS_ERRORS.labels", 0)


def _agent_startup() -> set[str]:
    return kwarg_strings("agent/server.py")


def _ca_rejections() -> set[str]:
    from secmesh.ca.metrics import REJECTION_REASONS

    return set(REJECTION_REASONS)


def _ca_errors() -> set[str]:
    out: set[str] = set()
    for path in sorted((SRC / "ca").glob("*.py")):
        out |= kwarg_strings(str(path.relative_to(SRC)))
    return out


def _svid_reasons() -> set[str]:
    from secmesh.identity.x509svid import REASONS

    return set(REASONS)


def _jwt_svid_reasons() -> set[str]:
    from secmesh.agent.jwt_authority import JwtSvidError

    return kwarg_strings("agent/jwt_authority.py") | {JwtSvidError.reason}


SECTIONS = {
    "Connection results": _connection_results,
    "Handshake failures": _handshake_reasons,
    "Connection-time authorization (L4)": _l4_reasons,
    "Per-request authorization (L7)": _l7_reasons,
    "HTTP protocol errors": _codec_reasons,
    "Upstream events (L7 pools)": _upstream_events,
    "HTTP request outcomes in the access log": _request_outcomes,
    "Certificate refusals and SDS NACKs": _cert_refusals,
    "Workload token rejections": _token_reasons,
    "CA call failures (agent)": _ca_call_reasons,
    "SDS and Workload API errors (agent)": _sds_reasons,
    "Agent start-up errors": _agent_startup,
    "CreateCertificate rejections (CA)": _ca_rejections,
    "CA directory and start-up errors": _ca_errors,
    "X.509-SVID verification": _svid_reasons,
    "JWT-SVID validation": _jwt_svid_reasons,
}

def _section(doc: str, title: str) -> str:
    lines = doc.splitlines()
    try:
        start = lines.index(f"## {title}")
    except ValueError:
        raise AssertionError(f"docs/reasons.md has no section `## {title}`") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start + 1:end])


def _first_column(section: str) -> set[str]:
    out = set()
    for line in section.splitlines():
        m = re.match(r"\| `([^`]+)` \|", line)
        if m and "<" not in m.group(1):
            out.add(m.group(1))
    return out


@pytest.mark.parametrize("title", list(SECTIONS))
def test_every_reason_is_explained_in_its_section(title: str) -> None:
    reasons = SECTIONS[title]()
    assert reasons, f"no reasons found in the code for {title!r}: the extractor is broken"
    section = _section(_read("reasons.md"), title)
    rows = _first_column(section)
    missing = sorted(r for r in reasons if f"`{r}`" not in section)
    assert not missing, f"docs/reasons.md `## {title}` does not explain: {missing}"
    stale = sorted(r for r in rows if r not in reasons)
    assert not stale, f"docs/reasons.md `## {title}` lists reasons the code does not produce: {stale}"


# ============================================================================ configuration

def _config_classes() -> dict[str, tuple[type, str, Any]]:
    from secmesh.agent.config import ENV_PREFIX, AgentConfig
    from secmesh.ca.config import ServeConfig
    from secmesh.cli import agent as agent_cli
    from secmesh.cli import ca as ca_cli
    from secmesh.cli import sidecar as sidecar_cli
    from secmesh.sidecar.config import SidecarConfig

    return {"ca": (ServeConfig, "SECMESH_CA_", ca_cli.serve), "agent": (AgentConfig, ENV_PREFIX, agent_cli.cli),
            "sidecar": (SidecarConfig, "SECMESH_", sidecar_cli.cli)}


def _element(tp: Any) -> Any:
    from secmesh.configfile import _strip_optional

    tp = _strip_optional(tp)
    if typing.get_origin(tp) in (list, tuple):
        return typing.get_args(tp)[0]
    return tp


def _all_fields(cls: type, prefix: str = "", *, sections: bool = True) -> set[str]:
    """Dotted paths of every field (`listeners[].http.routes[].cluster`); `sections=False` leaves out
    the plain sub-sections (`ca`, `certs.sds`), whose fields have rows of their own."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = _element(tp)
        is_list = typing.get_origin(_strip(tp)) in (list, tuple)
        path = prefix + f.name
        if sections or is_list or not dataclasses.is_dataclass(inner):
            out.add(path)
        if dataclasses.is_dataclass(inner):
            out |= _all_fields(inner, path + ("[]." if is_list else "."), sections=sections)
    return out


def _strip(tp: Any) -> Any:
    from secmesh.configfile import _strip_optional

    return _strip_optional(tp)


def _resolve(cls: type, path: str) -> tuple[dataclasses.Field, Any]:
    current: Any = cls
    parts = path.split(".")
    for i, part in enumerate(parts):
        name = part.removesuffix("[]")
        fields = {f.name: f for f in dataclasses.fields(current)}
        f = fields[name]
        hint = typing.get_type_hints(current)[name]
        if i == len(parts) - 1:
            return f, hint
        current = _element(hint)
    raise AssertionError(path)


def _config_rows() -> dict[str, list[list[str]]]:
    """Rows of the tables that follow a `<!-- config-table: COMPONENT -->` marker."""
    rows: dict[str, list[list[str]]] = {}
    comp, seen_table = None, False
    for line in _read("configuration.md").splitlines():
        m = re.match(r"<!-- config-table: (\w+) -->", line)
        if m:
            comp, seen_table = m.group(1), False
        elif comp is not None and line.startswith("|"):
            seen_table = True
            if line.startswith("| `"):
                rows.setdefault(comp, []).append([c.strip() for c in line.strip().strip("|").split("|")])
        elif seen_table:
            comp = None
    return rows


def test_every_config_field_has_a_row() -> None:
    rows = _config_rows()
    for comp, (cls, _, _) in _config_classes().items():
        documented = {r[0].strip("`") for r in rows.get(comp, [])}
        expected = _all_fields(cls, sections=False)
        assert not expected - documented, f"{comp}: fields without a row: {sorted(expected - documented)}"
        unknown = documented - _all_fields(cls)
        assert not unknown, f"{comp}: rows for fields that do not exist: {sorted(unknown)}"


def test_documented_defaults_env_and_flags_match_the_code() -> None:
    from ruamel.yaml import YAML

    from secmesh.configfile import _convert

    yaml = YAML(typ="safe")
    rows = _config_rows()
    problems = []
    for comp, (cls, prefix, command) in _config_classes().items():
        opts = set()
        for p in command.params:
            opts |= set(getattr(p, "opts", ())) | set(getattr(p, "secondary_opts", ()))
        for field_cell, default_cell, env_cell, flag_cell, *_ in rows.get(comp, []):
            path = field_cell.strip("`")
            f, hint = _resolve(cls, path)
            m = re.fullmatch(r"`([^`]*)`", default_cell)
            if m:
                want = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                got = _convert(yaml.load(m.group(1)) if m.group(1) else "", hint, field=path, where="doc", path="doc")
                if got != want:
                    problems.append(f"{comp} {path}: documented default {m.group(1)!r} is {got!r}, code has {want!r}")
            for env in re.findall(r"SECMESH_[A-Z0-9_]+", env_cell):
                expected = prefix + path.replace(".", "_").upper()
                if "[]" in path or env != expected:
                    problems.append(f"{comp} {path}: env {env} should be {expected}")
            for flag in re.findall(r"--[a-z0-9-]+", flag_cell):
                if flag not in opts:
                    problems.append(f"{comp} {path}: no flag {flag} on `{command.name}`")
    assert not problems, "\n".join(problems)


def _examples() -> list[tuple[str, str]]:
    text = _read("configuration.md")
    out = []
    for m in re.finditer(r"<!-- config-example: (\w+) -->\s*```yaml\n(.*?)```", text, re.S):
        out.append((m.group(1), m.group(2)))
    return out


def test_worked_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from secmesh.agent import config as agent_config
    from secmesh.ca.config import load_serve_config
    from secmesh.sidecar import config as sidecar_config

    for key in list(os.environ):
        if key.startswith("SECMESH_"):
            monkeypatch.delenv(key)
    examples = _examples()
    assert {c for c, _ in examples} == {"ca", "agent", "sidecar"}
    for i, (comp, text) in enumerate(examples):
        path = tmp_path / f"{comp}-{i}.yaml"
        path.write_text(text)
        if comp == "ca":
            load_serve_config(path, {})
        elif comp == "agent":
            agent_config.load(path, env={})
        else:
            sidecar_config.load(path, env={})


def test_shipped_configs_load_with_the_documented_defaults() -> None:
    """configs/*.yaml show every default: loading them gives the code's defaults (jwks aside)."""
    from secmesh.agent import config as agent_config
    from secmesh.ca.config import ServeConfig, load_serve_config

    assert load_serve_config(ROOT / "configs/ca.yaml", {"jwks": "x.json"}) == ServeConfig(jwks="x.json")
    assert agent_config.load(ROOT / "configs/agent.yaml", env={}) == agent_config.AgentConfig()


# ============================================================================ links

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces → hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def _markdown_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md: Path) -> None:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / file_part).resolve() if file_part else md
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{md.relative_to(ROOT)}: broken links: {broken}"
