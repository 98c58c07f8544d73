"""deploy/kubernetes, rendered with `kubectl kustomize` and validated offline.

Every rendered object is checked against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: unknown fields are errors), the example
after `agentmesh inject` too. The control plane's probes, security and ports,
the example's ConfigMap (a valid agent.yaml with its contract) and the
autoscaler's metric (the sidecar's own gauge, through the prometheus-adapter
rule) are checked against the code they depend on.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from agentmesh.cli.control_plane import control_plane as control_plane_command
from agentmesh.inject import SidecarOptions, inject, read_documents
from agentmesh.inject.sidecar import ADMIN_PORT, INBOUND_PORT, RUN_AS
from sidecar.app import load_contract
from sidecar.config.bootstrap import Bootstrap
from sidecar.stats import SidecarStats
from tests.unit.deploy.conftest import DEPLOY, tool

KUBERNETES = DEPLOY / "kubernetes"
K8S_VERSION = kubernetes_validate.latest_version()


@cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(KUBERNETES / folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def only(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def container(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    [found] = [c for c in (*spec.get("initContainers", ()), *spec["containers"]) if c["name"] == name]
    return found


@pytest.mark.parametrize("folder", ["base", "examples"])
def test_renders_to_valid_kubernetes_objects(folder):
    objects = render(folder)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_catches_mistakes():
    deployment = yaml.safe_load(yaml.safe_dump(only(render("base"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_examples_need_the_load_restrictor_flag_only_for_the_contract():
    result = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(KUBERNETES / "examples")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "researcher.proto" in result.stderr
    base = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(KUBERNETES / "base")], capture_output=True, check=False
    )
    assert base.returncode == 0


def test_base_has_every_control_plane_object():
    kinds = sorted(o["kind"] for o in render("base"))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    )
    assert {o["metadata"].get("namespace") for o in render("base") if o["kind"] != "Namespace"} == {"agentmesh"}


def test_control_plane_probes_use_grpc_health_on_its_grpc_port():
    cp = container(render("base"), "control-plane")
    ports = {p["name"]: p["containerPort"] for p in cp["ports"]}
    assert ports == {"grpc": 15010, "http": 18080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert cp[probe]["grpc"] == {"port": 15010}, probe
    assert f"--listen=0.0.0.0:{ports['grpc']}" in cp["args"]
    assert f"--http=0.0.0.0:{ports['http']}" in cp["args"]


def test_control_plane_args_are_options_of_the_command():
    cp = container(render("base"), "control-plane")
    assert cp["args"][0] == "control-plane"
    known = {opt for param in control_plane_command.params for opt in param.opts}
    for arg in cp["args"][1:]:
        assert arg.split("=", 1)[0] in known, arg
    env = {e["name"]: e for e in cp["env"]}
    assert env["AGENTMESH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    config_map = only(render("base"), "ConfigMap")
    for entry in env.values():
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == config_map["metadata"]["name"]
            assert ref["key"] in config_map["data"]


def test_control_plane_is_locked_down_and_keeps_its_database():
    objects = render("base")
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    cp = container(objects, "control-plane")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == RUN_AS
    assert cp["securityContext"]["readOnlyRootFilesystem"] is True
    assert cp["securityContext"]["allowPrivilegeEscalation"] is False
    assert cp["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert cp["resources"]["requests"] and cp["resources"]["limits"]["memory"]
    db = next(a for a in cp["args"] if a.startswith("--db=")).removeprefix("--db=")
    mounts = {m["mountPath"]: m["name"] for m in cp["volumeMounts"]}
    volume = mounts[str(Path(db).parent)]
    [claim] = [v for v in pod["volumes"] if v["name"] == volume]
    assert claim["persistentVolumeClaim"]["claimName"] == only(objects, "PersistentVolumeClaim")["metadata"]["name"]
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1  # one SQLite writer
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_service_and_disruption_budget_select_the_control_plane():
    objects = render("base")
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = only(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 15010, "http": 18080}
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_injected_example_is_valid_and_matches_its_config_map(tmp_path):
    objects = render("examples")
    result = inject(read_documents(yaml.safe_dump_all(objects), "examples"), SidecarOptions())
    assert result.warnings == []
    assert [str(r) for r in result.reports if r.outcome == "injected"] == ["deployment/researcher injected"]
    for obj in result.bodies:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    [deployment] = [b for b in result.bodies if b["kind"] == "Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    [config_volume] = [v for v in volumes if v["name"] == "agentmesh-config"]
    assert config_volume["configMap"]["name"] == only(objects, "ConfigMap")["metadata"]["name"]
    service = only(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == INBOUND_PORT


def test_the_example_config_map_is_a_working_agent_yaml(tmp_path):
    data = only(render("examples"), "ConfigMap")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    bootstrap = Bootstrap.load(tmp_path / "agent.yaml")
    assert bootstrap.listen.inbound == f"0.0.0.0:{INBOUND_PORT}"
    assert bootstrap.listen.admin == f"0.0.0.0:{ADMIN_PORT}"
    assert bootstrap.upstream.url == "http://127.0.0.1:8201"
    contract = load_contract(bootstrap)
    assert "/research.v1.Researcher/Search" in contract.methods
    agent = container(render("examples"), "researcher")
    assert agent["args"][agent["args"].index("--port") + 1] == "8201"
    assert "ports" not in agent  # the untouched agent listens on loopback only


def test_autoscaler_uses_the_sidecar_in_flight_gauge_through_the_adapter_rule():
    objects = render("examples")
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == only(objects, "Deployment")["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert "replicas" not in only(objects, "Deployment")["spec"]  # the HPA owns the count

    values = yaml.safe_load((KUBERNETES / "examples" / "prometheus-adapter-values.yaml").read_text())
    [rule] = values["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].startswith(name + "{")
    assert 'direction="inbound"' in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    stats = SidecarStats(agent="researcher", version="v1", team="research")
    stats.route(
        direction="inbound", source_agent="a", destination_agent="researcher", destination_version="v1", rpc_method="/m"
    ).start()
    body, _ = stats.exposition("text/plain")
    assert f'{name}{{destination_agent="researcher",direction="inbound"}} 1.0' in body.decode()
