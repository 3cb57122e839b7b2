"""`secmesh inject`'s core: Kubernetes manifests in, the same manifests with the sidecar out.

Pure (no file or network I/O): `inject_stream(text, settings, source=…)` takes a multi-document
YAML stream and returns the new stream plus one `Outcome` per object, like `istioctl kube-inject`.

Why it is shaped this way:
- **The user's file stays theirs.** Each `---` document is parsed with ruamel's round-trip
  loader, so comments, key order, quoting and the document's indentation style survive; one
  that ends up equal to what it was is emitted as its original text, byte for byte (hence a
  second run is a no-op).
- **Idempotent, and upgradeable.** The `sidecar.secmesh.io/status` annotation names what was
  added; a rerun (e.g. a new `--image`) replaces exactly those in place, never a name it did not add.
- **Run-to-completion pods get a native sidecar** (an init container with `restartPolicy:
  Always`, Kubernetes >= 1.29): a plain sidecar container never exits, so a Job would never finish.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from io import StringIO
from typing import Any, Iterator

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from secmesh import __version__
from secmesh.errors import SecmeshError

STATUS_ANNOTATION = "sidecar.secmesh.io/status"
INJECT_ANNOTATION = "sidecar.secmesh.io/inject"          # "false" opts a workload out
CONFIG_MAP_ANNOTATION = "sidecar.secmesh.io/config-map"  # per-workload sidecar config ConfigMap

CONTAINER = "secmesh-sidecar"
SOCKET_VOLUME, TOKEN_VOLUME, CONFIG_VOLUME = "secmesh-socket", "secmesh-token", "secmesh-config"
VOLUMES = (SOCKET_VOLUME, TOKEN_VOLUME, CONFIG_VOLUME)
SOCKET_DIR = "/var/run/secrets/workload-spiffe-uds"   # the agent's socket is SOCKET_DIR/socket
TOKEN_DIR, TOKEN_PATH = "/var/run/secrets/tokens", "istio-token"
CONFIG_DIR = "/etc/secmesh"
TOKEN_AUDIENCE, TOKEN_EXPIRATION = "istio-ca", 43200
INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT = 15006, 15001, 15000
SIDECAR_UID = 1337
DEFAULT_IMAGE = f"secmesh:{__version__}"
DEFAULT_CONFIG_MAP = "secmesh-sidecar"
DEFAULT_SOCKET_HOST_PATH = "/run/secmesh/sockets"

# (API group, kind) → path of the pod template inside the object ("" group = core v1).
_POD_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    **{(g, k): ("spec", "template") for g in ("apps", "extensions")
       for k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")},
    ("", "ReplicationController"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
    ("", "Pod"): (),
}
_RUN_TO_COMPLETION_KINDS = {"Job", "CronJob"}
_DOC_START = re.compile(r"^---(?=[ \t\r]|$)", re.MULTILINE)


class InjectError(SecmeshError):
    """The input cannot be injected; `location` is `file:line:col` when known."""

    reason = "inject"

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location, self.detail = location, message
        super().__init__(f"{location}: {message}" if location else message)


@dataclass(frozen=True)
class InjectSettings:
    image: str = DEFAULT_IMAGE
    config_map: str = DEFAULT_CONFIG_MAP          # unless the pod template names its own
    socket_host_path: str = DEFAULT_SOCKET_HOST_PATH  # the agent DaemonSet's hostPath


@dataclass(frozen=True)
class Outcome:
    """What happened to one object: injected | updated | unchanged | skipped | passthrough."""

    kind: str
    name: str
    action: str
    detail: str = ""


# --- templates ---------------------------------------------------------------------------------

def _rt(value: Any) -> Any:
    """Plain dicts/lists → ruamel's round-trip types, keeping insertion order."""
    if isinstance(value, dict):
        return CommentedMap((k, _rt(v)) for k, v in value.items())
    return CommentedSeq(_rt(v) for v in value) if isinstance(value, list) else value


def _probe() -> dict[str, Any]:
    # The admin server binds loopback only, which the kubelet cannot reach: probe from inside.
    code = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{ADMIN_PORT}/ready', timeout=2)"
    return {"exec": {"command": ["python3", "-c", code]}}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def sidecar_container(settings: InjectSettings, *, native: bool) -> CommentedMap:
    c: dict[str, Any] = {"name": CONTAINER, "image": settings.image, "imagePullPolicy": "IfNotPresent"}
    if native:
        c["restartPolicy"] = "Always"
    c.update({
        "command": ["secmesh"],
        "args": ["sidecar", "--config", f"{CONFIG_DIR}/sidecar.yaml"],
        "ports": [{"name": "secmesh-mtls", "containerPort": INBOUND_PORT, "protocol": "TCP"}],
        "env": [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace"),
                _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"), _field_env("INSTANCE_IP", "status.podIP")],
        "readinessProbe": {**_probe(), "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
    })
    if native:  # the app containers start only once the sidecar has its certificate
        c["startupProbe"] = {**_probe(), "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 120}
    c.update({
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {"runAsUser": SIDECAR_UID, "runAsGroup": SIDECAR_UID, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR, "readOnly": True},
                         {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}],
    })
    return _rt(c)


def sidecar_volumes(settings: InjectSettings, config_map: str) -> list[CommentedMap]:
    return [_rt(v) for v in (
        {"name": SOCKET_VOLUME, "hostPath": {"path": settings.socket_host_path, "type": "DirectoryOrCreate"}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "path": TOKEN_PATH, "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_EXPIRATION}}]}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
    )]


def status_value(settings: InjectSettings, config_map: str, *, native: bool) -> str:
    """Compact JSON, key order fixed, so that equal settings give a byte-equal annotation."""
    return json.dumps({
        "image": settings.image, "configMap": config_map,
        "containers": [] if native else [CONTAINER], "initContainers": [CONTAINER] if native else [],
        "volumes": list(VOLUMES),
    }, separators=(",", ":"))


# --- one object --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Where:
    """Turns a ruamel node (+ key) into `file:line:col`; `line_offset` = the document's first line."""

    source: str
    line_offset: int

    def __call__(self, node: Any, key: Any = None) -> str:
        try:
            line, col = node.lc.key(key) if key is not None else (node.lc.line, node.lc.col)
        except (AttributeError, KeyError, TypeError):
            return self.source
        return f"{self.source}:{self.line_offset + line + 1}:{col + 1}"


def _is_false(value: Any) -> bool:  # the annotation should be the string "false"; be lenient
    return value is False or str(value).strip().lower() in ("false", "no", "off", "0")


def _mapping(parent: CommentedMap, key: str, where: _Where, what: str, *, create: bool = True) -> CommentedMap:
    value = parent.get(key)
    if value is None and create:
        parent[key] = value = CommentedMap()
    if value is None:
        raise InjectError(f"`{what}` is missing", location=where(parent))
    if not isinstance(value, CommentedMap):
        raise InjectError(f"`{what}` must be a mapping", location=where(parent, key if key in parent else None))
    return value


def _sequence(parent: CommentedMap, key: str, where: _Where, what: str) -> CommentedSeq:
    if parent.get(key) is None:  # absent, or `key:` with no value
        parent[key] = CommentedSeq()
    value = parent[key]
    if not isinstance(value, CommentedSeq):
        raise InjectError(f"`{what}` must be a list", location=where(parent, key))
    return value


def _place(items: CommentedSeq, name: str, new: CommentedMap, owned: set[str], where: _Where, what: str) -> None:
    """Replace our entry `name` in place (keeps a rerun's output stable), or append it."""
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == name:
            if name not in owned:
                raise InjectError(f"{what} `{name}` already exists and was not added by secmesh inject",
                                  location=where(item))
            items[i] = new
            return
    items.append(new)


def _previous_status(annotations: Any) -> dict[str, set[str]]:
    """Names a previous injection recorded; a damaged annotation owns nothing (so nothing is overwritten)."""
    try:
        status = json.loads(annotations.get(STATUS_ANNOTATION) or "{}")
    except (TypeError, ValueError):
        return {}
    if not isinstance(status, dict):
        return {}
    return {k: {n for n in v if isinstance(n, str)} for k, v in status.items() if isinstance(v, list)}


def _check_ports(containers: list, where: _Where) -> None:
    for c in containers:
        if not isinstance(c, dict) or c.get("name") == CONTAINER:
            continue
        for p in c.get("ports") or ():
            if isinstance(p, dict) and p.get("containerPort") in (INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT):
                raise InjectError(f"container `{c.get('name')}` uses port {p['containerPort']}, which the sidecar "
                                  f"needs ({ADMIN_PORT} admin, {OUTBOUND_PORT} outbound, {INBOUND_PORT} inbound)",
                                  location=where(p))


def inject_pod_template(template: CommentedMap, settings: InjectSettings, where: _Where, *,
                        kind: str, obj_meta: CommentedMap, at: str = "") -> tuple[str, str]:
    """Add the sidecar to one pod template (a Pod, or a workload's template at path `at`), in place."""
    meta = template.get("metadata")
    if meta is None:
        meta = CommentedMap()
    elif not isinstance(meta, CommentedMap):
        raise InjectError(f"`{at}metadata` must be a mapping", location=where(template, "metadata"))
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    top_annotations = obj_meta.get("annotations") if isinstance(obj_meta.get("annotations"), dict) else {}
    for source in (annotations, labels, top_annotations):
        if INJECT_ANNOTATION in source and _is_false(source[INJECT_ANNOTATION]):
            return "skipped", f"{INJECT_ANNOTATION}: \"false\""
    spec = _mapping(template, "spec", where, f"{at}spec", create=False)
    if spec.get("hostNetwork") is True:
        return "skipped", "hostNetwork pods share the node's ports"
    containers = _sequence(spec, "containers", where, f"{at}spec.containers")
    if not containers:
        raise InjectError("the pod has no containers", location=where(spec, "containers"))
    _check_ports(containers, where)
    native = kind in _RUN_TO_COMPLETION_KINDS or spec.get("restartPolicy") in ("Never", "OnFailure")
    config_map = str(annotations.get(CONFIG_MAP_ANNOTATION) or settings.config_map)
    previous, had_status = _previous_status(annotations), STATUS_ANNOTATION in annotations
    before = _plain(template)
    owned = previous.get("containers", set()) | previous.get("initContainers", set())
    owned_volumes = previous.get("volumes", set())
    target, other = ("initContainers", "containers") if native else ("containers", "initContainers")
    if CONTAINER in owned and isinstance(spec.get(other), list):  # moved lists (restartPolicy changed)
        spec[other][:] = [c for c in spec[other] if not (isinstance(c, dict) and c.get("name") == CONTAINER)]
    _place(_sequence(spec, target, where, f"{at}spec.{target}"), CONTAINER, sidecar_container(settings, native=native),
           owned, where, "container")
    volumes = _sequence(spec, "volumes", where, f"{at}spec.volumes")
    for volume in sidecar_volumes(settings, config_map):
        _place(volumes, volume["name"], volume, owned_volumes, where, "volume")
    if "metadata" not in template:
        template.insert(0, "metadata", meta)  # where a reader looks for it: before `spec`
    _mapping(meta, "annotations", where, f"{at}metadata.annotations")[STATUS_ANNOTATION] = \
        status_value(settings, config_map, native=native)
    action = "unchanged" if _plain(template) == before else "updated" if had_status else "injected"
    return action, ("native sidecar" if native else "")


def inject_object(obj: Any, settings: InjectSettings, where: _Where, *, index: int) -> list[Outcome]:
    """Inject into one parsed document (mutated in place); `index` counts documents from 1."""
    if not isinstance(obj, CommentedMap):
        what = "a list" if isinstance(obj, list) else "a string" if isinstance(obj, str) else f"the value {obj!r}"
        raise InjectError(f"document {index} is {what}, not a Kubernetes object",
                          location=where(obj) if isinstance(obj, CommentedSeq) else where.source)
    kind, api = obj.get("kind"), obj.get("apiVersion")
    for field, value in (("apiVersion", api), ("kind", kind)):
        if not isinstance(value, str) or not value:
            raise InjectError(f"document {index} is not a Kubernetes object (no `{field}`)", location=where(obj))
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), CommentedMap) else CommentedMap()
    name = str(meta.get("name") or "")
    group = api.split("/")[0] if "/" in api else ""
    if kind == "List" and group == "":
        items = obj.get("items")
        if not isinstance(items, CommentedSeq):
            raise InjectError("a List needs `items`", location=where(obj, "items" if "items" in obj else None))
        outcomes: list[Outcome] = []
        for item in items:
            outcomes += inject_object(item, settings, where, index=index)
        return outcomes
    path = _POD_TEMPLATES.get((group, kind))
    if path is None:
        return [Outcome(kind, name, "passthrough")]
    try:
        node = obj
        for i, key in enumerate(path):
            node = _mapping(node, key, where, ".".join(path[:i + 1]), create=False)
        at = "".join(f"{k}." for k in path)
        action, detail = inject_pod_template(node, settings, where, kind=kind, obj_meta=meta, at=at)
    except InjectError as exc:  # say which object: a stream may hold dozens
        raise InjectError(f"{kind} {name or '<unnamed>'}: {exc.detail}", location=exc.location) from None
    return [Outcome(kind, name, action, detail)]


# --- the stream --------------------------------------------------------------------------------

def _chunks(text: str) -> Iterator[tuple[int, str]]:
    """(first line index, text) per `---`-separated chunk; a `---` line always starts a document."""
    starts = [0] + [m.start() for m in _DOC_START.finditer(text) if m.start() > 0]
    for a, b in zip(starts, starts[1:] + [len(text)]):
        yield text.count("\n", 0, a), text[a:b]


def _guess_indent(doc: Any) -> tuple[int, int, int]:
    """(mapping, sequence, offset) as this document writes them; kubectl's style when it cannot tell."""
    mapping = seq = offset = None
    todo = [doc]
    while todo and (mapping is None or seq is None):
        node = todo.pop(0)  # breadth-first: the outermost nesting is the most telling
        if isinstance(node, CommentedSeq):
            todo.extend(node)
        if not isinstance(node, CommentedMap) or node.fa.flow_style():
            continue
        for value in node.values():
            todo.append(value)
            if not isinstance(value, (CommentedMap, CommentedSeq)) or not value or value.fa.flow_style() \
                    or value.lc.line is None or node.lc.line is None or value.lc.line <= node.lc.line:
                continue
            if isinstance(value, CommentedMap) and mapping is None:
                mapping = value.lc.col - node.lc.col
            elif isinstance(value, CommentedSeq) and seq is None and isinstance(value[0], CommentedMap):
                offset, seq = value.lc.col - node.lc.col, value.lc.item(0)[1] - node.lc.col
    mapping = mapping if mapping and mapping > 0 else 2
    if seq is None or offset is None or offset < 0:
        seq, offset = mapping, 0
    return mapping, max(seq, offset + 2), offset


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user wrote on one line
    return yaml


def _plain(node: Any) -> Any:
    """Data only (no comments, no positions): what "did this document change?" compares."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    return [_plain(v) for v in node] if isinstance(node, list) else node


def _load(chunk: str, where: _Where) -> list[Any]:
    try:
        return [d for d in _yaml().load_all(chunk) if d is not None]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = f"{where.source}:{where.line_offset + mark.line + 1}:{mark.column + 1}" if mark else where.source
        raise InjectError(f"not valid YAML: {exc.problem or exc.context}", location=loc) from None
    except YAMLError as exc:
        raise InjectError(f"not valid YAML: {exc}", location=where.source) from None


def _dump(docs: list[Any], indents: list[tuple[int, int, int]], marker: str) -> str:
    yaml = _yaml()
    parts = []
    for doc, (m, s, o) in zip(docs, indents):
        yaml.indent(mapping=m, sequence=s, offset=o)
        out = StringIO()
        yaml.dump(doc, out)
        parts.append(out.getvalue())
    return marker + "---\n".join(parts)


def inject_stream(text: str, settings: InjectSettings, *, source: str = "<stdin>") -> tuple[str, list[Outcome]]:
    """The injected stream and what happened to each object; InjectError names `source:line:col`."""
    out: list[str] = []
    outcomes: list[Outcome] = []
    index = 0
    for first_line, chunk in _chunks(text):
        where = _Where(source, first_line)
        head, _, rest = chunk.partition("\n")
        # a comment on the `---` line is kept by echoing the line; ruamel would move it
        marker = head + "\n" if _DOC_START.match(head) and head[3:].lstrip()[:1] in ("", "#") else ""
        docs = _load("---\n" + rest if marker else chunk, where)
        indents = [_guess_indent(doc) for doc in docs]  # before injecting: only the user's nodes count
        changed = False
        for doc in docs:
            index += 1
            before = _plain(doc)
            outcomes += inject_object(doc, settings, where, index=index)
            changed = changed or _plain(doc) != before
        if not changed:
            out.append(chunk)
            continue
        body = _dump(docs, indents, marker or ("---\n" if _DOC_START.match(head) else ""))
        trailing = chunk[len(chunk.rstrip()):]
        out.append(body.rstrip() + (trailing if "\n" in trailing else "\n"))
    return "".join(out), outcomes
