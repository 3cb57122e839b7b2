"""Offline checks of Kubernetes manifests: what the API server (or a first `kubectl apply`) would
reject, and the cross-references that fail only at run time (a volumeMount naming no volume, a
Service selecting no pod, an env var from a ConfigMap key that does not exist).

`check(objects)` returns a list of human-readable problems; tests assert it is empty, and feed it
broken manifests to prove each check can fail. `kustomize_sources(dir)` resolves a kustomization
the way `kubectl kustomize` does for these checks (resources recursively; generators become
stub objects), so everything runs without kubectl too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ruamel.yaml import YAML

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration"}
TEMPLATE_PATHS = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
                  "DaemonSet": ("spec", "template"), "ReplicaSet": ("spec", "template"),
                  "Job": ("spec", "template"), "CronJob": ("spec", "jobTemplate", "spec", "template"),
                  "Pod": ()}
SELECTOR_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
RBAC_NAME = re.compile(r"[A-Za-z0-9:._-]+")

INJECTED_CONTAINER = "secmesh-sidecar"
INJECTED_VOLUMES = {"secmesh-socket", "secmesh-token", "secmesh-config"}
STATUS_ANNOTATION = "sidecar.secmesh.io/status"


@dataclass(frozen=True)
class Obj:
    where: str   # file (and document number) the object came from
    doc: dict

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.doc.get("metadata") or {}).get("namespace", ""))

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}/{self.name}"


def load_objects(path: Path, label: str | None = None) -> list[Obj]:
    yaml = YAML(typ="safe")
    docs = [d for d in yaml.load_all(path.read_text()) if d is not None]
    return [Obj(f"{label or path}#{i + 1}", d) for i, d in enumerate(docs)]


def pod_template(doc: dict) -> dict | None:
    path = TEMPLATE_PATHS.get(str(doc.get("kind")))
    if path is None:
        return None
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _containers(spec: dict) -> list[dict]:
    return [c for key in ("initContainers", "containers") for c in (spec.get(key) or []) if isinstance(c, dict)]


def _check_identity(o: Obj, problems: list[str]) -> None:
    d = o.doc
    for field in ("apiVersion", "kind"):
        if not isinstance(d.get(field), str) or not d.get(field):
            problems.append(f"{o}: missing `{field}`")
    meta = d.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta.get("name"):
        problems.append(f"{o}: missing `metadata.name`")
        return
    pattern = RBAC_NAME if o.kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding") else (
        DNS1123_LABEL if o.kind in ("Namespace", "Service") else DNS1123_SUBDOMAIN)
    if not pattern.fullmatch(meta["name"]) or len(meta["name"]) > 253:
        problems.append(f"{o}: `metadata.name` {meta['name']!r} is not a valid name")
    if o.kind not in CLUSTER_SCOPED and not meta.get("namespace"):
        problems.append(f"{o}: namespaced kind without `metadata.namespace` (it would land in the default namespace)")


def _check_pod(o: Obj, template: dict, index: "_Index", problems: list[str]) -> None:
    spec = template.get("spec")
    if not isinstance(spec, dict) or not spec.get("containers"):
        problems.append(f"{o}: the pod template has no containers")
        return
    volumes = [v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)]
    if len(set(volumes)) != len(volumes):
        problems.append(f"{o}: duplicate volume names {volumes}")
    names = [c.get("name") for c in _containers(spec)]
    if len(set(names)) != len(names):
        problems.append(f"{o}: duplicate container names {names}")
    for c in _containers(spec):
        cname = c.get("name") or "<unnamed>"
        if not c.get("name"):
            problems.append(f"{o}: a container has no name")
        if not isinstance(c.get("image"), str) or not c.get("image"):
            problems.append(f"{o}: container {cname} has no image")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                problems.append(f"{o}: container {cname} mounts undefined volume {m.get('name')!r}")
            if not str(m.get("mountPath", "")).startswith("/"):
                problems.append(f"{o}: container {cname} mountPath {m.get('mountPath')!r} is not absolute")
        for p in c.get("ports") or []:
            if "name" in p and (len(str(p["name"])) > 15 or not DNS1123_LABEL.fullmatch(str(p["name"]))):
                problems.append(f"{o}: container {cname} port name {p['name']!r} is not a valid IANA_SVC_NAME")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref and not ref.get("optional") and ref.get("key") not in index.config_keys(o.namespace, ref.get("name")):
                problems.append(f"{o}: container {cname} env {e.get('name')} needs key {ref.get('key')!r} "
                                f"of ConfigMap {ref.get('name')!r}, which does not exist")
    for v in spec.get("volumes") or []:
        cm, secret = (v.get("configMap") or {}).get("name"), (v.get("secret") or {}).get("secretName")
        if cm and not (v.get("configMap") or {}).get("optional") and not index.has("ConfigMap", o.namespace, cm):
            problems.append(f"{o}: volume {v.get('name')} uses ConfigMap {cm!r}, which does not exist")
        if secret and not index.has("Secret", o.namespace, secret):
            problems.append(f"{o}: volume {v.get('name')} uses Secret {secret!r}, which does not exist")
    sa = spec.get("serviceAccountName")
    if sa and sa != "default" and not index.has("ServiceAccount", o.namespace, sa):
        problems.append(f"{o}: serviceAccountName {sa!r} does not exist in namespace {o.namespace!r}")


@dataclass
class _Index:
    objects: list[Obj]

    def has(self, kind: str, namespace: str, name: str) -> bool:
        return any(o.kind == kind and o.name == name and o.namespace in (namespace, "") for o in self.objects)

    def config_keys(self, namespace: str, name: str) -> set[str]:
        return {k for o in self.objects if o.kind == "ConfigMap" and o.name == name and o.namespace == namespace
                for k in (o.doc.get("data") or {})}


def check(objects: Iterable[Obj]) -> list[str]:
    """Every problem found in a set of objects meant to be applied together."""
    objects = list(objects)
    index = _Index(objects)
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for o in objects:
        _check_identity(o, problems)
        key = (o.kind, o.namespace, o.name)
        if key in seen:
            problems.append(f"{o}: defined twice")
        seen.add(key)
        template = pod_template(o.doc)
        if template is None and o.kind in TEMPLATE_PATHS and o.kind != "Pod":
            problems.append(f"{o}: no pod template")
        if template is not None:
            _check_pod(o, template, index, problems)
        if o.kind in SELECTOR_KINDS and template is not None:
            match = ((o.doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not match:
                problems.append(f"{o}: no spec.selector.matchLabels")
            elif any(labels.get(k) != v for k, v in match.items()):
                problems.append(f"{o}: selector {match} does not match the pod template's labels {labels}")
        if o.kind == "Service":
            _check_service(o, objects, problems)
        if o.kind in ("ClusterRoleBinding", "RoleBinding"):
            ref = o.doc.get("roleRef") or {}
            if not index.has(ref.get("kind", ""), "" if ref.get("kind") == "ClusterRole" else o.namespace,
                             ref.get("name", "")):
                problems.append(f"{o}: roleRef {ref.get('kind')}/{ref.get('name')} does not exist")
            for s in o.doc.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and not index.has("ServiceAccount", s.get("namespace", ""),
                                                                      s.get("name", "")):
                    problems.append(f"{o}: subject ServiceAccount {s.get('namespace')}/{s.get('name')} does not exist")
    return problems


def _check_service(o: Obj, objects: list[Obj], problems: list[str]) -> None:
    selector = (o.doc.get("spec") or {}).get("selector") or {}
    if not selector:
        return  # a Service without selector (endpoints managed elsewhere) is legitimate
    pods = []
    for w in objects:
        t = pod_template(w.doc)
        labels = ((t or {}).get("metadata") or {}).get("labels") or {}
        if t is not None and w.namespace == o.namespace and all(labels.get(k) == v for k, v in selector.items()):
            pods.append(t)
    if not pods:
        problems.append(f"{o}: selector {selector} matches no workload in namespace {o.namespace!r}")
        return
    port_names = {p.get("name") for t in pods for c in _containers(t.get("spec") or {}) for p in c.get("ports") or []}
    for p in (o.doc.get("spec") or {}).get("ports") or []:
        target = p.get("targetPort")
        if isinstance(target, str) and target not in port_names:
            problems.append(f"{o}: targetPort {target!r} is not a named port of the selected pods")


# --- kustomize, offline ------------------------------------------------------------------------

def load_kustomization(directory: Path) -> dict:
    return YAML(typ="safe").load((directory / "kustomization.yaml").read_text()) or {}


def kustomization_files(directory: Path) -> list[tuple[str, Path]]:
    """(what, path) for every file or directory the kustomization names."""
    k = load_kustomization(directory)
    named: list[tuple[str, Path]] = [("resources", directory / r) for r in k.get("resources") or []]
    named += [("patches", directory / p["path"]) for p in k.get("patches") or [] if "path" in p]
    for gen in ("configMapGenerator", "secretGenerator"):
        for g in k.get(gen) or []:
            named += [(gen, directory / f.split("=", 1)[-1]) for f in g.get("files") or []]
    return named


def kustomize_sources(directory: Path) -> list[Obj]:
    """The objects a kustomization yields, before patches/transformers; generators → stubs (no data)."""
    k = load_kustomization(directory)
    objects: list[Obj] = []
    for r in k.get("resources") or []:
        path = directory / r
        objects += kustomize_sources(path) if path.is_dir() else load_objects(path, str(path))
    for gen, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for g in k.get(gen) or []:
            keys = {f.split("=", 1)[0] if "=" in f else Path(f).name: "" for f in g.get("files") or []}
            for literal in g.get("literals") or []:
                key, _, value = literal.partition("=")
                keys[key] = value
            doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"], "namespace": g.get("namespace", "")},
                   "data": keys}
            objects.append(Obj(f"{directory}/kustomization.yaml:{gen}", doc))
    return objects


# --- inject fixtures -----------------------------------------------------------------------------

def strip_injection(node: Any, *, only_empty: bool = False) -> Any:
    """Plain data minus what `secmesh inject` adds, with empty maps/lists pruned on both sides."""
    if isinstance(node, list):
        return [strip_injection(v, only_empty=only_empty) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if not only_empty and isinstance(v, list) and k in ("containers", "initContainers"):
            v = [c for c in v if not (isinstance(c, dict) and c.get("name") == INJECTED_CONTAINER)]
        elif not only_empty and isinstance(v, list) and k == "volumes":
            v = [x for x in v if not (isinstance(x, dict) and x.get("name") in INJECTED_VOLUMES)]
        elif not only_empty and isinstance(v, dict) and k == "annotations":
            v = {a: b for a, b in v.items() if a != STATUS_ANNOTATION}
        v = strip_injection(v, only_empty=only_empty)
        if v != {} and v != []:
            out[k] = v
    return out


def comment_lines(text: str) -> list[str]:
    """Every comment in `text` (full-line and trailing), stripped, for "did it survive?" checks."""
    found = []
    for line in text.splitlines():
        m = re.search(r"(?:^|\s)(#.*)$", line)
        if m:
            found.append(m.group(1).strip())
    return found
