"""The translation: one policy set plus the registry view in, every xDS resource out.

Pure (no grpc, no sqlite, no clock): the same inputs give the same resources,
in the same order. For each registered agent: a Cluster and a
ClusterLoadAssignment per version, a RouteConfiguration `agent/<name>`, a
proxyless Listener `<name>` and the inbound Listener `inbound/<name>`. For each
service some agent implements: a Cluster and assignment `service/<Service>`
over every implementation, a RouteConfiguration and a Listener `<Service>`.

A version cluster whose instances all accept mutual TLS carries a TLS
transport socket naming the SPIFFE ID its endpoints must prove (tls.py; the
trust domain is the control plane's). A service whose implementations are
reached over mTLS routes over the implementing agents' version clusters
(weighted by instance count), so each hop checks its own agent's identity,
instead of one `service/<Service>` cluster that could expect only one.

Policies for targets that are not registered produce nothing until they
register. Whatever the translation had to leave out or drop is listed in
`Resources.notes`, so the caller can log it. The result is consistent by
construction: every route's cluster, every EDS cluster's assignment and every
RDS name exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId
from control_plane.policy.model import (
    MESH_WIDE,
    AccessPolicy,
    AgentConfig,
    Policy,
    TrafficPolicy,
    TrafficPolicySpec,
    is_service_name,
)
from control_plane.translate._xds import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    agent_cluster_name,
    agent_route_name,
    inbound_listener_name,
    service_cluster_name,
    service_route_name,
)
from control_plane.translate.clusters import eds_cluster
from control_plane.translate.endpoints import load_assignment
from control_plane.translate.listeners import api_listener, inbound_listener
from control_plane.translate.rbac import AgentAccess
from control_plane.translate.routes import agent_route_config, service_route_config
from control_plane.translate.tls import cluster_peers, upstream_tls_provider
from control_plane.translate.view import MeshView

# The order a consumer should receive types in (Envoy's "make before break" ordering for ADS).
TYPE_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)


def _frozen(items: dict[str, Message]) -> Mapping[str, Message]:
    return MappingProxyType(dict(sorted(items.items())))


@dataclass(frozen=True)
class Resources:
    """Every xDS resource of one translation, by type and by name (sorted by name)."""

    listeners: Mapping[str, listener_pb2.Listener] = field(default_factory=dict)
    routes: Mapping[str, route_pb2.RouteConfiguration] = field(default_factory=dict)
    clusters: Mapping[str, cluster_pb2.Cluster] = field(default_factory=dict)
    endpoints: Mapping[str, endpoint_pb2.ClusterLoadAssignment] = field(default_factory=dict)
    # What had to be left out or adjusted, for the operator's log.
    notes: tuple[str, ...] = ()
    # Cluster name -> the SPIFFE ID its endpoints prove, for the clusters reached over mutual TLS.
    peers: Mapping[str, SpiffeId] = field(default_factory=dict)

    def by_type_url(self) -> dict[str, Mapping[str, Message]]:
        """type URL -> {resource name -> message}, in TYPE_ORDER."""
        mapping: dict[str, Mapping[str, Message]] = {
            CLUSTER_TYPE: self.clusters,
            ENDPOINT_TYPE: self.endpoints,
            LISTENER_TYPE: self.listeners,
            ROUTE_TYPE: self.routes,
        }
        return mapping

    def __getitem__(self, type_url: str) -> Mapping[str, Message]:
        try:
            return self.by_type_url()[type_url]
        except KeyError:
            raise KeyError(f"not an xDS resource type this translation produces: {type_url}") from None

    def __iter__(self) -> Iterator[tuple[str, str, Message]]:
        """(type URL, name, message) for every resource, in TYPE_ORDER then name order."""
        for type_url, resources in self.by_type_url().items():
            for name, message in resources.items():
                yield type_url, name, message


class _Policies:
    """The policy set by (kind, target)."""

    def __init__(self, policies: Iterable[Policy], notes: list[str]) -> None:
        # When two of one kind share a target (the store refuses that), the first by name wins.
        self._by_target: dict[tuple[str, str], Policy] = {}
        for policy in sorted(policies, key=lambda p: p.ref):
            key = (policy.kind, policy.spec.target)
            first = self._by_target.setdefault(key, policy)
            if first is not policy:
                notes.append(f"{policy.ref} ignored: {first.ref} already targets {key[1]}")

    def traffic(self, target: str) -> TrafficPolicySpec | None:
        policy = self._by_target.get(("TrafficPolicy", target))
        return policy.spec if isinstance(policy, TrafficPolicy) else None

    def traffic_name(self, target: str) -> str:
        policy = self._by_target.get(("TrafficPolicy", target))
        return policy.metadata.name if policy is not None else ""

    def access(self, target: str) -> AgentAccess | None:
        """The agent's own AccessPolicy and the mesh-wide one, which every agent enforces."""
        own = self._by_target.get(("AccessPolicy", target))
        mesh_wide = self._by_target.get(("AccessPolicy", MESH_WIDE))
        return AgentAccess.of(
            own if isinstance(own, AccessPolicy) else None,
            mesh_wide if isinstance(mesh_wide, AccessPolicy) else None,
        )

    def config(self, target: str) -> Mapping[str, str]:
        policy = self._by_target.get(("AgentConfig", target))
        return policy.spec.values if isinstance(policy, AgentConfig) else {}

    def items(self) -> list[tuple[str, Policy]]:
        """(target, policy) for every policy in use."""
        return [(target, policy) for (_, target), policy in self._by_target.items()]


def translate(policies: Iterable[Policy], mesh: MeshView, *, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Resources:
    """Builds every xDS resource for `policies` (one version of the policy set) over the registered agents."""
    notes: list[str] = []
    index = _Policies(policies, notes)
    listeners: dict[str, Message] = {}
    routes: dict[str, Message] = {}
    clusters: dict[str, Message] = {}
    endpoints: dict[str, Message] = {}
    peers = cluster_peers(mesh.agents, trust_domain, notes)

    for agent in mesh.agents.values():
        spec = index.traffic(agent.name)
        for version in sorted(agent.versions):
            name = agent_cluster_name(agent.name, version)
            cluster = eds_cluster(name, spec)
            if name in peers:
                cluster.transport_socket.CopyFrom(upstream_tls_provider(peers[name]))
            clusters[name] = cluster
            endpoints[name] = load_assignment(name, agent.versions[version], notes)
        policy_name = index.traffic_name(agent.name)
        routes[agent_route_name(agent.name)] = agent_route_config(agent, spec, policy_name, notes)
        listeners[agent.name] = api_listener(agent.name, agent_route_name(agent.name))
        listeners[inbound_listener_name(agent.name)] = inbound_listener(
            agent, index.access(agent.name), index.config(agent.name), trust_domain=trust_domain
        )

    for service in mesh.services:
        implementers = mesh.implementers(service)
        spec = index.traffic(service)
        by_agent = any(agent_cluster_name(a.name, v) in peers for a in implementers for v in a.versions)
        if not by_agent:
            name = service_cluster_name(service)
            clusters[name] = eds_cluster(name, spec)
            endpoints[name] = load_assignment(name, [i for agent in implementers for i in agent.instances], notes)
        policy_name = index.traffic_name(service)
        routes[service_route_name(service)] = service_route_config(
            service, implementers, spec, policy_name, notes, by_agent=by_agent
        )
        listeners[service] = api_listener(service, service_route_name(service))

    for target, policy in index.items():
        if target == MESH_WIDE:
            continue
        known = target in mesh.services if is_service_name(target) else target in mesh.agents
        if not known:
            notes.append(f"{policy.ref} waits: {target} is not registered")

    return Resources(
        listeners=_frozen(listeners),
        routes=_frozen(routes),
        clusters=_frozen(clusters),
        endpoints=_frozen(endpoints),
        notes=tuple(notes),
        peers=MappingProxyType(dict(sorted(peers.items()))),
    )
