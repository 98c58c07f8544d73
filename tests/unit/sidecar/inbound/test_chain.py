"""The inbound chain with a fake upstream adapter (the real adapters have their own tests)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.identity.spiffe import SpiffeId
from sidecar.config.bootstrap import Bootstrap
from sidecar.contract import ContractSet, MessageChecker
from sidecar.errors import ContractViolation, Draining, UpstreamStatus, UpstreamUnavailable
from sidecar.filters.authn import Peer
from sidecar.inbound.call import InboundCall
from sidecar.inbound.chain import Admission, InboundChain
from sidecar.stats import SidecarStats
from sidecar.upstream.base import Payload, UpstreamCall
from tests.unit.sidecar.contract.conftest import SHOP_PROTO

PLANNER = Peer.authenticated(SpiffeId("agentmesh.local", "planning", "planner"))


class FakeAdapter:
    """Answers with canned payloads and records what the agent would have received."""

    def __init__(self, *payloads: Payload, error: Exception | None = None) -> None:
        self.payloads = payloads
        self.error = error
        self.calls: list[UpstreamCall] = []

    async def unary(self, call: UpstreamCall) -> Payload:
        self.calls.append(call)
        if self.error:
            raise self.error
        return self.payloads[0]

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[Payload, None]:
        self.calls.append(call)
        for payload in self.payloads:
            yield payload
        if self.error:
            raise self.error

    async def aclose(self) -> None:
        pass


def bootstrap(tmp_path: Path, response_mode: str = "enforce") -> Bootstrap:
    return Bootstrap.model_validate(
        {
            "agent": {"name": "shop", "version": "v3", "team": "retail"},
            "upstream": {"url": "http://127.0.0.1:9", "timeout": "42s"},
            "contract": {"protos": [str(SHOP_PROTO)], "response_mode": response_mode},
        }
    )


def make_chain(
    tmp_path: Path, adapter: FakeAdapter, *, response_mode: str = "enforce", healthy: bool = True
) -> tuple[InboundChain, ContractSet, SidecarStats, Admission]:
    from agentmesh.protoc import compile_descriptor_set

    contract = ContractSet.compile(compile_descriptor_set([SHOP_PROTO]))
    stats = SidecarStats(agent="shop", version="v3", team="retail")
    admission = Admission(agent_healthy=healthy)
    chain = InboundChain(
        bootstrap=bootstrap(tmp_path, response_mode),
        contract=contract,
        checker=MessageChecker(),
        upstream=adapter,
        stats=stats,
        admission=admission,
        runtime_headers=lambda: {"x-agentmesh-config-model": "small"},
    )
    return chain, contract, stats, admission


def sample(stats: SidecarStats, name: str, **labels: str) -> float:
    text, _ = stats.exposition("text/plain")
    return sum(
        s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def call(contract: ContractSet, path: str, body: bytes | dict[str, object], **kwargs: object) -> InboundCall:
    return InboundCall(
        method=contract.method(path),
        body=body,
        metadata=kwargs.pop("metadata", {}),  # type: ignore[arg-type]
        time_remaining=kwargs.pop("time_remaining", None),  # type: ignore[arg-type]
        peer=PLANNER,
    )


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_valid_call_reaches_the_agent_with_headers_and_deadline(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    adapter = FakeAdapter(Payload(b'{"id": "a1", "price": 3.5}', "json"))
    chain, contract, stats, _ = make_chain(tmp_path, adapter)
    metadata = {"traceparent": TRACEPARENT, "baggage": "tenant=beta", "other": "x"}
    reply = await chain.unary(
        call(contract, "/shop.v1.Shop/GetItem", {"id": "a1"}, metadata=metadata, time_remaining=2.5)
    )
    assert reply.message.price == 3.5  # type: ignore[attr-defined]
    (sent,) = adapter.calls
    assert sent.timeout == 2.5
    assert sent.headers["x-agentmesh-source-agent"] == "planner"
    assert sent.headers["x-agentmesh-source-team"] == "planning"
    assert sent.headers["x-agentmesh-config-model"] == "small"
    assert sent.headers["baggage"] == "tenant=beta"
    assert "other" not in sent.headers
    # The agent's parent is the sidecar's SERVER span: same trace, a new span id.
    version, trace_id, parent_id, flags = sent.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "01")
    assert parent_id != "b7ad6b7169203331"
    (span,) = spans.get_finished_spans()
    assert span.name == "shop.v1.Shop/GetItem" and span.kind.name == "SERVER"
    assert format(span.context.span_id, "016x") == parent_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.attributes is not None
    assert span.attributes["gen_ai.agent.name"] == "shop" and span.attributes["rpc.grpc.status_code"] == 0
    assert sample(stats, "agentmesh_requests_total", grpc_code="OK", source_agent="planner") == 1


async def test_deadline_defaults_to_skill_then_upstream_timeout(tmp_path: Path) -> None:
    adapter = FakeAdapter(Payload(b'{"id": "a1"}', "json"))
    chain, contract, _, _ = make_chain(tmp_path, adapter)
    order = contract.method("/shop.v1.Shop/Order").request_class(lines=[{"sku": "a", "quantity": 1}])
    await chain.unary(call(contract, "/shop.v1.Shop/Order", order.SerializeToString()))
    await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "a1"}))
    assert [c.timeout for c in adapter.calls] == [1.5, 42.0]


async def test_bad_request_never_reaches_the_agent(tmp_path: Path, spans: InMemorySpanExporter) -> None:
    adapter = FakeAdapter(Payload(b"{}", "json"))
    chain, contract, stats, _ = make_chain(tmp_path, adapter)
    with pytest.raises(ContractViolation):
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "x"}))
    assert adapter.calls == []
    assert sample(stats, "agentmesh_contract_violations_total", side="request", reason="rule_violation") == 1
    assert sample(stats, "agentmesh_requests_total", grpc_code="INVALID_ARGUMENT") == 1
    (span,) = spans.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    (event,) = span.events
    assert event.name == "agentmesh.contract_violation" and event.attributes == {
        "side": "request",
        "reason": "rule_violation",
        "fields": ("id",),
    }


async def test_bad_response_is_an_error_in_enforce_mode(tmp_path: Path) -> None:
    chain, contract, stats, _ = make_chain(tmp_path, FakeAdapter(Payload(b'{"id": "a", "price": -2}', "json")))
    with pytest.raises(ContractViolation) as info:
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert sample(stats, "agentmesh_contract_violations_total", side="response") == 1


async def test_bad_response_passes_in_report_mode_but_is_counted(tmp_path: Path) -> None:
    adapter = FakeAdapter(Payload(b'{"id": "a", "price": -2, "extra": true}', "json"))
    chain, contract, stats, _ = make_chain(tmp_path, adapter, response_mode="report")
    reply = await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    assert reply.message.price == -2  # type: ignore[attr-defined]
    assert sample(stats, "agentmesh_contract_violations_total", side="response") == 1
    assert sample(stats, "agentmesh_requests_total", grpc_code="OK") == 1


async def test_unparsable_response_fails_even_in_report_mode(tmp_path: Path) -> None:
    chain, contract, _, _ = make_chain(tmp_path, FakeAdapter(Payload(b"<html>", "json")), response_mode="report")
    with pytest.raises(ContractViolation, match="cannot be decoded"):
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))


async def test_admission_fails_fast(tmp_path: Path) -> None:
    adapter = FakeAdapter(Payload(b"{}", "json"))
    chain, contract, _, admission = make_chain(tmp_path, adapter, healthy=False)
    with pytest.raises(UpstreamUnavailable, match="not healthy"):
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    admission.agent_healthy = True
    admission.draining = True
    with pytest.raises(Draining):
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    assert adapter.calls == []


async def test_calls_wait_for_access_policy(tmp_path: Path) -> None:
    adapter = FakeAdapter(Payload(b'{"id": "ab"}', "json"))
    chain, contract, _, admission = make_chain(tmp_path, adapter)
    admission.config_pending = "no configuration from the control plane yet (access policy unknown)"
    with pytest.raises(UpstreamUnavailable, match="access policy unknown"):
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    assert adapter.calls == []
    admission.config_pending = None
    await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    assert len(adapter.calls) == 1


async def test_stream_checks_every_message_and_counts_errors(tmp_path: Path) -> None:
    adapter = FakeAdapter(
        Payload(b'{"id": "1"}', "json"),
        Payload(b'{"id": "2", "price": -1}', "json"),
    )
    chain, contract, stats, _ = make_chain(tmp_path, adapter)
    received = []
    with pytest.raises(ContractViolation):
        async for reply in chain.stream(call(contract, "/shop.v1.Shop/Watch", {"id": "ab"})):
            received.append(reply.message.id)  # type: ignore[attr-defined]
    assert received == ["1"]
    assert sample(stats, "agentmesh_requests_total", rpc_method="/shop.v1.Shop/Watch", grpc_code="INTERNAL") == 1


async def test_agent_errors_keep_their_code(tmp_path: Path) -> None:
    error = UpstreamStatus("agent answered HTTP 429", code=grpc.StatusCode.RESOURCE_EXHAUSTED, http_status=429)
    chain, contract, stats, _ = make_chain(tmp_path, FakeAdapter(error=error))
    with pytest.raises(UpstreamStatus):
        await chain.unary(call(contract, "/shop.v1.Shop/GetItem", {"id": "ab"}))
    assert sample(stats, "agentmesh_requests_total", grpc_code="RESOURCE_EXHAUSTED") == 1
    assert sample(stats, "agentmesh_requests_in_flight") == 0


async def test_callers_beyond_the_label_limit_count_their_overflow_on_every_call(tmp_path: Path) -> None:
    from agentmesh.protoc import compile_descriptor_set

    contract = ContractSet.compile(compile_descriptor_set([SHOP_PROTO]))
    stats = SidecarStats(agent="shop", version="v3", team="retail", max_label_values=1)
    adapter = FakeAdapter(Payload(b'{"id": "a1", "price": 3.5}', "json"))
    chain = InboundChain(
        bootstrap=bootstrap(tmp_path),
        contract=contract,
        checker=MessageChecker(),
        upstream=adapter,
        stats=stats,
        admission=Admission(agent_healthy=True),
    )
    writer = Peer.authenticated(SpiffeId("agentmesh.local", "writing", "writer"))
    for peer in (PLANNER, writer, writer, PLANNER, writer):
        request = call(contract, "/shop.v1.Shop/GetItem", {"id": "a1"})
        request.peer = peer
        await chain.unary(request)

    assert sample(stats, "agentmesh_requests_total", source_agent="planner") == 2
    assert sample(stats, "agentmesh_requests_total", source_agent="other") == 3
    assert sample(stats, "agentmesh_label_overflow_total", label="source_agent") == 3
