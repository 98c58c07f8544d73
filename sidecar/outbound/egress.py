"""The egress path of one call, behind both egress listeners:

    route (agent or service, method, headers) → weighted cluster (canary)
    → cluster state (circuit breaker) → endpoint (balancer, outlier ejection)
    → attempt → retries (policy, budget, back-off, per-try timeout)

With a control plane, routes, clusters and endpoints come from the current
xDS snapshot, read once per call. Without one (or for a target it has no
route for), the static `targets` of agent.yaml are used and calls are not
retried. Metrics and the access log cover the whole call; each attempt gets
its own CLIENT span (sidecar/outbound/forward.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import grpc

from agentmesh.telemetry.logs import AccessRoute
from sidecar.config.snapshot import MeshSnapshot, RetryPolicy
from sidecar.contract import MethodContract
from sidecar.errors import MeshError, NoRoute, UpstreamTimeout, UpstreamUnavailable
from sidecar.outbound.endpoints import Attempt, ClusterState, ClusterStates
from sidecar.outbound.forward import Forwarder
from sidecar.outbound.retry import backoff, retry_reason, should_retry
from sidecar.outbound.router import select_route
from sidecar.outbound.split import pick_cluster
from sidecar.outbound.targets import Target, TargetDirectory
from sidecar.stats import RouteStats, SidecarStats

log = logging.getLogger("agentmesh.sidecar.outbound")

TARGET_HEADER = "x-agentmesh-target"
# Access-log shapes (destination, version, method) kept; destinations and methods may come from callers.
MAX_ACCESS_ROUTES = 1024


@dataclass
class Plan:
    """A resolved call: the method contract, where the first attempt goes, and how to retry."""

    path: str
    target: Target
    method: MethodContract
    cluster: ClusterState | None = None
    attempt: Attempt | None = None
    retry: RetryPolicy | None = None
    route_timeout: float | None = None
    # A retry-budget slot is held from the retry's start until its attempt ends.
    holding_retry: bool = False


@dataclass
class OutboundRecord:
    """What the access log and metrics say about one egress call, filled in as it resolves."""

    path: str
    requested: str
    destination: str = "unknown"
    version: str = "unknown"
    code: str = "OK"
    attempts: int = 0
    started: float = field(default_factory=time.perf_counter)
    stats: RouteStats | None = None


class Egress:
    def __init__(
        self,
        *,
        directory: TargetDirectory,
        forwarder: Forwarder,
        clusters: ClusterStates,
        mesh: Callable[[], MeshSnapshot],
        stats: SidecarStats,
        agent: str,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._directory = directory
        self._forwarder = forwarder
        self._clusters = clusters
        self._mesh = mesh
        self._stats = stats
        self._agent = agent
        self._rand = rand
        self._access_routes: dict[tuple[str, str, str], AccessRoute] = {}

    @contextlib.contextmanager
    def observed(self, path: str, headers: Mapping[str, str]) -> Iterator[OutboundRecord]:
        """Metrics and the access log of one egress call, whatever its outcome."""
        record = OutboundRecord(path, headers.get(TARGET_HEADER) or path.lstrip("/").partition("/")[0])
        try:
            yield record
        except MeshError as exc:
            record.code = exc.code.name
            raise
        except BaseException:
            if record.code == "OK":  # listeners set the code before they abort the call
                record.code = "CANCELLED"
            raise
        finally:
            elapsed = time.perf_counter() - record.started
            if record.stats is None:  # failed before a destination was known
                record.destination = record.requested
                self._start_stats(record)
            assert record.stats is not None
            trace_id = _trace_id(headers.get("traceparent", ""))
            record.stats.finish(record.code, elapsed, trace_id=trace_id or None)
            self._access_route(record.destination, record.version, path).log(
                self._agent,
                record.code,
                round(elapsed * 1000, 3),
                attempt=max(record.attempts, 1),
                trace_id=trace_id,
            )

    def _access_route(self, destination: str, version: str, path: str) -> AccessRoute:
        """The access line's constant part for one destination and method, formatted on first use."""
        key = (destination, version, path)
        route = self._access_routes.get(key)
        if route is None:
            route = AccessRoute(direction="outbound", destination=destination, version=version, method=path)
            if len(self._access_routes) >= MAX_ACCESS_ROUTES:
                self._access_routes.clear()  # callers made up many names: start over rather than grow
            self._access_routes[key] = route
        return route

    async def plan(self, record: OutboundRecord, headers: Mapping[str, str]) -> Plan:
        """Resolves route, cluster and first endpoint; the method contract comes from that endpoint."""
        agent = headers.get(TARGET_HEADER)
        target_name = agent or record.requested
        table = self._mesh().route_table(target_name)
        if table is None:
            target = await self._directory.static(record.path, agent)
            plan = Plan(record.path, target, target.method(record.path))
        else:
            route = select_route(table, target_name, record.path, headers)
            cluster = self._clusters.get(pick_cluster(route.action, headers, rand=self._rand))
            attempt, target = await self._attempt(cluster)
            plan = Plan(
                record.path,
                target,
                target.method(record.path),
                cluster,
                attempt,
                route.action.retry,
                route.action.timeout,
            )
        record.destination, record.version = plan.target.name, plan.target.version
        self._start_stats(record)
        return plan

    def _start_stats(self, record: OutboundRecord) -> None:
        record.stats = self._stats.route(
            direction="outbound",
            source_agent=self._agent,
            destination_agent=record.destination,
            destination_version=record.version,
            rpc_method=record.path,
        )
        record.stats.start()

    async def _attempt(self, cluster: ClusterState) -> tuple[Attempt, Target]:
        """Picks an endpoint and loads its contract; an unreachable endpoint counts as a failed attempt.

        Endpoints that failed here are not picked again for this call (the balancer
        is random, and would otherwise keep choosing a dead one before ejection).
        """
        failed: set[str] = set()
        for _ in range(2 * len(cluster.endpoints) + 1):
            attempt = cluster.start()
            address = attempt.endpoint.address
            if address in failed:
                attempt.finish(grpc.StatusCode.CANCELLED)  # not a result: says nothing about the endpoint
                continue
            try:
                return attempt, await self._directory.at(address)
            except NoRoute:
                attempt.finish(grpc.StatusCode.UNAVAILABLE)
                failed.add(address)
                if len(failed) >= len(cluster.endpoints):
                    break
        raise NoRoute(f"no endpoint of {cluster.name} answers (tried {', '.join(sorted(failed)) or 'none'})")

    async def unary(
        self, plan: Plan, record: OutboundRecord, request: bytes, metadata: Mapping[str, str], timeout: float | None
    ) -> bytes:
        deadline = _deadline(timeout, plan.route_timeout)
        while True:
            record.attempts += 1
            attempt_timeout, per_try = _attempt_timeout(plan.retry, deadline)
            try:
                reply = await self._forwarder.unary(
                    plan.target, plan.path, request, metadata=metadata, timeout=attempt_timeout
                )
            except MeshError as exc:
                self._finish(plan, exc.code)
                _raise_if_per_try_timeout(exc, per_try, attempt_timeout, plan)
                if not await self._retry(plan, record, exc, deadline):
                    raise
                continue
            except BaseException:
                self._finish(plan, grpc.StatusCode.CANCELLED)
                raise
            self._finish(plan, grpc.StatusCode.OK)
            return reply

    async def stream(
        self, plan: Plan, record: OutboundRecord, request: bytes, metadata: Mapping[str, str], timeout: float | None
    ) -> AsyncGenerator[bytes, None]:
        deadline = _deadline(timeout, plan.route_timeout)
        while True:
            record.attempts += 1
            attempt_timeout, per_try = _attempt_timeout(plan.retry, deadline)
            started = False
            stream = self._forwarder.stream(plan.target, plan.path, request, metadata=metadata, timeout=attempt_timeout)
            try:
                async with contextlib.aclosing(stream) as chunks:
                    async for chunk in chunks:
                        if not started:
                            started = True
                            self._finish(plan, grpc.StatusCode.OK)  # latency to the first message
                        yield chunk
            except MeshError as exc:
                self._finish(plan, exc.code)
                _raise_if_per_try_timeout(exc, per_try, attempt_timeout, plan)
                # Never retried once a message was passed on (Envoy: once the response started).
                if started or not await self._retry(plan, record, exc, deadline):
                    raise
                continue
            except BaseException:
                self._finish(plan, grpc.StatusCode.CANCELLED)
                raise
            self._finish(plan, grpc.StatusCode.OK)
            return

    @staticmethod
    def _finish(plan: Plan, code: grpc.StatusCode) -> None:
        if plan.attempt is not None:
            plan.attempt.finish(code)
        if plan.holding_retry and plan.cluster is not None:
            plan.holding_retry = False
            plan.cluster.release_retry()

    async def _retry(self, plan: Plan, record: OutboundRecord, error: MeshError, deadline: float | None) -> bool:
        """Decides on a retry, waits the back-off and moves the plan to a fresh endpoint."""
        policy, cluster = plan.retry, plan.cluster
        if policy is None or cluster is None:
            return False
        if not should_retry(policy, error.code, attempt=record.attempts, idempotent=True):
            return False
        pause = backoff(record.attempts, policy, self._rand)
        if deadline is not None and time.monotonic() + pause >= deadline:
            return False
        if not cluster.try_retry():
            log.info("retry budget of %s exhausted; not retrying %s", cluster.name, plan.path)
            return False
        plan.holding_retry = True
        self._stats.retry(record.destination, plan.path, retry_reason(error.code))
        try:
            await asyncio.sleep(pause)
            plan.attempt, plan.target = await self._attempt(cluster)
        except BaseException:
            plan.attempt = None
            self._finish(plan, grpc.StatusCode.CANCELLED)
            raise
        return True


def _raise_if_per_try_timeout(error: MeshError, per_try: bool, timeout: float | None, plan: Plan) -> None:
    """Envoy's reading of a per-try timeout: the upstream did not answer in time (HTTP 504, UNAVAILABLE
    to gRPC callers), which gRPC-status `retry_on` conditions never match, so it is not retried."""
    if per_try and isinstance(error, UpstreamTimeout):
        raise UpstreamUnavailable(
            f"per-try timeout ({timeout:.3g}s) expired calling {plan.target.name} at {plan.target.address}"
        ) from error


def _trace_id(traceparent: str) -> str:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`), or ""."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _deadline(caller: float | None, route: float | None) -> float | None:
    limits = [t for t in (caller, route) if t is not None]
    return time.monotonic() + min(limits) if limits else None


def _attempt_timeout(policy: RetryPolicy | None, deadline: float | None) -> tuple[float | None, bool]:
    """(timeout of this attempt, whether the per-try timeout is the binding one)."""
    remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    per_try = policy.per_try_timeout if policy is not None else None
    if per_try is not None and (remaining is None or per_try < remaining):
        return per_try, True
    return remaining, False
