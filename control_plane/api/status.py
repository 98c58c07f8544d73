"""What the admin API reports about the running mesh: registered agents and the xDS sync state of proxies.

`agent_statuses` turns registry instances into `agentmesh.v1.AgentStatus`
(versions → instances with health and last report, services, and the skills
of the most recently registered manifest); `proxy_syncs` merges the open ADS
streams with the ACK tracker into `agentmesh.v1.ProxySync` rows, one per node,
with SYNCED / STALE / NACKED / NOT_SENT per resource type (what
`agentmesh proxy-status` shows, like `istioctl proxy-status`).

Reads plain values only; the admin service calls these on the event-loop
thread, where the registry and the tracker live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from agentmesh.v1 import control_pb2, manifest_pb2
from control_plane.registry.instances import AgentInstance
from control_plane.xds.ack_tracker import AckTracker, SyncStatus
from control_plane.xds.ads_server import ConnectedNode
from control_plane.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, TYPE_LABELS

# The order of the columns of `agentmesh proxy-status`, as istioctl shows them.
SYNC_TYPES = (LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from wall-clock seconds since the epoch."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1_000_000_000))
    return stamp


def datetime_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


# --- agents -------------------------------------------------------------------------------------------------------


def agent_statuses(
    instances: Iterable[AgentInstance], *, wall_time: Callable[[float], float]
) -> list[control_pb2.AgentStatus]:
    """One AgentStatus per agent, by name; `wall_time` turns registry-clock seconds into wall-clock seconds."""
    by_agent: dict[str, list[AgentInstance]] = {}
    for instance in instances:
        by_agent.setdefault(instance.agent, []).append(instance)
    return [_agent_status(name, by_agent[name], wall_time) for name in sorted(by_agent)]


def _agent_status(
    name: str, instances: list[AgentInstance], wall_time: Callable[[float], float]
) -> control_pb2.AgentStatus:
    status = control_pb2.AgentStatus(
        name=name,
        team=next((i.team for i in instances if i.team), ""),
        services=sorted({service for i in instances for service in i.services}),
    )
    versions: dict[str, list[AgentInstance]] = {}
    for instance in instances:
        versions.setdefault(instance.version, []).append(instance)
    for version in sorted(versions):
        status.versions.add(
            version=version,
            instances=[
                control_pb2.AgentInstanceStatus(
                    instance_id=i.instance_id,
                    address=i.address,
                    healthy=i.healthy,
                    last_report=timestamp(wall_time(i.last_heartbeat)),
                    zone=i.zone,
                )
                for i in sorted(versions[version], key=lambda i: i.address)
            ],
        )
    manifest = _newest_manifest(instances)
    if manifest is not None:
        status.skills.extend(manifest.skills)
    return status


def _newest_manifest(instances: list[AgentInstance]) -> manifest_pb2.Manifest | None:
    """The manifest of the most recently registered instance that sent a readable one (ties: highest version)."""
    for instance in sorted(instances, key=lambda i: (i.registered_at, i.version), reverse=True):
        manifest = instance.decoded_manifest()
        if manifest is not None:
            return manifest
    return None


# --- proxies ------------------------------------------------------------------------------------------------------


def proxy_syncs(nodes: Iterable[ConnectedNode], tracker: AckTracker) -> list[control_pb2.ProxySync]:
    """One row per connected node id (its first stream when it has several), by node id."""
    first: dict[str, ConnectedNode] = {}
    for node in nodes:
        if node.node_id not in first or node.connected_since < first[node.node_id].connected_since:
            first[node.node_id] = node
    return [_proxy_sync(first[node_id], tracker) for node_id in sorted(first)]


def _proxy_sync(node: ConnectedNode, tracker: AckTracker) -> control_pb2.ProxySync:
    sync = control_pb2.ProxySync(
        node_id=node.node_id,
        cluster=node.cluster,
        user_agent=node.user_agent,
        connected_since=timestamp(node.connected_since),
    )
    for type_url in SYNC_TYPES:
        state = tracker.state(node.node_id, type_url)
        nack = state.last_nack
        sync.resources.add(
            type=TYPE_LABELS[type_url],
            status=state.status.value,
            sent_version=state.sent_version or "",
            acked_version=state.acked_version or "",
            error=nack.message if nack is not None and state.status is SyncStatus.NACKED else "",
        )
    return sync
