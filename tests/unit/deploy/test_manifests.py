"""deploy/k8s: every manifest is well-formed, the pieces agree with each other and with the code.

Three layers: each file on its own (parses; apiVersion, kind, metadata.name), each kustomization
resolved offline (cross-references: selectors, volumes, ConfigMaps, service accounts, RBAC), and
the real `kubectl kustomize` output of the example overlay built with real CA material from
`secmesh ca init` (skipped where kubectl is absent). Then the contracts between the parts: the
agent and sidecar configs load with the components' own loaders, every `secmesh …` command line
is accepted by the real CLI, and the paths, ports and audience that `secmesh inject` writes are
the ones the agent DaemonSet and CA serve.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest
from ruamel.yaml import YAML

from secmesh import inject
from tests.support.proc import REPO_ROOT, run_cli
from tests.unit.deploy.k8s import (Obj, check, kustomization_files, kustomize_sources, load_kustomization, load_objects,
                                   pod_template)

K8S = REPO_ROOT / "deploy" / "k8s"
BASE, EXAMPLE, OVERLAY = K8S / "base", K8S / "example", K8S / "overlays" / "example"
YAML_FILES = sorted(p for p in K8S.rglob("*.yaml"))
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
CA_MATERIAL = OVERLAY / "ca-material"
NOT_IN_ANY_KUSTOMIZATION = {EXAMPLE / "workloads.yaml"}  # the input of `secmesh inject`, kept for users


def _objects(directory: Path) -> list[Obj]:
    return kustomize_sources(directory)


def _find(objects: list[Obj], kind: str, name: str) -> dict:
    (found,) = [o.doc for o in objects if o.kind == kind and o.name == name]
    return found


def _configmap_yaml(objects: list[Obj], name: str, key: str) -> str:
    return _find(objects, "ConfigMap", name)["data"][key]


def _containers(doc: dict) -> list[dict]:
    spec = (pod_template(doc) or {}).get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


# --- files ---------------------------------------------------------------------------------------

def test_the_tree_is_there() -> None:
    assert {BASE, EXAMPLE, OVERLAY} <= set(KUSTOMIZATIONS)
    assert len(YAML_FILES) >= 12


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_parses_and_names_itself(path: Path) -> None:
    objects = load_objects(path)
    assert objects, f"{path} holds no document"
    if path.name == "kustomization.yaml":
        (k,) = objects
        assert k.doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k.doc["kind"] == "Kustomization"
        return
    for o in objects:
        assert isinstance(o.doc.get("apiVersion"), str) and o.doc["apiVersion"], f"{o}: no apiVersion"
        assert isinstance(o.doc.get("kind"), str) and o.doc["kind"], f"{o}: no kind"
        assert isinstance(o.doc.get("metadata", {}).get("name"), str) and o.name, f"{o}: no metadata.name"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomizations_name_only_files_that_exist(directory: Path) -> None:
    for what, path in kustomization_files(directory):
        if what in ("configMapGenerator", "secretGenerator") and path.parent == CA_MATERIAL:
            continue  # made by `secmesh ca init` on the operator's machine: see the next test
        assert path.exists(), f"{directory}/kustomization.yaml {what}: {path} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{path} is a directory without kustomization.yaml"


def test_ca_material_generators_use_exactly_what_ca_init_writes(tmp_path: Path) -> None:
    """The overlay's Secret lists the files `secmesh ca init` really creates; the keys stay out of git."""
    result = run_cli("ca", "init", "--trust-domain", "cluster.local", "--dir", str(tmp_path / "ca"))
    assert result.returncode == 0, result.stderr
    made = {p.name for p in (tmp_path / "ca").iterdir()} | {"bundle.pem"}
    named = {p.name for what, p in kustomization_files(OVERLAY) if p.parent == CA_MATERIAL}
    assert named == made
    assert (CA_MATERIAL / ".gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]


def test_no_orphan_manifests() -> None:
    named = {p.resolve() for d in KUSTOMIZATIONS for _, p in kustomization_files(d) if p.suffix == ".yaml"}
    orphans = [p for p in YAML_FILES if p.name != "kustomization.yaml" and p.resolve() not in named
               and p not in NOT_IN_ANY_KUSTOMIZATION]
    assert orphans == []


# --- cross-references, offline -------------------------------------------------------------------

def test_the_example_overlay_is_consistent() -> None:
    assert check(_objects(OVERLAY)) == []


def test_the_base_needs_exactly_the_two_per_cluster_objects() -> None:
    """Without an overlay, only the CA material Secret and the root-cert ConfigMap are missing."""
    problems = check(_objects(BASE))
    assert len(problems) == 2, problems
    assert "Secret 'secmesh-ca-material', which does not exist" in problems[0] + problems[1]
    assert "ConfigMap 'secmesh-ca-root-cert', which does not exist" in problems[0] + problems[1]


def _broken(mutate: str) -> list[str]:
    objects = _objects(OVERLAY)
    orders = _find(objects, "Deployment", "orders")
    service = _find(objects, "Service", "orders")
    ds = _find(objects, "DaemonSet", "secmesh-agent")
    if mutate == "selector":
        orders["spec"]["selector"]["matchLabels"]["app"] = "other"
    elif mutate == "mount":
        orders["spec"]["template"]["spec"]["containers"][1]["volumeMounts"][0]["name"] = "nope"
    elif mutate == "image":
        del orders["spec"]["template"]["spec"]["containers"][0]["image"]
    elif mutate == "service":
        service["spec"]["selector"] = {"app": "nobody"}
    elif mutate == "target-port":
        service["spec"]["ports"][0]["targetPort"] = "no-such-port"
    elif mutate == "name":
        del service["metadata"]["name"]
    elif mutate == "namespace":
        del ds["metadata"]["namespace"]
    elif mutate == "configmap-key":
        ds["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["configMapKeyRef"]["key"] = "nope"
    elif mutate == "service-account":
        orders["spec"]["template"]["spec"]["serviceAccountName"] = "ghost"
    return check(objects)


@pytest.mark.parametrize(("mutate", "expected"), [
    ("selector", "does not match the pod template's labels"),
    ("mount", "mounts undefined volume 'nope'"),
    ("image", "container app has no image"),
    ("service", "matches no workload"),
    ("target-port", "targetPort 'no-such-port' is not a named port"),
    ("name", "missing `metadata.name`"),
    ("namespace", "without `metadata.namespace`"),
    ("configmap-key", "needs key 'nope' of ConfigMap 'secmesh-cluster'"),
    ("service-account", "serviceAccountName 'ghost' does not exist"),
])
def test_the_checks_catch_breakage(mutate: str, expected: str) -> None:
    problems = _broken(mutate)
    assert any(expected in p for p in problems), problems


# --- the real kustomize build --------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the offline checks above still ran)")
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("ca-material"))
    material = tree / "overlays" / "example" / "ca-material"
    assert run_cli("ca", "init", "--trust-domain", "cluster.local", "--dir", str(material)).returncode == 0
    bundle = run_cli("ca", "bundle", "--dir", str(material))
    assert bundle.returncode == 0, bundle.stderr
    (material / "bundle.pem").write_text(bundle.stdout)
    out = subprocess.run([kubectl, "kustomize", str(tree / "overlays" / "example")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (tree / "built.yaml").write_text(out.stdout)
    return load_objects(tree / "built.yaml", "kustomize build")


def test_the_built_overlay_is_consistent(built: list[Obj]) -> None:
    assert check(built) == []
    kinds = sorted({o.kind for o in built})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment", "Namespace",
                     "Secret", "Service", "ServiceAccount"]
    from_base = [o for o in built if o.namespace == "secmesh-system" and o.kind in ("Deployment", "DaemonSet",
                                                                                    "Service", "ServiceAccount")]
    assert len(from_base) == 5
    assert all(o.doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "secmesh" for o in from_base)


def test_the_built_secret_and_root_bundle_come_from_ca_init(built: list[Obj]) -> None:
    (secret,) = [o.doc for o in built if o.kind == "Secret"]
    assert set(secret["data"]) == {"ca.json", "roots.pem", "root-cert.pem", "root-key.pem",
                                   "intermediate-cert.pem", "intermediate-key.pem"}
    (root,) = [o.doc for o in built if o.kind == "ConfigMap" and o.name.startswith("secmesh-ca-root-cert-")]
    assert root["data"]["root-cert.pem"].startswith("-----BEGIN CERTIFICATE-----")
    ca = next(o.doc for o in built if o.kind == "Deployment" and o.name == "secmesh-ca")
    volumes = {v["name"]: v for v in ca["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ca-material"]["secret"]["secretName"] == secret["metadata"]["name"]  # hash suffix followed


# --- the parts agree -----------------------------------------------------------------------------

def _secmesh_command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for o in _objects(OVERLAY):
        for c in _containers(o.doc):
            if (c.get("command") or [None])[0] == "secmesh":
                lines.append((f"{o} container {c['name']}", [*c["command"][1:], *(c.get("args") or [])]))
    return lines


def _parse_with_the_real_cli(args: list[str]) -> None:
    from secmesh.cli.main import cli

    command: click.Command = cli
    ctx = click.Context(cli, info_name="secmesh")
    while isinstance(command, click.Group) and args and args[0] in command.list_commands(ctx):
        sub = command.get_command(ctx, args[0])
        assert sub is not None
        ctx, command, args = click.Context(sub, info_name=args[0], parent=ctx), sub, args[1:]
    command.make_context(ctx.info_name, list(args), parent=ctx.parent)  # raises on an unknown option


def test_every_secmesh_command_line_is_accepted_by_the_cli() -> None:
    lines = _secmesh_command_lines()
    assert {args[0] for _, args in lines} == {"ca", "agent", "sidecar"}
    for where, args in lines:
        resolved = ["placeholder" if a.startswith("$(") else a for a in args]
        try:
            _parse_with_the_real_cli(resolved)
        except click.ClickException as exc:
            pytest.fail(f"{where}: `secmesh {' '.join(args)}`: {exc.format_message()}")


@pytest.mark.parametrize("args", [["ca", "serve", "--no-such-flag"], ["agent", "--config"], ["sidecar", "--bogus", "x"]])
def test_the_command_line_check_can_fail(args: list[str]) -> None:
    with pytest.raises(click.ClickException):
        _parse_with_the_real_cli(args)


def test_agent_config_loads_with_the_agents_loader(tmp_path: Path) -> None:
    agent_config = pytest.importorskip("secmesh.agent.config")
    objects = _objects(OVERLAY)
    path = tmp_path / "agent.yaml"
    path.write_text(_configmap_yaml(objects, "secmesh-agent", "agent.yaml"))
    issuer = _find(objects, "ConfigMap", "secmesh-cluster")["data"]["issuer"]
    config = agent_config.load(path, env={"SECMESH_AGENT_TOKEN_ISSUERS": issuer})
    assert str(config.socket.path) == f"{inject.SOCKET_DIR}/socket"
    assert config.token.audiences == [inject.TOKEN_AUDIENCE] and config.token.issuers == [issuer]
    assert config.token.file == ""  # a node-shared socket must never hand out the agent's own identity
    assert config.ca.address == "secmesh-ca.secmesh-system.svc:15012"
    ds = _find(objects, "DaemonSet", "secmesh-agent")
    mounts = {m["mountPath"] for c in _containers(ds) if c["name"] == "agent" for m in c["volumeMounts"]}
    assert {str(config.socket.path.parent), str(config.ca.root.parent), str(Path(config.token.jwks).parent),
            "/etc/secmesh"} <= mounts


@pytest.mark.parametrize("name", ["frontend-sidecar", "orders-sidecar"])
def test_sidecar_configs_load_with_the_sidecars_loader(tmp_path: Path, name: str) -> None:
    sidecar_config = pytest.importorskip("secmesh.sidecar.config")
    path = tmp_path / "sidecar.yaml"
    path.write_text(_configmap_yaml(_objects(OVERLAY), name, "sidecar.yaml"))
    config = sidecar_config.load(path, env={})
    assert config.certs.source == "sds" and config.certs.sds.socket == f"{inject.SOCKET_DIR}/socket"
    assert config.admin.address == f"127.0.0.1:{inject.ADMIN_PORT}"
    for listener in config.listeners:
        port = listener.listen[1]
        assert port == (inject.INBOUND_PORT if listener.kind == "inbound" else inject.OUTBOUND_PORT)


def test_inject_writes_what_the_agent_and_ca_serve() -> None:
    objects = _objects(OVERLAY)
    ds = _find(objects, "DaemonSet", "secmesh-agent")
    (sockets,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "sockets"]
    assert sockets["hostPath"]["path"] == inject.DEFAULT_SOCKET_HOST_PATH
    ca = _find(objects, "Deployment", "secmesh-ca")
    (serve,) = [c for c in _containers(ca) if c["name"] == "ca"]
    args = serve["args"]
    assert args[args.index("--audience") + 1] == inject.TOKEN_AUDIENCE
    assert args[args.index("--listen") + 1] == "0.0.0.0:15012" and args[args.index("--admin") + 1] == "0.0.0.0:15014"
    images = {c["image"] for o in objects for c in _containers(o.doc)}
    assert images == {inject.DEFAULT_IMAGE}  # one image for everything; the overlay retags it


def test_the_example_workloads_are_the_output_of_inject() -> None:
    result = run_cli("inject", "-q", "-f", str(EXAMPLE / "workloads.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (EXAMPLE / "workloads.injected.yaml").read_text(), \
        "regenerate: secmesh inject -f deploy/k8s/example/workloads.yaml -o deploy/k8s/example/workloads.injected.yaml"


def test_containers_run_unprivileged() -> None:
    """Only the agent's socket-dir init container runs as root, with CHOWN/FOWNER and nothing else."""
    for o in _objects(OVERLAY):
        template = pod_template(o.doc)
        if template is None:
            continue
        pod_sc = template["spec"].get("securityContext") or {}
        for c in _containers(o.doc):
            sc = c.get("securityContext") or {}
            assert not sc.get("privileged"), f"{o} {c['name']} is privileged"
            if o.namespace == "shop" and c["name"] != inject.CONTAINER:
                continue  # the example's own app containers are the user's business
            assert sc.get("allowPrivilegeEscalation") is False, f"{o} {c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{o} {c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{o} {c['name']}"
            if c["name"] == "socket-dir":
                assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["CHOWN", "FOWNER"]
            else:
                user = sc.get("runAsUser", pod_sc.get("runAsUser"))
                assert user == inject.SIDECAR_UID, f"{o} {c['name']} runs as {user}"


def test_kustomization_labels_do_not_touch_selectors() -> None:
    """Selectors are immutable: a label added later must not change them (includeSelectors: false)."""
    for directory in KUSTOMIZATIONS:
        for entry in load_kustomization(directory).get("labels") or []:
            assert not entry.get("includeSelectors"), directory
        assert "commonLabels" not in load_kustomization(directory), directory


def test_yaml_is_plain_yaml() -> None:
    """No tabs, no YAML-1.1-only octals or booleans that Kubernetes would read differently."""
    for path in YAML_FILES:
        text = path.read_text()
        assert "\t" not in text, path
        for node in YAML(typ="safe").load_all(text):
            assert node is None or isinstance(node, dict)
        for n, line in enumerate(text.splitlines(), 1):
            value = line.split(":", 1)[-1].split("#", 1)[0].strip() if ":" in line else ""
            assert value not in ("yes", "no", "on", "off", "y", "n"), f"{path}:{n}: ambiguous boolean {value!r}"
            assert not (value[:1] == "0" and value.isdigit() and len(value) > 1), f"{path}:{n}: octal {value!r}"
