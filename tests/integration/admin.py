"""The control plane's admin API from integration tests: apply policy fast, and see who ACKed what.

The CLI is the user's way in; tests that apply many versions, or poll the
sync state, call `agentmesh.v1.ControlPlane` in-process instead of starting
a CLI process each time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import yaml

from agentmesh.v1 import control_pb2, control_pb2_grpc
from tests.integration.controlplane import TOKEN

CREDENTIALS = (("authorization", f"Bearer {TOKEN}"),)
API_VERSION = "agentmesh.io/v1"


def document(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


class Admin:
    """A channel to one control plane's admin API; `close()` it."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = control_pb2_grpc.ControlPlaneStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def apply(self, documents: Iterable[dict[str, Any]], *, prune: bool = False, message: str = "") -> int:
        """Stores the documents as one new policy version (the whole set with `prune`); returns the version."""
        content = yaml.safe_dump_all(list(documents))
        change: control_pb2.PolicyChange = self._stub.ApplyPolicies(
            control_pb2.ApplyPoliciesRequest(
                files=[control_pb2.PolicyFile(name="tests.yaml", content=content)],
                author="tests",
                message=message,
                prune=prune,
            ),
            metadata=CREDENTIALS,
            timeout=30,
        )
        return int(change.version)

    def agents(self) -> control_pb2.ListAgentsResponse:
        listed: control_pb2.ListAgentsResponse = self._stub.ListAgents(
            control_pb2.ListAgentsRequest(), metadata=CREDENTIALS, timeout=5
        )
        return listed

    def healthy_instances(self, agent: str) -> dict[str, int]:
        """Healthy registered instances of `agent`, by version."""
        return {
            version.version: healthy
            for listed in self.agents().agents
            if listed.name == agent
            for version in listed.versions
            if (healthy := sum(1 for i in version.instances if i.healthy))
        }

    def reported_since(self, when: float) -> set[str]:
        """Addresses of the instances whose last report came after `when` (seconds since the epoch)."""
        return {
            instance.address
            for agent in self.agents().agents
            for version in agent.versions
            for instance in version.instances
            if instance.last_report.ToNanoseconds() / 1e9 > when
        }

    def proxy_status(self) -> control_pb2.ProxyStatusResponse:
        status: control_pb2.ProxyStatusResponse = self._stub.ProxyStatus(
            control_pb2.ProxyStatusRequest(), metadata=CREDENTIALS, timeout=5
        )
        return status

    def acked(self, node_ids: Iterable[str], version: int) -> bool:
        """Each node is connected, has nothing waiting for an ACK, and ACKed policy version `version` or later."""
        proxies = {p.node_id: p for p in self.proxy_status().proxies}
        for node in node_ids:
            proxy = proxies.get(node)
            if proxy is None or not proxy.resources:
                return False
            if any(r.status != "SYNCED" or r.acked_version != r.sent_version for r in proxy.resources):
                return False
            if max(policy_version(r.acked_version) for r in proxy.resources) < version:
                return False
        return True


def policy_version(xds_version: str) -> int:
    """The policy version inside an xDS version string (`p3-g7` -> 3); -1 when there is none."""
    head = xds_version.partition("-")[0]
    return int(head[1:]) if head.startswith("p") and head[1:].isdigit() else -1


def node_id(agent: str, inbound_address: str) -> str:
    """A sidecar's xDS node id."""
    return f"{agent}~{inbound_address}"
