"""The inbound chain, in path order:

    tracing → admission (draining, agent down) → authentication → access (RBAC)
    → contract(in) → upstream adapter → contract(out) → usage → metrics and access log

Built once per configuration by `InboundChain`, with one `_MethodRoute` per
contract method holding what never changes between its calls: the span name
and attributes, the usage reader, the access line's constant part and the
metric children per caller (bound on a caller's first call). A call looks its
method up once and formats only what is its own. Steps raise
domain errors (sidecar.errors); the listener maps them to a status.

The caller is who its certificate says (`InboundChain.peer_of`, read once per
call by the listener; sidecar/filters/authn.py): the RBAC principal, the
`source_agent` of metrics, the `source`/`caller` of the access log and the
`x-agentmesh-source-agent`/`-team` headers the agent receives. A call
without TLS (permissive mode) has source `unknown` and is counted in
`agentmesh_inbound_plaintext_requests_total`. Identity headers the caller
sent are never used for any of these; when `x-agentmesh-source-agent` names
someone other than the caller the certificate proves, the access log shows
that claim as `claimed_source`, for spotting spoofing attempts and callers
still to migrate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from agentmesh.telemetry.logs import AccessRoute
from agentmesh.telemetry.tracing import inject, trace_ids
from sidecar.config.bootstrap import Bootstrap
from sidecar.contract import ContractSet, MessageChecker, MethodContract
from sidecar.errors import (
    AccessDenied,
    ContractViolation,
    Draining,
    MeshError,
    Unauthenticated,
    UpstreamUnavailable,
)
from sidecar.filters.authn import AuthContextHolder, Peer, PeerReader
from sidecar.filters.rbac import RbacFilter
from sidecar.filters.tracing import CallTracer, end_span, record_usage
from sidecar.filters.usage import UsageReader
from sidecar.inbound.call import SOURCE_AGENT_HEADER, SOURCE_TEAM_HEADER, InboundCall, Reply
from sidecar.stats import RouteStats, SidecarStats
from sidecar.upstream.base import Payload, UpstreamAdapter, UpstreamCall

log = logging.getLogger("agentmesh.sidecar.inbound")

CONFIG_HEADER_PREFIX = "x-agentmesh-config-"
# The `policy` of a call refused because the caller's certificate names no agent of this mesh.
AUTHENTICATION_POLICY = "builtin/authentication"


@dataclass
class Admission:
    """Whether new calls may reach the agent; flipped by the prober and on SIGTERM."""

    agent_healthy: bool = False
    draining: bool = False
    reason: str = "agent not probed yet"
    # Set while access policy is unknown (mTLS on, no xDS config yet): calls wait rather than pass unchecked.
    config_pending: str | None = None

    def check(self) -> None:
        if self.draining:
            raise Draining("sidecar is draining (shutting down); retry on another instance")
        if self.config_pending is not None:
            raise UpstreamUnavailable(self.config_pending)
        if not self.agent_healthy:
            raise UpstreamUnavailable(f"agent is not healthy: {self.reason}")


# Callers' source agents remembered per method; the mesh's agents are few, "unknown" is one more.
MAX_SOURCES_PER_METHOD = 256
# Access-log fields every inbound line has after the core ones, in order.
_ACCESS_FIELDS = ("policy", "caller")


class _MethodRoute:
    """What the chain needs of one contract method, resolved when the chain is built, never per call."""

    __slots__ = ("access_log", "method", "span", "stats", "usage")

    def __init__(self, chain: InboundChain, method: MethodContract) -> None:
        self.method = method
        self.span = chain._tracer.shape(method.path)
        self.usage = UsageReader.for_type(method.output)
        self.access_log = AccessRoute(
            direction="inbound",
            destination=chain._agent.name,
            version=chain._agent.version,
            method=method.path,
            fields=_ACCESS_FIELDS,
        )
        # Metric children by caller (the source_agent label).
        self.stats: dict[str, RouteStats] = {}


class InboundChain:
    """Runs inbound calls through the steps above for one agent."""

    def __init__(
        self,
        *,
        bootstrap: Bootstrap,
        contract: ContractSet,
        checker: MessageChecker,
        upstream: UpstreamAdapter,
        stats: SidecarStats,
        admission: Admission,
        access: Callable[[], RbacFilter | None] = lambda: None,
        runtime_headers: Callable[[], Mapping[str, str]] = dict,
        peers: PeerReader | None = None,
    ) -> None:
        self._agent = bootstrap.agent
        self._upstream_timeout = bootstrap.upstream.timeout
        self._report_only = bootstrap.contract.response_mode == "report"
        self._access_log = bootstrap.telemetry.access_log
        self._contract = contract
        self._checker = checker
        self._upstream = upstream
        self._stats = stats
        self._admission = admission
        self._runtime_headers = runtime_headers
        self._access = access
        # Reads callers' certificates; the sidecar sets its trust domain once it has an identity.
        self.peers = peers if peers is not None else PeerReader()
        self._tracer = CallTracer(agent=self._agent.name, version=self._agent.version, kind=SpanKind.SERVER)
        self._routes = {path: _MethodRoute(self, m) for path, m in contract.methods.items()}

    def route_stats(self, method: MethodContract, source_agent: str) -> RouteStats:
        return self._source_stats(self._route(method), source_agent)

    def _route(self, method: MethodContract) -> _MethodRoute:
        route = self._routes.get(method.path)
        if route is None or route.method is not method:
            # Not from this chain's contract (a caller built its own MethodContract): resolved for this call only.
            route = _MethodRoute(self, method)
        return route

    def _source_stats(self, route: _MethodRoute, source_agent: str) -> RouteStats:
        stats = route.stats.get(source_agent)
        if stats is None:
            stats, stable = self._stats.resolve_route(
                direction="inbound",
                source_agent=source_agent,
                destination_agent=self._agent.name,
                destination_version=self._agent.version,
                rpc_method=route.method.path,
            )
            if stable and len(route.stats) < MAX_SOURCES_PER_METHOD:
                route.stats[source_agent] = stats
        return stats

    def peer_of(self, context: AuthContextHolder) -> Peer:
        """The caller of a call, from its TLS peer certificate (the listener calls this once per call)."""
        return self.peers.read(context)

    async def unary(self, call: InboundCall) -> Reply:
        route = self._route(call.method)
        with self._observed(call, route):
            reply = self._contract_out(call.method, await self._upstream.unary(self._admit(call)))
            if route.usage is not None:
                self._count_usage(call, route.usage, reply)
            return reply

    async def stream(self, call: InboundCall) -> AsyncIterator[Reply]:
        route = self._route(call.method)
        with self._observed(call, route):
            async with contextlib.aclosing(self._upstream.stream(self._admit(call))) as payloads:
                async for payload in payloads:
                    reply = self._contract_out(call.method, payload)
                    if route.usage is not None:
                        self._count_usage(call, route.usage, reply)
                    yield reply

    @contextlib.contextmanager
    def _observed(self, call: InboundCall, route: _MethodRoute) -> Iterator[None]:
        """Metrics, SERVER span and access log around one call, whatever its outcome."""
        stats = self._source_stats(route, call.source_agent)
        span, call.trace_context = self._tracer.start_shape(route.span, call.metadata)
        if not call.peer.tls:
            self._stats.inbound_plaintext()
        stats.start()
        started = time.perf_counter()
        code, error = "OK", None
        try:
            yield
        except MeshError as exc:
            code, error = exc.code.name, exc
            if isinstance(exc, ContractViolation):
                self._stats.contract_violation(call.method.path, exc.side, exc.reason)
            raise
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            elapsed = time.perf_counter() - started
            trace_id, span_id = trace_ids(span)
            end_span(span, code, error)
            stats.finish(code, elapsed, trace_id=trace_id or None)
            if self._access_log:
                source = call.source_agent
                claimed = call.metadata.get(SOURCE_AGENT_HEADER)
                route.access_log.log(
                    source,
                    code,
                    round(elapsed * 1000, 3),
                    trace_id=trace_id,
                    span_id=span_id,
                    values=(call.denied_by or "", call.peer.identity),
                    extra={"claimed_source": claimed} if claimed is not None and claimed != source else None,
                )

    def _count_usage(self, call: InboundCall, reader: UsageReader, reply: Reply) -> None:
        usage = reader.read(reply.message)
        if usage is not None:
            self._stats.record_tokens(usage.model, usage.input_tokens, usage.output_tokens)
            record_usage(trace.get_current_span(call.trace_context), usage)

    def _admit(self, call: InboundCall) -> UpstreamCall:
        """Admission, authentication, access and contract(in): the agent never sees a call that fails here."""
        self._admission.check()
        method = call.method
        peer = call.peer
        if peer.refusal is not None:
            self._refuse(call, Unauthenticated(f"unauthenticated: {peer.refusal}", policy=AUTHENTICATION_POLICY))
        access = self._access()
        if access is not None:
            try:
                access.check(method.path, call.metadata, peer.principal)
            except AccessDenied as exc:
                self._refuse(call, exc)
        if isinstance(call.body, bytes):
            request = self._checker.parse(method, call.body, side="request")
            wire: bytes | None = call.body
        else:
            request = self._checker.from_json(method, call.body, side="request")
            wire = None
        call.request = request
        return UpstreamCall(
            method=method,
            request=request,
            request_bytes=wire,
            timeout=self._timeout(call),
            headers=self._headers(call),
        )

    def _refuse(self, call: InboundCall, denial: AccessDenied) -> NoReturn:
        """Counts and records a denial, then raises it."""
        self._stats.access_denied(call.source_agent, denial.policy)
        call.denied_by = denial.policy
        raise denial

    def _contract_out(self, method: MethodContract, payload: Payload) -> Reply:
        try:
            if payload.encoding == "proto":
                return Reply(self._checker.parse(method, payload.data, side="response"), payload.data)
            return Reply(self._checker.from_json(method, payload.data, side="response"))
        except ContractViolation as exc:
            if not self._report_only:
                raise
            self._stats.contract_violation(method.path, exc.side, exc.reason)
            log.warning("response breaks the contract (report mode, passed on): %s", exc.message)
            return Reply(self._lenient(method, payload))

    def _lenient(self, method: MethodContract, payload: Payload) -> Message:
        """Report mode: decode what can be decoded; unparsable bodies still fail."""
        message = method.response_class()
        try:
            if payload.encoding == "proto":
                message.ParseFromString(payload.data)
            else:
                json_format.Parse(payload.data, message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError) as exc:
            raise ContractViolation(
                f"response cannot be decoded as {method.output.full_name}: {exc}", side="response", reason="malformed"
            ) from exc
        return message

    def _timeout(self, call: InboundCall) -> float:
        if call.time_remaining is not None:
            return call.time_remaining
        return call.method.skill.timeout or self._upstream_timeout

    def _headers(self, call: InboundCall) -> dict[str, str]:
        """The caller as its certificate proves it, the trace context of this call's SERVER span (so the
        agent's own calls nest under it) and the AgentConfig values."""
        headers: dict[str, str] = {SOURCE_AGENT_HEADER: call.source_agent}
        if call.peer.spiffe_id is not None:
            headers[SOURCE_TEAM_HEADER] = call.peer.spiffe_id.team
        inject(headers, call.trace_context)
        headers.update(self._runtime_headers())
        return headers
