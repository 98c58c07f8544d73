"""Sidecars register with the real control plane; a proxyless gRPC client follows its routing.

The client is grpcio's own xDS implementation (target `xds:///researcher`,
bootstrap pointing at the control plane): a consumer nobody here wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, agent_with_sidecar
from tests.integration.procs import ROOT, wait_for

MODEL_VERSION = {"research-sim-1": "v1", "research-sim-2": "v2"}

PROXYLESS_CLIENT = """
import collections, json, sys
import grpc
from tests.integration.mesh import Messages
messages = Messages()
response_cls = messages.cls("research.v1.SearchResponse")
channel = grpc.insecure_channel("xds:///researcher")
call = channel.unary_unary("/research.v1.Researcher/Search",
    request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString)
counts = collections.Counter()
for i in range(int(sys.argv[1])):
    try:
        reply = call(messages("research.v1.SearchRequest", query=f"proxyless {i}", max_results=1), timeout=10)
        counts[reply.model] += 1
    except grpc.RpcError as e:
        counts[e.code().name] += 1
print(json.dumps(counts))
"""


def agents(control_plane: ControlPlaneProcess) -> dict[str, object]:
    listed = control_plane.cli("agents", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    return {a["name"]: a for a in json.loads(listed.stdout)["agents"]}


def healthy_versions(control_plane: ControlPlaneProcess, name: str) -> set[str]:
    agent = agents(control_plane).get(name)
    if agent is None:
        return set()
    return {
        v["version"]
        for v in agent["versions"]  # type: ignore[index]
        if any(i.get("healthy") for i in v.get("instances", []))
    }


def proxyless_calls(control_plane: ControlPlaneProcess, tmp_path: Path, count: int) -> Counter[str]:
    bootstrap = tmp_path / "xds-bootstrap.json"
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": control_plane.address,
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "proxyless-test-client", "cluster": "tests", "locality": {"zone": "z"}},
            }
        )
    )
    ran = subprocess.run(
        [sys.executable, "-c", PROXYLESS_CLIENT, str(count)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=control_plane.env(GRPC_XDS_BOOTSTRAP=str(bootstrap), PYTHONPATH=str(ROOT)),
    )
    assert ran.returncode == 0, ran.stderr
    return Counter({MODEL_VERSION.get(k, k): v for k, v in json.loads(ran.stdout).items()})


def apply_split(control_plane: ControlPlaneProcess, tmp_path: Path, v1: int, v2: int) -> None:
    policy = {
        "apiVersion": "agentmesh.io/v1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "researcher-split"},
        "spec": {"target": "researcher", "split": [{"version": "v1", "weight": v1}, {"version": "v2", "weight": v2}]},
    }
    path = tmp_path / f"split-{v1}-{v2}.yaml"
    path.write_text(yaml.safe_dump(policy))
    applied = control_plane.cli("policy", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr


@pytest.fixture
def researchers(control_plane: ControlPlaneProcess, tmp_path: Path) -> Iterator[tuple[AgentUnderTest, AgentUnderTest]]:
    link = {"address": control_plane.address}
    with (
        agent_with_sidecar(tmp_path, "researcher", version="v1", control_plane=link) as v1,
        agent_with_sidecar(tmp_path, "researcher", version="v2", control_plane=link) as v2,
    ):
        wait_for(lambda: healthy_versions(control_plane, "researcher") == {"v1", "v2"}, what="both versions registered")
        yield v1, v2


def test_registration_health_and_deregistration(
    control_plane: ControlPlaneProcess, researchers: tuple[AgentUnderTest, AgentUnderTest]
) -> None:
    _v1, v2 = researchers
    described = agents(control_plane)["researcher"]
    assert described["services"] == ["research.v1.Researcher"]  # type: ignore[index]
    # The agent behind v2 dies: its sidecar reports it unhealthy.
    assert v2.agent is not None
    v2.agent.stop()
    wait_for(lambda: healthy_versions(control_plane, "researcher") == {"v1"}, what="v2 reported unhealthy")
    # Its sidecar stops: the instance is deregistered.
    assert v2.sidecar is not None
    v2.sidecar.stop()
    wait_for(
        lambda: [v["version"] for v in agents(control_plane)["researcher"]["versions"]] == ["v1"],  # type: ignore[index]
        what="v2 deregistered",
    )


def test_proxyless_client_follows_the_split_and_fails_over(
    control_plane: ControlPlaneProcess, researchers: tuple[AgentUnderTest, AgentUnderTest], tmp_path: Path
) -> None:
    apply_split(control_plane, tmp_path, 100, 0)
    assert proxyless_calls(control_plane, tmp_path, 20) == Counter({"v1": 20})
    apply_split(control_plane, tmp_path, 0, 100)
    assert proxyless_calls(control_plane, tmp_path, 20) == Counter({"v2": 20})
    apply_split(control_plane, tmp_path, 50, 50)
    both = proxyless_calls(control_plane, tmp_path, 60)
    assert set(both) == {"v1", "v2"} and both["v1"] + both["v2"] == 60
    # Failover: v1 gets a second instance; the first one's agent dies, its sidecar reports it, the
    # control plane marks that endpoint UNHEALTHY in EDS and the client sends everything to the other.
    apply_split(control_plane, tmp_path, 100, 0)
    with agent_with_sidecar(tmp_path, "researcher", version="v1", control_plane={"address": control_plane.address}):
        wait_for(lambda: instances(control_plane, "v1") == (2, 2), what="second v1 instance healthy")
        v1, _ = researchers
        assert v1.agent is not None
        v1.agent.stop()
        wait_for(lambda: instances(control_plane, "v1") == (1, 2), what="first v1 instance unhealthy")
        assert proxyless_calls(control_plane, tmp_path, 20) == Counter({"v1": 20})


def instances(control_plane: ControlPlaneProcess, version: str) -> tuple[int, int]:
    """(healthy, total) instances of a researcher version."""
    for v in agents(control_plane)["researcher"]["versions"]:  # type: ignore[index]
        if v["version"] == version:
            found = v.get("instances", [])
            return sum(1 for i in found if i.get("healthy")), len(found)
    return 0, 0
