"""AdminServer: started for real on a loopback port, every endpoint fetched over HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import aiohttp
import pytest
from google.protobuf import any_pb2, json_format
from google.protobuf.duration_pb2 import Duration
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from agentmesh.v1 import manifest_pb2
from sidecar.admin import AdminServer
from sidecar.config.bootstrap import AgentIdentity
from sidecar.stats import SidecarStats

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CARD_URL = "127.0.0.1:15006"


@dataclass(frozen=True)
class Limits:
    calls: int


@dataclass
class State:
    """What the sidecar would publish; tests change it between requests."""

    ready: tuple[bool, str] = (True, "")
    config: Mapping[str, object] = field(default_factory=lambda: {"agent": {"name": "scribe"}, "listeners": [1, 2]})
    fail: bool = False

    def readiness(self) -> tuple[bool, str]:
        if self.fail:
            raise RuntimeError("health checker gone")
        return self.ready

    def config_dump(self) -> Mapping[str, object]:
        if self.fail:
            raise RuntimeError("snapshot unavailable")
        return self.config


@pytest.fixture
def stats() -> SidecarStats:
    stats = SidecarStats(agent="scribe", version="v2", team="writers")
    route = stats.route(
        direction="inbound",
        source_agent="planner",
        destination_agent="scribe",
        destination_version="v2",
        rpc_method="/scribe.v1.Scribe/Draft",
    )
    route.start()
    route.finish("OK", 0.3, trace_id=TRACE_ID)
    return stats


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
async def server(
    stats: SidecarStats, state: State, scribe_manifest: manifest_pb2.Manifest
) -> AsyncIterator[AdminServer]:
    server = AdminServer(
        host="127.0.0.1",
        port=0,
        stats=stats,
        manifest=lambda: scribe_manifest,
        card_url=CARD_URL,
        config_dump=state.config_dump,
        readiness=state.readiness,
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http(server: AdminServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
        yield session


async def test_start_reports_the_bound_port(server: AdminServer) -> None:
    assert server.port > 0


async def test_healthz(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
        assert (await response.text()).strip() == "ok"


async def test_readyz_ready_and_not_ready(http: aiohttp.ClientSession, state: State) -> None:
    async with http.get("/readyz") as response:
        assert response.status == 200
        assert (await response.text()).strip() == "ready"

    state.ready = (False, "agent health check failing: connection refused")
    async with http.get("/readyz") as response:
        assert response.status == 503
        assert (await response.text()).strip() == "agent health check failing: connection refused"


async def test_readyz_when_the_check_raises(http: aiohttp.ClientSession, state: State) -> None:
    state.fail = True
    async with http.get("/readyz") as response:
        assert response.status == 503
        assert "health checker gone" in await response.text()


async def test_metrics_prometheus_text_by_default(http: aiohttp.ClientSession) -> None:
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body = await response.text()
    families = {f.name: f for f in parse_text(body)}
    (sample,) = [s for s in families["agentmesh_requests"].samples if s.name == "agentmesh_requests_total"]
    assert sample.labels["grpc_code"] == "OK"
    assert sample.value == 1
    assert TRACE_ID not in body


async def test_metrics_openmetrics_with_exemplars(http: aiohttp.ClientSession) -> None:
    # What Prometheus sends when it prefers OpenMetrics.
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
    async with http.get("/metrics", headers={"Accept": accept}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        body = await response.text()
    assert body.rstrip().endswith("# EOF")
    (histogram,) = [f for f in parse_openmetrics(body) if f.name == "agentmesh_request_duration_seconds"]
    exemplars = [s.exemplar for s in histogram.samples if s.exemplar is not None]
    assert [e.labels["trace_id"] for e in exemplars] == [TRACE_ID]


async def test_config_dump_is_pretty_json(http: aiohttp.ClientSession, state: State) -> None:
    async with http.get("/config_dump") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.text()
    assert json.loads(body) == {"agent": {"name": "scribe"}, "listeners": [1, 2]}
    assert "\n  " in body  # indented


async def test_config_dump_stringifies_odd_values(http: aiohttp.ClientSession, state: State) -> None:
    state.config = {
        "timeout": 2.5,
        "path": Path("/etc/agent.yaml"),
        "identity": AgentIdentity(name="scribe"),
        "cluster": Duration(seconds=3),
        "any": any_pb2.Any(type_url="type.googleapis.com/nowhere.Unknown", value=b"\x08\x01"),
        "limits": Limits(calls=4),
        "tags": frozenset({"b", "a"}),
        "view": MappingProxyType({"k": "v"}),
        "blob": object(),
    }
    async with http.get("/config_dump") as response:
        assert response.status == 200
        dumped = await response.json()
    assert dumped["timeout"] == 2.5
    assert dumped["path"] == "/etc/agent.yaml"
    assert dumped["identity"]["name"] == "scribe"
    assert dumped["cluster"] == "3s"
    assert dumped["any"]["@type"] == "google.protobuf.Any"
    assert dumped["limits"] == {"calls": 4}
    assert dumped["tags"] == ["a", "b"]
    assert dumped["view"] == {"k": "v"}
    assert dumped["blob"].startswith("<object object")


async def test_manifest_as_proto3_json(http: aiohttp.ClientSession, scribe_manifest: manifest_pb2.Manifest) -> None:
    async with http.get("/manifest") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.text()
    parsed = json_format.Parse(body, manifest_pb2.Manifest(), ignore_unknown_fields=True)
    # proto3 JSON keeps everything but descriptor options of extensions unknown here (buf.validate).
    assert parsed.skills == scribe_manifest.skills
    assert (parsed.name, parsed.version, parsed.team, parsed.slo) == ("scribe", "v2", "writers", scribe_manifest.slo)
    assert [f.name for f in parsed.descriptors.file] == [f.name for f in scribe_manifest.descriptors.file]


@pytest.mark.parametrize("accept", ["application/x-protobuf", "application/json;q=0.1, application/protobuf"])
async def test_manifest_as_binary_is_exact(
    http: aiohttp.ClientSession, scribe_manifest: manifest_pb2.Manifest, accept: str
) -> None:
    async with http.get("/manifest", headers={"Accept": accept}) as response:
        assert response.status == 200
        assert response.content_type == "application/x-protobuf"
        body = await response.read()
    assert manifest_pb2.Manifest.FromString(body) == scribe_manifest


@pytest.mark.parametrize("path", ["/.well-known/agent-card.json", "/.well-known/agent.json"])
async def test_agent_card(http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(path) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        card = await response.json()
    assert card["name"] == "scribe"
    assert card["url"] == CARD_URL
    assert card["preferredTransport"] == "GRPC"
    assert [s["id"] for s in card["skills"]] == [
        "/scribe.v1.Scribe/Draft",
        "/scribe.v1.Scribe/StreamDraft",
        "/scribe.v1.Scribe/Lookup",
    ]


async def test_index_lists_endpoints(http: aiohttp.ClientSession) -> None:
    async with http.get("/") as response:
        assert response.status == 200
        endpoints = (await response.json())["endpoints"]
    assert {"/healthz", "/readyz", "/metrics", "/config_dump", "/manifest", "/.well-known/agent-card.json"} <= set(
        endpoints
    )


async def test_unknown_path_is_404_json(http: aiohttp.ClientSession) -> None:
    async with http.get("/nope") as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert await response.json() == {"error": "Not Found", "status": 404, "path": "/nope"}


async def test_wrong_method_is_405_json(http: aiohttp.ClientSession) -> None:
    async with http.post("/metrics", data=b"x") as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"].split(",")
        assert (await response.json())["status"] == 405


async def test_failing_callable_is_500_json_and_server_keeps_serving(http: aiohttp.ClientSession, state: State) -> None:
    state.fail = True
    async with http.get("/config_dump") as response:
        assert response.status == 500
        error = await response.json()
    assert error["error"] == "RuntimeError: snapshot unavailable"

    async with http.get("/healthz") as response:
        assert response.status == 200


async def test_garbage_request_does_not_stop_the_server(server: AdminServer, http: aiohttp.ClientSession) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    await writer.drain()
    reply = await reader.read(1024)
    writer.close()
    await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.") or reply == b""

    async with http.get("/healthz") as response:
        assert response.status == 200


async def test_port_in_use_raises_and_stop_is_idempotent(
    stats: SidecarStats, scribe_manifest: manifest_pb2.Manifest
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = AdminServer(
            host="127.0.0.1",
            port=taken.getsockname()[1],
            stats=stats,
            manifest=lambda: scribe_manifest,
            card_url=CARD_URL,
            config_dump=dict,
            readiness=lambda: (True, ""),
        )
        with pytest.raises(OSError):
            await server.start()
    await server.stop()
    await server.stop()


async def test_start_twice_is_refused(server: AdminServer) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()


async def test_stopped_server_refuses_connections(stats: SidecarStats, scribe_manifest: manifest_pb2.Manifest) -> None:
    server = AdminServer(
        host="127.0.0.1",
        port=0,
        stats=stats,
        manifest=lambda: scribe_manifest,
        card_url=CARD_URL,
        config_dump=dict,
        readiness=lambda: (True, ""),
    )
    port = await server.start()
    await server.stop()

    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
