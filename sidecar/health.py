"""Active health checking of the untouched agent, like a Kubernetes probe with Envoy's thresholds.

`HealthProber` probes the agent every `health.interval` over HTTP (GET, 2xx or
3xx is healthy), TCP (a connection opens) or gRPC (grpc.health.v1 `Check`
answers SERVING); with no kind configured it uses gRPC for gRPC agents and TCP
for HTTP agents. The agent starts unhealthy, becomes healthy after
`healthy_threshold` consecutive successes and unhealthy again after
`unhealthy_threshold` consecutive failures. Each transition is logged with its
reason and reported to `on_change`, which the sidecar wires to its gRPC health
service, its registration and the `agentmesh_upstream_healthy` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config.bootstrap import HealthCheck, Upstream

log = logging.getLogger("agentmesh.sidecar.health")

USER_AGENT = "agentmesh-sidecar-health"


class HealthProber:
    """Probes one agent and keeps its health state."""

    def __init__(
        self,
        check: HealthCheck,
        upstream: Upstream,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._upstream = upstream
        self._on_change = on_change
        self._clock = clock
        parts = urlsplit(upstream.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 0
        self._secure = parts.scheme == "https"
        if check.http is not None:
            self.kind = "http"
        elif check.tcp:
            self.kind = "tcp"
        elif check.grpc is not None or upstream.protocol == "grpc":
            self.kind = "grpc"
        else:
            self.kind = "tcp"
        self._healthy = False
        self._successes = 0
        self._failures = 0
        self.last_error: str | None = None
        # clock() time the last probe finished, None before the first.
        self.last_probe_at: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None

    def __repr__(self) -> str:
        return f"HealthProber(kind={self.kind!r}, url={self._upstream.url!r}, healthy={self._healthy})"

    @property
    def healthy(self) -> bool:
        """True once `healthy_threshold` consecutive probes succeeded, until `unhealthy_threshold` fail."""
        return self._healthy

    async def probe_once(self) -> bool:
        """Runs one probe, updates the state and returns whether this probe succeeded."""
        try:
            async with asyncio.timeout(self._check.timeout):
                error = await self._probe()
        except TimeoutError:
            error = f"{self.kind} probe timed out after {self._check.timeout:g}s"
        self.last_probe_at = self._clock()
        self.last_error = error
        if error is None:
            self._successes += 1
            self._failures = 0
            if not self._healthy and self._successes >= self._check.healthy_threshold:
                self._transition(True, f"{self._successes} consecutive {self.kind} probe(s) succeeded")
        else:
            log.debug("%s probe of %s failed: %s", self.kind, self._upstream.url, error)
            self._failures += 1
            self._successes = 0
            if self._healthy and self._failures >= self._check.unhealthy_threshold:
                self._transition(False, f"{self._failures} consecutive {self.kind} probe(s) failed: {error}")
        return error is None

    async def run(self) -> None:
        """Probes every `interval` until cancelled; closes its connections on the way out."""
        try:
            while True:
                started = self._clock()
                await self.probe_once()
                await asyncio.sleep(max(0.0, self._check.interval - (self._clock() - started)))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Closes the probe's HTTP session or gRPC channel."""
        session, self._session = self._session, None
        channel, self._channel = self._channel, None
        if session is not None:
            await session.close()
        if channel is not None:
            await channel.close(None)

    def _transition(self, healthy: bool, reason: str) -> None:
        self._healthy = healthy
        log.warning("agent at %s is now %s: %s", self._upstream.url, "healthy" if healthy else "unhealthy", reason)
        if self._on_change is not None:
            try:
                self._on_change(healthy)
            except Exception:
                log.exception("health change callback failed")

    async def _probe(self) -> str | None:
        """None when healthy, else why not."""
        if self._check.http is not None:
            return await self._probe_http(self._check.http.path)
        if self.kind == "grpc":
            return await self._probe_grpc()
        return await self._probe_tcp()

    async def _probe_tcp(self) -> str | None:
        try:
            _, writer = await asyncio.open_connection(self._host, self._port)
        except OSError as exc:
            return f"cannot connect to {self._host}:{self._port}: {exc.strerror or exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    async def _probe_http(self, path: str) -> str | None:
        url = self._upstream.url + (path if path.startswith("/") else "/" + path)
        if self._session is None:
            # A fresh connection per probe (as the kubelet does), so a dead agent is seen at once;
            # TLS is not verified, as for Kubernetes HTTPS probes.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, ssl=False),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
            )
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if 200 <= response.status < 400:
                    return None
                return f"GET {path} answered HTTP {response.status}"
        except aiohttp.ClientConnectorError as exc:
            return f"GET {path}: cannot connect: {exc.os_error or exc}"
        except (aiohttp.ClientError, OSError) as exc:
            return f"GET {path} failed: {exc or type(exc).__name__}"

    async def _probe_grpc(self) -> str | None:
        service = self._check.grpc.service if self._check.grpc is not None else ""
        if self._channel is None:
            target = f"{self._host}:{self._port}" if ":" not in self._host else f"[{self._host}]:{self._port}"
            backoff_ms = max(100, int(self._check.interval * 1000))
            # Reconnect at least once per interval, so a restarted agent is seen by the next probes.
            options = (
                ("grpc.initial_reconnect_backoff_ms", min(backoff_ms, 1000)),
                ("grpc.min_reconnect_backoff_ms", min(backoff_ms, 1000)),
                ("grpc.max_reconnect_backoff_ms", backoff_ms),
                ("grpc.primary_user_agent", USER_AGENT),
            )
            if self._secure:
                credentials = grpc.ssl_channel_credentials()
                self._channel = grpc.aio.secure_channel(target, credentials, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(target, options=options)
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._check.timeout)
        except grpc.aio.AioRpcError as exc:
            return f"grpc.health.v1 Check({service!r}) failed: {exc.code().name}: {exc.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"grpc.health.v1 Check({service!r}) answered {status}"
        return None
