"""Policies applied with the CLI govern traffic through our sidecars (xDS from the real control plane).

Canary split, version pinning, access rules, AgentConfig headers, retries and
failover when an instance dies, and serving from the persisted config when the
control plane is gone.
"""

from __future__ import annotations

import functools
import json
import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, agent_with_sidecar, mtls_agent, unary
from tests.integration.procs import metric, wait_for

SEARCH = "/research.v1.Researcher/Search"
VERSION_OF_MODEL = {"research-sim-1": "v1", "research-sim-2": "v2"}


@pytest.fixture(scope="module")
def messages() -> Messages:
    return Messages()


def apply(control_plane: ControlPlaneProcess, tmp_path: Path, *documents: dict[str, Any]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    applied = control_plane.cli("policy", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr


def traffic(target: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentmesh.io/v1",
        "kind": "TrafficPolicy",
        "metadata": {"name": f"{target}-traffic"},
        "spec": {"target": target, **spec},
    }


def search(messages: Messages, egress: grpc.Channel, *, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    request = messages("research.v1.SearchRequest", query="through the mesh", max_results=1)
    return unary(
        egress,
        SEARCH,
        request,
        messages.cls("research.v1.SearchResponse"),
        timeout=10,
        metadata=(("x-agentmesh-target", "researcher"), *metadata),
    )


def versions(messages: Messages, egress: grpc.Channel, count: int, **kwargs: Any) -> Counter[str]:
    return Counter(VERSION_OF_MODEL.get(search(messages, egress, **kwargs).model, "other") for _ in range(count))


class Mesh:
    def __init__(self, control_plane: ControlPlaneProcess, tmp_path: Path) -> None:
        self.control_plane = control_plane
        self.tmp_path = tmp_path
        self.link = {"address": control_plane.address, "config_cache": str(tmp_path / "xds-cache.json")}


@pytest.fixture
def mesh(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> Iterator[tuple[Mesh, AgentUnderTest, AgentUnderTest, AgentUnderTest]]:
    link = {"address": control_plane.address}
    with (
        agent_with_sidecar(tmp_path, "researcher", version="v1", control_plane=link) as v1,
        agent_with_sidecar(tmp_path, "researcher", version="v2", control_plane=link) as v2,
        agent_with_sidecar(
            tmp_path, "planner", control_plane={**link, "config_cache": str(tmp_path / "planner-xds.json")}
        ) as planner,
    ):
        for cluster in ("agent/researcher/v1", "agent/researcher/v2"):
            wait_for(functools.partial(one_healthy, planner, cluster), what=f"{cluster} healthy")
        yield Mesh(control_plane, tmp_path), v1, v2, planner


def test_canary_split_pinning_and_config(mesh: Any, messages: Messages) -> None:
    env, v1, _v2, planner = mesh
    with grpc.insecure_channel(f"127.0.0.1:{planner.ports.egress_grpc}") as egress:
        apply(env.control_plane, env.tmp_path, traffic("researcher", split=[{"version": "v1", "weight": 100}]))
        wait_for(lambda: versions(messages, egress, 10) == Counter({"v1": 10}), what="all traffic on v1")
        apply(env.control_plane, env.tmp_path, traffic("researcher", split=[{"version": "v2", "weight": 100}]))
        wait_for(lambda: versions(messages, egress, 10) == Counter({"v2": 10}), what="all traffic on v2")
        # Pinning by header beats the split.
        pinned = versions(messages, egress, 10, metadata=(("x-agentmesh-version", "v1"),))
        assert pinned == Counter({"v1": 10})
        apply(
            env.control_plane,
            env.tmp_path,
            traffic("researcher", split=[{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]),
        )
        wait_for(lambda: set(versions(messages, egress, 40)) == {"v1", "v2"}, what="both versions serve")
        # AgentConfig: the value reaches the agent as a header (the researcher reports it as its model)
        # and the sidecar's admin /config, without a restart.
        apply(
            env.control_plane,
            env.tmp_path,
            {
                "apiVersion": "agentmesh.io/v1",
                "kind": "AgentConfig",
                "metadata": {"name": "researcher-config"},
                "spec": {"target": "researcher", "values": {"model": "small-model"}},
            },
        )
        wait_for(lambda: search(messages, egress).model == "small-model", what="config header applied")
        with urllib.request.urlopen(f"{v1.ports.admin_url}/config", timeout=5) as response:
            assert json.load(response) == {"model": "small-model"}
    assert (
        metric(
            planner.ports.admin_url,
            "agentmesh_requests_total",
            direction="outbound",
            destination_agent="researcher",
            destination_version="v2",
            grpc_code="OK",
        )
        >= 10
    )


def test_access_policy_denies_with_policy_name(
    control_plane: ControlPlaneProcess, messages: Messages, tmp_path: Path
) -> None:
    # Access rules name callers by their certificate: the two sidecars enroll with join tokens and talk mTLS.
    with (
        mtls_agent(tmp_path, control_plane.address, "researcher") as researcher,
        mtls_agent(tmp_path, control_plane.address, "planner") as planner,
        grpc.insecure_channel(f"127.0.0.1:{planner.ports.egress_grpc}") as egress,
    ):
        wait_for(functools.partial(one_healthy, planner, "agent/researcher/v1"), what="researcher healthy")
        wait_for(lambda: bool(search(messages, egress).model), what="planner reaches the researcher")
        apply(
            control_plane,
            tmp_path,
            {
                "apiVersion": "agentmesh.io/v1",
                "kind": "AccessPolicy",
                "metadata": {"name": "researcher-access"},
                "spec": {
                    "target": "researcher",
                    "default_action": "allow",
                    "rules": [{"name": "no-planner", "action": "deny", "from": {"agents": ["planner"]}}],
                },
            },
        )

        def denied() -> bool:
            try:
                search(messages, egress)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.PERMISSION_DENIED and "no-planner" in str(exc.details())
            return False

        wait_for(denied, what="planner denied by policy no-planner")
        policy = "researcher-access/no-planner"
        assert metric(
            researcher.ports.admin_url, "agentmesh_access_denied_total", source_agent="planner", policy=policy
        )
        assert researcher.sidecar is not None
        sidecar = researcher.sidecar
        planner_id = "spiffe://agentmesh.local/team/examples/agent/planner"
        # The access log line (written in batches, so it may trail the metric) names the policy and the caller.
        wait_for(
            lambda: f'"policy":"{policy}"' in sidecar.output() and f'"caller":"{planner_id}"' in sidecar.output(),
            what="access log line with the policy and the planner's SPIFFE ID",
        )


def test_ejection_when_an_instance_hangs(mesh: Any, messages: Messages) -> None:
    env, _v1, _v2, planner = mesh
    apply(
        env.control_plane,
        env.tmp_path,
        traffic(
            "researcher",
            split=[{"version": "v1", "weight": 100}],
            retries={
                "attempts": 3,
                "per_try_timeout": "500ms",
                "retry_on": ["unavailable", "deadline-exceeded"],
                "backoff": {"base_interval": "10ms", "max_interval": "50ms"},
            },
            outlier_detection={
                "consecutive_errors": 2,
                "interval": "1s",
                "base_ejection_time": "30s",
                "max_ejection_percent": 50,
            },
        ),
    )
    link = {"address": env.control_plane.address}
    with (
        agent_with_sidecar(env.tmp_path, "researcher", version="v1", control_plane=link) as second,
        grpc.insecure_channel(f"127.0.0.1:{planner.ports.egress_grpc}") as egress,
    ):
        wait_for(lambda: healthy_endpoints(planner, "agent/researcher/v1") == 2, what="two healthy v1 endpoints")
        # The second instance's sidecar freezes: it still holds its registration, but answers nothing.
        assert second.sidecar is not None
        second.sidecar.popen.send_signal(signal.SIGSTOP)
        try:
            failures = 0
            for _ in range(20):
                try:
                    search(messages, egress)
                except grpc.RpcError:
                    failures += 1
            # As Envoy: a per-try timeout is not retried (UNAVAILABLE); two consecutive ones eject the endpoint.
            assert failures == 2
            (ejected,) = [e for e in clusters(planner)["agent/researcher/v1"]["endpoints"] if e["times_ejected"]]
            assert ejected["address"] == second.ports.inbound_address
        finally:
            second.sidecar.popen.send_signal(signal.SIGCONT)
    assert metric(planner.ports.admin_url, "agentmesh_retries_total", destination_agent="researcher") == 0


def clusters(sidecar: AgentUnderTest) -> dict[str, Any]:
    with urllib.request.urlopen(f"{sidecar.ports.admin_url}/config_dump", timeout=5) as response:
        found: dict[str, Any] = json.load(response)["clusters"]
    return found


def one_healthy(sidecar: AgentUnderTest, cluster: str) -> bool:
    return healthy_endpoints(sidecar, cluster) == 1


def healthy_endpoints(sidecar: AgentUnderTest, cluster: str) -> int:
    return sum(1 for e in clusters(sidecar).get(cluster, {}).get("endpoints", []) if e["healthy"])


def test_sidecar_restarts_from_persisted_config_without_control_plane(mesh: Any, messages: Messages) -> None:
    env, _v1, _v2, planner = mesh
    apply(env.control_plane, env.tmp_path, traffic("researcher", split=[{"version": "v2", "weight": 100}]))
    with grpc.insecure_channel(f"127.0.0.1:{planner.ports.egress_grpc}") as egress:
        wait_for(lambda: versions(messages, egress, 5) == Counter({"v2": 5}), what="all traffic on v2")
    env.control_plane.process.stop()
    # The planner's sidecar restarts while the control plane is down: it serves from its saved config.
    assert planner.sidecar is not None
    planner.sidecar.stop()
    from tests.integration.mesh import start_sidecar

    planner.sidecar = start_sidecar("planner", planner.config, env.tmp_path, planner.ports)
    with grpc.insecure_channel(f"127.0.0.1:{planner.ports.egress_grpc}") as egress:
        wait_for(lambda: versions(messages, egress, 5) == Counter({"v2": 5}), what="v2 from the saved config")
    with urllib.request.urlopen(f"{planner.ports.admin_url}/config_dump", timeout=5) as response:
        dump = json.load(response)
    assert dump["xds"]["source"] == "disk"
    assert metric(planner.ports.admin_url, "agentmesh_xds_config_from_disk") == 1
