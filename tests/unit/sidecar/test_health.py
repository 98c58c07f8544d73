"""HealthProber against real HTTP, TCP and gRPC agents on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc.aio
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from sidecar.config.bootstrap import GrpcProbe, HealthCheck, HttpProbe, Upstream
from sidecar.health import HealthProber

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HttpAgent:
    status: int = 200
    slow: bool = False
    paths: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if self.slow:
            await self.release.wait()
        return web.Response(status=self.status, headers={"Location": "/elsewhere"} if 300 <= self.status < 400 else {})

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def http_agent() -> AsyncIterator[HttpAgent]:
    agent = HttpAgent()
    app = web.Application()
    app.router.add_get("/{tail:.*}", agent.handle)
    agent.runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await agent.runner.setup()
    site = web.TCPSite(agent.runner, "127.0.0.1", 0)
    await site.start()
    agent.url = f"http://127.0.0.1:{agent.runner.addresses[0][1]}"
    yield agent
    await agent.stop()


@dataclass
class GrpcAgent:
    servicer: health_aio.HealthServicer
    server: grpc.aio.Server
    url: str


@pytest.fixture
async def grpc_agent() -> AsyncIterator[GrpcAgent]:
    servicer = health_aio.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield GrpcAgent(servicer, server, f"http://127.0.0.1:{port}")
    await server.stop(None)


def check(**options: object) -> HealthCheck:
    options.setdefault("interval", 1.0)
    options.setdefault("timeout", 0.5)
    return HealthCheck(**options)  # type: ignore[arg-type]


@pytest.fixture
async def probers() -> AsyncIterator[list[HealthProber]]:
    made: list[HealthProber] = []
    yield made
    for prober in made:
        await prober.aclose()


def prober_for(
    made: list[HealthProber], health_check: HealthCheck, url: str, protocol: str = "http"
) -> tuple[HealthProber, list[bool]]:
    changes: list[bool] = []
    prober = HealthProber(health_check, Upstream(url=url, protocol=protocol), on_change=changes.append)  # type: ignore[arg-type]
    made.append(prober)
    return prober, changes


# --- which probe -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "protocol", "kind"),
    [
        ({}, "http", "tcp"),
        ({}, "grpc", "grpc"),
        ({"http": HttpProbe()}, "grpc", "http"),
        ({"tcp": True}, "grpc", "tcp"),
        ({"grpc": GrpcProbe(service="x")}, "http", "grpc"),
    ],
)
def test_probe_kind(options: dict[str, object], protocol: str, kind: str) -> None:
    prober = HealthProber(check(**options), Upstream(url="http://127.0.0.1:8080", protocol=protocol))  # type: ignore[arg-type]
    assert prober.kind == kind
    assert not prober.healthy
    assert prober.last_error is None


# --- HTTP ------------------------------------------------------------------------------


async def test_http_thresholds(http_agent: HttpAgent, probers: list[HealthProber]) -> None:
    prober, changes = prober_for(
        probers, check(http=HttpProbe(path="/ready"), healthy_threshold=2, unhealthy_threshold=2), http_agent.url
    )
    assert await prober.probe_once()
    assert not prober.healthy  # one success is not yet two
    assert await prober.probe_once()
    assert prober.healthy
    assert http_agent.paths == ["/ready", "/ready"]

    http_agent.status = 500
    assert not await prober.probe_once()
    assert prober.healthy  # one failure is not yet two
    assert prober.last_error == "GET /ready answered HTTP 500"
    http_agent.status = 204
    assert await prober.probe_once()
    assert prober.last_error is None
    http_agent.status = 503
    assert not await prober.probe_once()
    assert not await prober.probe_once()
    assert not prober.healthy
    assert changes == [True, False]


async def test_http_redirect_counts_as_healthy(http_agent: HttpAgent, probers: list[HealthProber]) -> None:
    http_agent.status = 302
    prober, changes = prober_for(probers, check(http=HttpProbe()), http_agent.url)
    assert await prober.probe_once()
    assert prober.healthy
    assert http_agent.paths == ["/healthz"]  # the redirect was not followed
    assert changes == [True]


async def test_http_slow_answer_is_a_failure(http_agent: HttpAgent, probers: list[HealthProber]) -> None:
    http_agent.slow = True
    prober, _ = prober_for(probers, check(http=HttpProbe(), interval=0.2, timeout=0.1), http_agent.url)
    assert not await prober.probe_once()
    assert prober.last_error == "http probe timed out after 0.1s"


async def test_http_agent_going_away(
    http_agent: HttpAgent, probers: list[HealthProber], caplog: pytest.LogCaptureFixture
) -> None:
    prober, changes = prober_for(probers, check(http=HttpProbe(), unhealthy_threshold=1), http_agent.url)
    with caplog.at_level(logging.WARNING, logger="agentmesh.sidecar.health"):
        assert await prober.probe_once()
        await http_agent.stop()
        assert not await prober.probe_once()
    assert not prober.healthy
    assert prober.last_error is not None and "cannot connect" in prober.last_error
    assert changes == [True, False]
    messages = [r.getMessage() for r in caplog.records if r.name == "agentmesh.sidecar.health"]
    assert len(messages) == 2
    assert "is now healthy" in messages[0]
    assert "is now unhealthy" in messages[1] and "cannot connect" in messages[1]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "agentmesh.sidecar.health")


# --- TCP -------------------------------------------------------------------------------


async def test_tcp_probe(probers: list[HealthProber]) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    prober, changes = prober_for(probers, check(tcp=True, unhealthy_threshold=1), f"http://127.0.0.1:{port}")
    try:
        assert await prober.probe_once()
        assert prober.healthy
    finally:
        server.close()
        await server.wait_closed()
    assert not await prober.probe_once()
    assert not prober.healthy
    assert prober.last_error is not None and f"127.0.0.1:{port}" in prober.last_error
    assert changes == [True, False]


async def test_never_healthy_agent_reports_no_transition(probers: list[HealthProber]) -> None:
    prober, changes = prober_for(probers, check(), f"http://127.0.0.1:{free_port()}")
    for _ in range(3):
        assert not await prober.probe_once()
    assert not prober.healthy
    assert changes == []
    assert prober.last_error is not None and "cannot connect" in prober.last_error


# --- gRPC ------------------------------------------------------------------------------


async def test_grpc_probe_reads_the_serving_status(grpc_agent: GrpcAgent, probers: list[HealthProber]) -> None:
    await grpc_agent.servicer.set("testing.things.v1.Things", SERVING)
    prober, changes = prober_for(
        probers, check(grpc=GrpcProbe(service="testing.things.v1.Things"), unhealthy_threshold=1), grpc_agent.url
    )
    assert await prober.probe_once()
    assert prober.healthy
    await grpc_agent.servicer.set("testing.things.v1.Things", NOT_SERVING)
    assert not await prober.probe_once()
    assert prober.last_error == "grpc.health.v1 Check('testing.things.v1.Things') answered NOT_SERVING"
    assert changes == [True, False]


async def test_grpc_probe_of_an_unknown_service(grpc_agent: GrpcAgent, probers: list[HealthProber]) -> None:
    prober, _ = prober_for(probers, check(grpc=GrpcProbe(service="nope")), grpc_agent.url)
    assert not await prober.probe_once()
    assert prober.last_error is not None and "NOT_FOUND" in prober.last_error


async def test_grpc_is_the_default_for_grpc_agents_and_sees_them_go(
    grpc_agent: GrpcAgent, probers: list[HealthProber]
) -> None:
    # The overall health ("") is SERVING by default in grpc's servicer.
    prober, changes = prober_for(probers, check(unhealthy_threshold=1), grpc_agent.url, protocol="grpc")
    assert await prober.probe_once()
    await grpc_agent.server.stop(None)
    assert not await prober.probe_once()
    assert prober.last_error is not None and "UNAVAILABLE" in prober.last_error
    assert changes == [True, False]


# --- the loop --------------------------------------------------------------------------


async def test_run_follows_the_agent_until_cancelled(http_agent: HttpAgent) -> None:
    seen: asyncio.Queue[bool] = asyncio.Queue()
    prober = HealthProber(
        check(http=HttpProbe(), interval=0.05, timeout=0.05),
        Upstream(url=http_agent.url),
        on_change=seen.put_nowait,
    )
    task = asyncio.create_task(prober.run())
    try:
        assert await asyncio.wait_for(seen.get(), 10) is True
        http_agent.status = 500
        assert await asyncio.wait_for(seen.get(), 10) is False
        http_agent.status = 200
        assert await asyncio.wait_for(seen.get(), 10) is True
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert prober.last_probe_at is not None


async def test_a_failing_callback_does_not_stop_probing(
    http_agent: HttpAgent, probers: list[HealthProber], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(healthy: bool) -> None:
        raise RuntimeError("metrics exploded")

    prober = HealthProber(
        check(http=HttpProbe(), unhealthy_threshold=1), Upstream(url=http_agent.url), on_change=broken
    )
    probers.append(prober)
    with caplog.at_level(logging.ERROR, logger="agentmesh.sidecar.health"):
        assert await prober.probe_once()
    assert prober.healthy
    assert any("callback failed" in r.getMessage() for r in caplog.records)
    http_agent.status = 500
    assert not await prober.probe_once()
    assert not prober.healthy


async def test_injected_clock_stamps_probes(http_agent: HttpAgent, probers: list[HealthProber]) -> None:
    ticks = iter(range(100, 200))
    prober = HealthProber(check(http=HttpProbe()), Upstream(url=http_agent.url), clock=lambda: float(next(ticks)))
    probers.append(prober)
    await prober.probe_once()
    assert prober.last_probe_at == 100.0
    assert "kind='http'" in repr(prober)
