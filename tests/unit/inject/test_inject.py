"""`agentmesh inject`: what it adds, what it leaves alone, and how it refuses bad input.

Every injected output is validated against the Kubernetes OpenAPI schemas
shipped by kubernetes-validate (strict: unknown fields are errors). The
identity wiring (join token from a Secret, memory-backed identity volume) is
checked against what the sidecar reads (sidecar/identity.py).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from agentmesh.inject import (
    CONTAINER_NAME,
    DEFAULT_IMAGE,
    POD_TEMPLATES,
    InjectError,
    SidecarOptions,
    dump_documents,
    inject,
    read_documents,
)
from agentmesh.inject.sidecar import IDENTITY_DIR, JOIN_TOKEN_ENV, PORTS
from sidecar.identity import JOIN_TOKEN_ENV as SIDECAR_JOIN_TOKEN_ENV

K8S_VERSION = kubernetes_validate.latest_version()
AGENTMESH = [sys.executable, "-m", "agentmesh.cli"]


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    node = obj
    for key in POD_TEMPLATES[obj["kind"]]:
        node = node[key]
    return node["spec"]


def pod_annotations(obj: dict[str, Any]) -> dict[str, str]:
    node = obj
    for key in POD_TEMPLATES[obj["kind"]]:
        node = node[key]
    return node["metadata"]["annotations"]


def run(text: str, options: SidecarOptions | None = None, source: str = "in.yaml"):
    return inject(read_documents(text, source), options or SidecarOptions())


def agentmesh_inject(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTMESH, "inject", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "web"}},
    "spec": {"containers": [{"name": "web", "image": "example/web:1.0", "ports": [{"containerPort": 8080}]}]},
}
WORKLOADS: dict[str, dict[str, Any]] = {
    "Deployment": {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": POD_TEMPLATE},
    },
    "StatefulSet": {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {"serviceName": "web", "selector": {"matchLabels": {"app": "web"}}, "template": POD_TEMPLATE},
    },
    "DaemonSet": {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": POD_TEMPLATE},
    },
    "ReplicaSet": {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": POD_TEMPLATE},
    },
    "ReplicationController": {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "template": POD_TEMPLATE},
    },
    "Job": {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "web"},
        "spec": {"template": {**POD_TEMPLATE, "spec": {**POD_TEMPLATE["spec"], "restartPolicy": "Never"}}},
    },
    "CronJob": {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "web"},
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {
                "spec": {"template": {**POD_TEMPLATE, "spec": {**POD_TEMPLATE["spec"], "restartPolicy": "OnFailure"}}}
            },
        },
    },
    "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": POD_TEMPLATE["spec"]},
}
SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
}
CONFIG_MAP: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "web-agentmesh"},
    "data": {
        "agent.yaml": "agent: {name: web}\nupstream: {url: 'http://127.0.0.1:8080'}\ncontract: {protos: [web.proto]}\n"
        "listen: {inbound: '0.0.0.0:15006', admin: '0.0.0.0:15000'}\n"
        "control_plane: {address: 'agentmesh-control-plane.agentmesh.svc:15010',"
        " advertise_address: '${POD_IP}:15006'}\n"
        "identity: {dir: /var/lib/agentmesh/identity, mode: strict}\n",
        "web.proto": 'syntax = "proto3";\npackage web.v1;\n',
    },
}


def stream(*objects: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_every_workload_kind_gets_a_valid_native_sidecar(kind):
    result = run(stream(WORKLOADS[kind]))
    [body] = result.bodies
    validate(body)
    spec = pod_spec(body)
    [sidecar] = spec["initContainers"]
    assert sidecar["name"] == CONTAINER_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == DEFAULT_IMAGE
    assert sidecar["args"] == ["sidecar", "-c", "/etc/agentmesh/agent.yaml"]
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {
        "grpc-inbound": 15006,
        "grpc-egress": 15001,
        "http-egress": 15080,
        "http-admin": 15000,
    }
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["resources"]["requests"]
    assert {"name": "agentmesh-config", "configMap": {"name": "web-agentmesh"}} in spec["volumes"]
    assert {"name": "agentmesh-config", "mountPath": "/etc/agentmesh", "readOnly": True} in sidecar["volumeMounts"]
    # Identity: the join token from the workload's Secret (not optional), the key on a memory-backed volume.
    env = {e["name"]: e for e in sidecar["env"]}
    assert env[JOIN_TOKEN_ENV]["valueFrom"] == {"secretKeyRef": {"name": "web-agentmesh-join-token", "key": "token"}}
    assert {"name": "agentmesh-identity", "mountPath": IDENTITY_DIR} in sidecar["volumeMounts"]
    assert {"name": "agentmesh-identity", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in spec["volumes"]
    assert spec["containers"] == POD_TEMPLATE["spec"]["containers"]  # the agent itself is untouched
    annotations = pod_annotations(body)
    assert annotations["agentmesh.io/inject"] == "enabled"
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "15000"
    assert annotations["kubectl.kubernetes.io/default-container"] == "web"
    assert [str(r) for r in result.reports] == [f"{kind.lower()}/web injected"]


def test_container_mode_appends_a_regular_container():
    result = run(stream(WORKLOADS["Deployment"]), SidecarOptions(mode="container"))
    [body] = result.bodies
    validate(body)
    spec = pod_spec(body)
    assert [c["name"] for c in spec["containers"]] == ["web", CONTAINER_NAME]
    assert "restartPolicy" not in spec["containers"][1]
    assert "initContainers" not in spec


def test_a_multi_document_stream_keeps_order_and_leaves_other_kinds_alone():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    objects = [SERVICE, WORKLOADS["Deployment"], CONFIG_MAP, widget, WORKLOADS["Job"]]
    text = "# a comment\n" + stream(*objects) + "---\n"  # comments and empty documents are dropped
    result = run(text)
    assert [b["kind"] for b in result.bodies] == ["Service", "Deployment", "ConfigMap", "Widget", "Job"]
    assert result.bodies[0] == SERVICE
    assert result.bodies[2] == CONFIG_MAP
    assert result.bodies[3] == widget
    assert [str(r) for r in result.reports] == [
        "service/web skipped: not a workload",
        "deployment/web injected",
        "configmap/web-agentmesh skipped: not a workload",
        "widget/w skipped: not a workload",
        "job/web injected",
    ]
    assert result.warnings == []
    printed = list(yaml.safe_load_all(dump_documents(result.bodies, "yaml")))
    assert printed == result.bodies
    for body in printed[:3]:
        validate(body)


def test_existing_sidecars_and_init_containers_are_kept():
    deployment = copy.deepcopy(WORKLOADS["Deployment"])
    spec = deployment["spec"]["template"]["spec"]
    spec["containers"].append({"name": "log-shipper", "image": "example/shipper:2.0"})
    spec["initContainers"] = [{"name": "migrate", "image": "example/migrate:1.0"}]
    spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    deployment["spec"]["template"]["metadata"]["annotations"] = {"team": "web"}
    [body] = run(stream(deployment)).bodies
    validate(body)
    spec = pod_spec(body)
    assert [c["name"] for c in spec["containers"]] == ["web", "log-shipper"]
    # The sidecar starts first, so init containers may already call other agents.
    assert [c["name"] for c in spec["initContainers"]] == [CONTAINER_NAME, "migrate"]
    assert [v["name"] for v in spec["volumes"]] == ["data", "agentmesh-config", "agentmesh-tmp", "agentmesh-identity"]
    assert pod_annotations(body)["team"] == "web"


def test_injecting_twice_changes_nothing():
    once = run(stream(SERVICE, WORKLOADS["Deployment"]))
    twice = run(dump_documents(once.bodies, "yaml"))
    assert twice.bodies == once.bodies
    assert [str(r) for r in twice.reports] == [
        "service/web skipped: not a workload",
        "deployment/web already injected: unchanged",
    ]


def test_a_list_is_injected_item_by_item():
    listing = {"apiVersion": "v1", "kind": "List", "items": [SERVICE, WORKLOADS["Deployment"]]}
    result = run(json.dumps(listing), source="list.json")
    [body] = result.bodies
    assert body["items"][0] == SERVICE
    assert pod_spec(body["items"][1])["initContainers"][0]["name"] == CONTAINER_NAME
    validate(body["items"][1])


def test_options_set_image_and_config_map():
    options = SidecarOptions(image="registry.example/agentmesh:9.9", config_map="shared-agent")
    [body] = run(stream(WORKLOADS["StatefulSet"]), options).bodies
    spec = pod_spec(body)
    assert spec["initContainers"][0]["image"] == "registry.example/agentmesh:9.9"
    assert {"name": "agentmesh-config", "configMap": {"name": "shared-agent"}} in spec["volumes"]


@pytest.mark.parametrize(
    ("where", "annotations"),
    [("pod", {"agentmesh.io/inject": "disabled"}), ("workload", {"agentmesh.io/inject": "disabled"})],
)
def test_disabled_workloads_are_skipped(where, annotations):
    deployment = copy.deepcopy(WORKLOADS["Deployment"])
    target = deployment["spec"]["template"]["metadata"] if where == "pod" else deployment["metadata"]
    target["annotations"] = annotations
    result = run(stream(deployment))
    assert result.bodies == [deployment]
    assert [str(r) for r in result.reports] == ["deployment/web skipped: agentmesh.io/inject: disabled"]


def test_host_network_pods_are_skipped():
    daemonset = copy.deepcopy(WORKLOADS["DaemonSet"])
    daemonset["spec"]["template"]["spec"]["hostNetwork"] = True
    result = run(stream(daemonset))
    assert result.bodies == [daemonset]
    assert result.reports[0].outcome == "skipped"


def test_existing_scrape_annotations_are_kept_and_reported():
    deployment = copy.deepcopy(WORKLOADS["Deployment"])
    deployment["spec"]["template"]["metadata"]["annotations"] = {"prometheus.io/port": "9090"}
    result = run(stream(deployment))
    assert pod_annotations(result.bodies[0])["prometheus.io/port"] == "9090"
    assert "kept prometheus.io/port='9090'" in str(result.reports[0])


def test_a_config_map_in_the_input_is_checked_for_reachable_listeners():
    config_map = copy.deepcopy(CONFIG_MAP)
    text = config_map["data"]["agent.yaml"].replace("listen: {inbound: '0.0.0.0:15006', admin: '0.0.0.0:15000'}\n", "")
    config_map["data"]["agent.yaml"] = text + "listen: {inbound: '127.0.0.1:15006'}\n"
    result = run(stream(WORKLOADS["Deployment"], config_map))
    assert len(result.warnings) == 2
    assert "listen.inbound is 127.0.0.1:15006" in result.warnings[0]
    assert "listen.admin is 127.0.0.1:15000" in result.warnings[1]  # the default
    no_file = copy.deepcopy(CONFIG_MAP)
    no_file["data"] = {"other.yaml": "x"}
    assert "has no agent.yaml" in run(stream(WORKLOADS["Deployment"], no_file)).warnings[0]


def agent_yaml(**sections: str) -> dict[str, Any]:
    """CONFIG_MAP with some top-level sections of its agent.yaml replaced (an empty string drops one)."""
    config = yaml.safe_load(CONFIG_MAP["data"]["agent.yaml"])
    for key, value in sections.items():
        if value:
            config[key] = yaml.safe_load(value)
        else:
            config.pop(key)
    config_map = copy.deepcopy(CONFIG_MAP)
    config_map["data"]["agent.yaml"] = yaml.safe_dump(config)
    return config_map


@pytest.mark.parametrize(
    ("sections", "warning"),
    [
        (
            {"control_plane": ""},
            "agent.yaml has no control_plane: the sidecar cannot enroll and runs in plaintext",
        ),
        (
            {"control_plane": "{address: 'cp:15010'}"},
            "control_plane.advertise_address is not set: the sidecar registers an address other pods cannot reach; "
            "set it to ${POD_IP}:15006",
        ),
        (
            {"control_plane": "{address: 'cp:15010', advertise_address: '127.0.0.1:15006'}"},
            "control_plane.advertise_address is 127.0.0.1:15006",
        ),
        (
            {"identity": "{mode: strict}"},
            f"identity.dir is not set (a folder in /tmp): the sidecar's identity volume is mounted at {IDENTITY_DIR}",
        ),
        (
            {"identity": "{dir: /srv/identity}"},
            "identity.dir is /srv/identity",
        ),
        (
            {"identity": f"{{dir: {IDENTITY_DIR}, join_token: amjt.a.b}}"},
            f"identity.join_token puts a secret in a ConfigMap; remove it: the sidecar reads {JOIN_TOKEN_ENV}",
        ),
    ],
)
def test_a_config_map_in_the_input_is_checked_for_the_identity_wiring(sections, warning):
    result = run(stream(WORKLOADS["Deployment"], agent_yaml(**sections)))
    [found] = result.warnings
    assert found.startswith("configmap/web-agentmesh: agent.yaml ")
    assert warning in found


def test_without_identity_only_the_advertised_address_and_inline_tokens_are_checked():
    options = SidecarOptions(identity=False)
    for sections in ({"control_plane": ""}, {"identity": ""}, {"identity": "{dir: /srv/identity}"}):
        assert run(stream(WORKLOADS["Deployment"], agent_yaml(**sections)), options).warnings == []
    [warning] = run(
        stream(WORKLOADS["Deployment"], agent_yaml(control_plane="{address: 'cp:15010'}")), options
    ).warnings
    assert "advertise_address is not set" in warning


def test_json_output_is_one_object_or_a_list():
    result = run(stream(SERVICE, WORKLOADS["Deployment"]))
    listing = json.loads(dump_documents(result.bodies, "json"))
    assert listing["kind"] == "List"
    assert [i["kind"] for i in listing["items"]] == ["Service", "Deployment"]
    single = json.loads(dump_documents(result.bodies[1:], "json"))
    assert single["kind"] == "Deployment"
    validate(single)


# --- refusals -----------------------------------------------------------------------------------------------------


def test_invalid_yaml_names_file_line_and_document():
    text = stream(SERVICE) + "---\nkind: Deployment\nmetadata:\n  name: web\n   bad: indent\n"
    with pytest.raises(InjectError) as caught:
        run(text, source="app.yaml")
    message = str(caught.value)
    assert message.startswith("app.yaml:")
    assert "document 2" in message
    assert "invalid YAML" in message
    line = int(message.split(":")[1])
    assert text.splitlines()[line - 1].strip() == "bad: indent"


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (lambda d: d["spec"]["template"]["spec"].update(containers="web"), "spec.template.spec.containers", "list"),
        (lambda d: d["spec"]["template"]["spec"].update(containers=[]), "spec.template.spec.containers", "empty"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "containers[0].name", "missing"),
        (lambda d: d["spec"].pop("template"), "spec.template", "missing"),
        (lambda d: d["spec"]["template"].update(spec=[1]), "spec.template.spec", "mapping"),
        (lambda d: d.pop("kind"), "kind", "missing"),
        (lambda d: d["metadata"].update(annotations={"a": 1}), "metadata.annotations.a", "string"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"].append({"containerPort": 15000}),
            "spec.template.spec.containers[0].ports[1].containerPort",
            "15000 is the sidecar's http-admin port",
        ),
        (
            lambda d: d["spec"]["template"]["spec"].update(volumes=[{"name": "agentmesh-config", "emptyDir": {}}]),
            "spec.template.spec.volumes[0].name",
            "reserved",
        ),
        (
            lambda d: d["spec"]["template"]["spec"].update(volumes=[{"name": "agentmesh-identity", "emptyDir": {}}]),
            "spec.template.spec.volumes[0].name",
            "'agentmesh-identity' is reserved for the sidecar",
        ),
    ],
)
def test_malformed_workloads_are_refused_with_a_path(mutate, path, reason):
    deployment = copy.deepcopy(WORKLOADS["Deployment"])
    mutate(deployment)
    with pytest.raises(InjectError) as caught:
        run(stream(SERVICE, deployment), source="app.yaml")
    error = caught.value
    assert error.source == "app.yaml"
    assert error.document == 2
    assert error.path.endswith(path)
    assert reason in error.message


def test_a_document_that_is_not_an_object_is_refused():
    with pytest.raises(InjectError, match=r"in.yaml: document 1: \(document\): expected a Kubernetes object"):
        run("- a\n- b\n")


def test_a_list_item_error_names_the_item():
    deployment = copy.deepcopy(WORKLOADS["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"] = "web"
    listing = {"apiVersion": "v1", "kind": "List", "items": [SERVICE, deployment]}
    with pytest.raises(InjectError) as caught:
        run(yaml.safe_dump(listing))
    assert caught.value.path == "items[1].spec.template.spec.containers"


def test_an_unnamed_workload_needs_a_config_map_and_secret_name():
    pod = copy.deepcopy(WORKLOADS["Pod"])
    pod["metadata"] = {"generateName": "web-"}
    with pytest.raises(InjectError, match=r"metadata\.name: missing: name the workload or pass --config-map"):
        run(stream(pod))
    with pytest.raises(InjectError, match=r"metadata\.name: missing: name the workload or pass --join-token-secret"):
        run(stream(pod), SidecarOptions(config_map="web"))
    [body] = run(stream(pod), SidecarOptions(config_map="web", join_token_secret="web-token")).bodies
    validate(body)
    [body] = run(stream(pod), SidecarOptions(config_map="web", identity=False)).bodies
    validate(body)


def test_the_join_token_secret_can_be_named():
    [body] = run(stream(WORKLOADS["Deployment"]), SidecarOptions(join_token_secret="shared-join-token")).bodies
    validate(body)
    [sidecar] = pod_spec(body)["initContainers"]
    [ref] = [e["valueFrom"]["secretKeyRef"] for e in sidecar["env"] if e["name"] == JOIN_TOKEN_ENV]
    assert ref == {"name": "shared-join-token", "key": "token"}


def test_without_identity_there_is_no_secret_and_no_identity_volume():
    [body] = run(stream(WORKLOADS["Deployment"]), SidecarOptions(identity=False)).bodies
    validate(body)
    spec = pod_spec(body)
    [sidecar] = spec["initContainers"]
    assert JOIN_TOKEN_ENV not in {e["name"] for e in sidecar["env"]}
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["agentmesh-config", "agentmesh-tmp"]
    assert [v["name"] for v in spec["volumes"]] == ["agentmesh-config", "agentmesh-tmp"]


def test_the_identity_wiring_matches_what_the_sidecar_reads(tmp_path):
    """The env name is the sidecar's; the ConfigMap's agent.yaml, with that env, turns mTLS on in the mounted dir."""
    from sidecar.config.bootstrap import Bootstrap
    from sidecar.identity import plan_identity

    assert JOIN_TOKEN_ENV == SIDECAR_JOIN_TOKEN_ENV
    for name, text in CONFIG_MAP["data"].items():
        (tmp_path / name).write_text(text)
    data = yaml.safe_load(CONFIG_MAP["data"]["agent.yaml"])
    bootstrap = Bootstrap.model_validate(
        {**data, "control_plane": {"address": "cp:15010"}}, context={"base_dir": tmp_path}
    )
    plan = plan_identity(bootstrap, environ={JOIN_TOKEN_ENV: "amjt.a.b"}, persisted=lambda _: False)
    assert plan.enabled and str(plan.dir) == IDENTITY_DIR and plan.join_token == "amjt.a.b"


def test_injecting_twice_with_identity_changes_nothing_and_an_older_injection_is_kept():
    once = run(stream(WORKLOADS["Deployment"]))
    assert run(dump_documents(once.bodies, "yaml")).bodies == once.bodies
    plaintext = run(stream(WORKLOADS["Deployment"]), SidecarOptions(identity=False))
    again = run(dump_documents(plaintext.bodies, "yaml"))
    assert again.bodies == plaintext.bodies  # a pod already injected is never rewritten
    assert [str(r) for r in again.reports] == ["deployment/web already injected: unchanged"]


def test_ports_are_iana_service_names():
    for name in PORTS:
        assert len(name) <= 15
        assert name.replace("-", "").isalnum()
        assert name == name.lower()


# --- the command --------------------------------------------------------------------------------------------------


def test_command_reads_files_and_stdin_and_reports_on_stderr(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text(stream(WORKLOADS["Deployment"]))
    result = agentmesh_inject("-f", str(first), "-f", "-", stdin=stream(SERVICE))
    assert result.returncode == 0, result.stderr
    bodies = list(yaml.safe_load_all(result.stdout))
    assert [b["kind"] for b in bodies] == ["Deployment", "Service"]
    assert result.stderr.splitlines() == ["deployment/web injected", "service/web skipped: not a workload"]
    again = agentmesh_inject("-f", "-", "-o", "json", stdin=result.stdout)
    assert again.returncode == 0
    assert json.loads(again.stdout)["items"] == bodies
    assert "deployment/web already injected: unchanged" in again.stderr


def test_command_options_reach_the_sidecar():
    result = agentmesh_inject(
        "-f", "-", "--image", "example/agentmesh:1.2", "--config-map", "cfg", "--sidecar-mode", "container",
        "--join-token-secret", "web-token", stdin=stream(WORKLOADS["Deployment"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    spec = pod_spec(yaml.safe_load(result.stdout))
    assert spec["containers"][1]["image"] == "example/agentmesh:1.2"
    assert {"name": "agentmesh-config", "configMap": {"name": "cfg"}} in spec["volumes"]
    [ref] = [e["valueFrom"]["secretKeyRef"] for e in spec["containers"][1]["env"] if e["name"] == JOIN_TOKEN_ENV]
    assert ref["name"] == "web-token"
    plain = agentmesh_inject("-f", "-", "--no-identity", stdin=stream(WORKLOADS["Deployment"]))
    assert plain.returncode == 0, plain.stderr
    assert "agentmesh-identity" not in plain.stdout and JOIN_TOKEN_ENV not in plain.stdout


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("kind: [\n", ["-f", "-"], "error: <stdin>:"),
        ("", ["-f", "/nonexistent/app.yaml"], "error: /nonexistent/app.yaml: cannot read"),
        ("apiVersion: v1\n", ["-f", "-"], "error: <stdin>: document 1: kind: missing"),
    ],
)
def test_command_exits_2_on_bad_input(stdin, args, message):
    result = agentmesh_inject(*args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message)


def test_command_needs_a_file():
    assert agentmesh_inject().returncode == 2
