"""`secmesh.inject` in-process: the rules the golden files do not spell out one by one.

The golden tests (test_inject_golden.py) run the real CLI; these cover edge cases and errors
quickly, plus two hypothesis properties: any text either injects or fails with an
`InjectError` (never another exception), and injection is idempotent and keeps user data.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from secmesh import __version__
from secmesh.inject import (CONFIG_MAP_ANNOTATION, CONTAINER, STATUS_ANNOTATION, InjectError, InjectSettings,
                            inject_stream)
from tests.unit.deploy.k8s import check, Obj, strip_injection

S = InjectSettings()


def pod(extra_spec: str = "", meta: str = "") -> str:
    return ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\n" + meta +
            "spec:\n  containers:\n  - name: app\n    image: app:1\n" + extra_spec)


def load(text: str) -> list:
    return [d for d in YAML(typ="safe").load_all(text) if d is not None]


def test_pod_gets_sidecar_volumes_and_status() -> None:
    out, outcomes = inject_stream(pod(), S, source="p.yaml")
    (doc,) = load(out)
    spec = doc["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", CONTAINER]
    sidecar = spec["containers"][1]
    assert sidecar["image"] == f"secmesh:{__version__}"  # the image deploy/Dockerfile builds for this release
    assert sidecar["command"] + sidecar["args"] == ["secmesh", "sidecar", "--config", "/etc/secmesh/sidecar.yaml"]
    assert sidecar["securityContext"]["runAsUser"] == 1337 and sidecar["securityContext"]["runAsNonRoot"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    token = volumes["secmesh-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"path": "istio-token", "audience": "istio-ca", "expirationSeconds": 43200}
    assert volumes["secmesh-socket"]["hostPath"] == {"path": "/run/secmesh/sockets", "type": "DirectoryOrCreate"}
    assert volumes["secmesh-config"]["configMap"] == {"name": "secmesh-sidecar"}
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounts == {"secmesh-socket": "/var/run/secrets/workload-spiffe-uds",
                      "secmesh-token": "/var/run/secrets/tokens", "secmesh-config": "/etc/secmesh"}
    status = json.loads(doc["metadata"]["annotations"][STATUS_ANNOTATION])
    assert status == {"image": sidecar["image"], "configMap": "secmesh-sidecar", "containers": [CONTAINER],
                      "initContainers": [], "volumes": ["secmesh-socket", "secmesh-token", "secmesh-config"]}
    assert [(o.kind, o.name, o.action) for o in outcomes] == [("Pod", "p", "injected")]
    assert check([Obj("p.yaml", doc)]) == [f"p.yaml: Pod/p: volume secmesh-config uses ConfigMap "
                                           f"'secmesh-sidecar', which does not exist"]


def test_config_map_annotation_beats_the_flag() -> None:
    text = pod(meta=f"  annotations:\n    {CONFIG_MAP_ANNOTATION}: mine\n")
    (doc,) = load(inject_stream(text, InjectSettings(config_map="flag"))[0])
    volumes = {v["name"]: v for v in doc["spec"]["volumes"]}
    assert volumes["secmesh-config"]["configMap"]["name"] == "mine"


@pytest.mark.parametrize("value", ['"false"', "false", '"False"', "'no'"])
def test_opt_out_values(value: str) -> None:
    text = pod(meta=f"  annotations:\n    sidecar.secmesh.io/inject: {value}\n")
    out, outcomes = inject_stream(text, S)
    assert out == text and outcomes[0].action == "skipped"


def test_inject_true_annotation_still_injects() -> None:
    text = pod(meta='  annotations:\n    sidecar.secmesh.io/inject: "true"\n')
    assert inject_stream(text, S)[1][0].action == "injected"


def test_restart_policy_never_gets_a_native_sidecar() -> None:
    (doc,) = load(inject_stream(pod("  restartPolicy: Never\n"), S)[0])
    (init,) = doc["spec"]["initContainers"]
    assert init["name"] == CONTAINER and init["restartPolicy"] == "Always" and "startupProbe" in init
    assert [c["name"] for c in doc["spec"]["containers"]] == ["app"]


def test_rerun_with_new_image_replaces_in_place() -> None:
    once, _ = inject_stream(pod(), InjectSettings(image="secmesh:old"))
    twice, outcomes = inject_stream(once, InjectSettings(image="secmesh:new"))
    (doc,) = load(twice)
    assert [c["image"] for c in doc["spec"]["containers"]] == ["app:1", "secmesh:new"]
    assert len(doc["spec"]["volumes"]) == 3 and outcomes[0].action == "updated"
    thrice, outcomes = inject_stream(twice, InjectSettings(image="secmesh:new"))
    assert thrice == twice and outcomes[0].action == "unchanged"


@pytest.mark.parametrize(("text", "message"), [
    ("a: [1\n", "p.yaml:2:1: not valid YAML"),
    ("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n", "p.yaml:5:3: not valid YAML: found duplicate key"),
    ("- 1\n- 2\n", "p.yaml:1:1: document 1 is a list, not a Kubernetes object"),
    ("hello\n", "p.yaml: document 1 is a string, not a Kubernetes object"),
    ("kind: Pod\nmetadata: {name: x}\n", "p.yaml:1:1: document 1 is not a Kubernetes object (no `apiVersion`)"),
    ("apiVersion: v1\nkind: Service\n---\napiVersion: v1\n", "p.yaml:4:1: document 2 is not a Kubernetes object (no `kind`)"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 1\n",
     "p.yaml:5:3: Deployment d: `spec.template` is missing"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: nope\n",
     "p.yaml:5:3: Pod p: `spec.containers` must be a list"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: []\n", "Pod p: the pod has no containers"),
    (pod("    ports:\n    - containerPort: 15006\n"), "p.yaml:11:7: Pod p: container `app` uses port 15006"),
    (pod("  volumes:\n  - name: secmesh-socket\n    emptyDir: {}\n"),
     "p.yaml:11:5: Pod p: volume `secmesh-socket` already exists and was not added by secmesh inject"),
    (pod("  - name: secmesh-sidecar\n    image: x\n"),
     "Pod p: container `secmesh-sidecar` already exists and was not added by secmesh inject"),
    ("apiVersion: v1\nkind: List\nitems: 3\n", "p.yaml:3:1: a List needs `items`"),
])
def test_errors_name_the_place(text: str, message: str) -> None:
    with pytest.raises(InjectError) as err:
        inject_stream(text, S, source="p.yaml")
    assert message in err.value.message


def test_marker_comment_crlf_and_trailing_blank_lines_survive() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n--- # the pod\n" + pod() + "\n\n---\n# end\n"
    out, _ = inject_stream(text, S)
    assert out.startswith("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n--- # the pod\napiVersion: v1\n")
    assert out.endswith("\n\n---\n# end\n") and out.count("# the pod") == 1
    crlf = text.replace("\n", "\r\n")
    assert len(load(inject_stream(crlf, S)[0])) == 2


def test_non_workloads_and_foreign_groups_pass_through_byte_for_byte() -> None:
    text = ("apiVersion: v1\nkind: ConfigMap\nmetadata:   {name: c}   # odd spacing\ndata:\n    k:    'v'\n---\n"
            "apiVersion: example.com/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {}}}\n")
    out, outcomes = inject_stream(text, S)
    assert out == text and [o.action for o in outcomes] == ["passthrough", "passthrough"]


# --- properties ----------------------------------------------------------------------------------

yaml_ish = st.text(alphabet=st.sampled_from(list("ab: -[]{}#'\"\n\t|>&*!%@`,?0123456789kindapiVersion/")),
                   max_size=120)


@settings(max_examples=300, deadline=None)
@given(yaml_ish)
def test_any_text_injects_or_fails_cleanly(text: str) -> None:
    try:
        inject_stream(text, S)
    except InjectError:
        pass


names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@st.composite
def deployments(draw: st.DrawFn) -> str:
    app = draw(names)
    containers = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    seq_indent = draw(st.sampled_from(["", "  "]))
    lines = ["apiVersion: apps/v1", "kind: Deployment", "metadata:", f"  name: {app}  # the {app} app",
             "spec:", "  selector:", "    matchLabels:", f"      app: {app}", "  template:", "    metadata:",
             "      labels:", f"        app: {app}", "    spec:"]
    if draw(st.booleans()):
        lines += ["      restartPolicy: " + draw(st.sampled_from(["Always", "OnFailure", "Never"]))]
    lines += ["      containers:"]
    for c in containers:
        lines += [f"      {seq_indent}- name: {c}", f"      {seq_indent}  image: {c}:1"]
    return "\n".join(lines) + "\n"


@settings(max_examples=25, deadline=None)
@given(deployments(), st.sampled_from(["secmesh:a", "registry.example.com/secmesh:b"]))
def test_injection_is_idempotent_and_keeps_user_data(text: str, image: str) -> None:
    s = InjectSettings(image=image)
    once, _ = inject_stream(text, s)
    twice, outcomes = inject_stream(once, s)
    assert twice == once and outcomes[0].action == "unchanged"
    assert strip_injection(load(once)[0]) == strip_injection(load(text)[0], only_empty=True)
    assert "# the " in once


@pytest.mark.parametrize("status", ['"{not json"', '"[1, 2]"', '\'{"containers": 5, "volumes": [7]}\''])
def test_a_damaged_status_annotation_owns_nothing(status: str) -> None:
    text = pod(meta=f"  annotations:\n    {STATUS_ANNOTATION}: {status}\n")
    (doc,) = load(inject_stream(text, S)[0])
    assert json.loads(doc["metadata"]["annotations"][STATUS_ANNOTATION])["containers"] == [CONTAINER]
    with pytest.raises(InjectError, match="already exists and was not added"):
        inject_stream(pod("  - name: secmesh-sidecar\n    image: x\n",
                          meta=f"  annotations:\n    {STATUS_ANNOTATION}: {status}\n"), S)
