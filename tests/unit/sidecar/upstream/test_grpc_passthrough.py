"""GrpcPassthroughAdapter against a real grpc.aio agent on loopback serving raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest

from sidecar.config.bootstrap import Upstream
from sidecar.errors import ContractViolation, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from sidecar.upstream import Payload
from sidecar.upstream.grpc_passthrough import GrpcPassthroughAdapter
from tests.unit.sidecar.upstream.conftest import SERVICE, free_port, make_call, method, request

MAX = 64 * 1024

Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
Streaming = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]


async def echo(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return data


async def three_chunks(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for index in range(3):
        yield chunk(index)


def chunk(index: int) -> bytes:
    message = method("Chat").response_class(text=f"t{index}", index=index)
    return message.SerializeToString()


@dataclass
class FakeGrpcAgent:
    """An agent speaking gRPC; every unary method runs `unary`, every streaming one `stream`."""

    unary: Unary = echo
    stream: Streaming = three_chunks
    requests: list[bytes] = field(default_factory=list)
    metadata: list[dict[str, str | bytes]] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    upstream: Upstream = field(default_factory=lambda: Upstream(url="http://127.0.0.1:1", protocol="grpc"))

    def _record(self, data: bytes, context: grpc.aio.ServicerContext) -> None:
        self.requests.append(data)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        self.received.set()

    async def handle_unary(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._record(data, context)
        try:
            return await self.unary(data, context)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def handle_stream(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._record(data, context)
        try:
            async for item in self.stream(data, context):
                yield item
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def agent() -> AsyncIterator[FakeGrpcAgent]:
    fake = FakeGrpcAgent()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(fake.handle_unary),
            "GetThing": grpc.unary_unary_rpc_method_handler(fake.handle_unary),
            "Chat": grpc.unary_stream_rpc_method_handler(fake.handle_stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    fake.upstream = Upstream(url=f"http://127.0.0.1:{port}", protocol="grpc")
    yield fake
    fake.release.set()
    await server.stop(None)


@pytest.fixture
async def adapter(agent: FakeGrpcAgent) -> AsyncIterator[GrpcPassthroughAdapter]:
    made = GrpcPassthroughAdapter(agent.upstream, max_message_bytes=MAX)
    yield made
    await made.aclose()


async def collect(stream: AsyncGenerator[Payload, None], into: list[Payload]) -> list[Payload]:
    async with contextlib.aclosing(stream):
        async for payload in stream:
            into.append(payload)
    return into


async def test_unary_serializes_the_request_when_no_bytes_came(
    agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter
) -> None:
    thing = request("Echo", {"name": "n", "size": "7"})
    payload = await adapter.unary(make_call("Echo", thing))
    assert agent.requests == [thing.SerializeToString()]
    assert payload == Payload(thing.SerializeToString(), "proto")


async def test_unary_forwards_the_original_bytes_unchanged(
    agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter
) -> None:
    original = b"\x0a\x01y\x18\x05"  # name="y", size=5: not what `request` holds
    payload = await adapter.unary(make_call("Echo", request("Echo", {"name": "x"}), request_bytes=original))
    assert agent.requests == [original]
    assert payload.data == original


async def test_metadata_carries_only_valid_headers(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    headers = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-agentmesh-config-model": "small",
        "x-agentmesh-source-agent": "planner",
        "Upper-Case": "no",
        "x-data-bin": "not bytes",
        "x-accented": "café",
        "x-newline": "a\nb",
        "grpc-timeout": "1S",
        "content-type": "text/plain",
        ":authority": "evil",
    }
    await adapter.unary(make_call("Echo", headers=headers))
    seen = agent.metadata[0]
    assert seen["traceparent"] == headers["traceparent"]
    assert seen["x-agentmesh-config-model"] == "small"
    assert seen["x-agentmesh-source-agent"] == "planner"
    for dropped in ("upper-case", "x-data-bin", "x-accented", "x-newline", ":authority"):
        assert dropped not in seen
    assert seen.get("content-type") != "text/plain"


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.NOT_FOUND, "no thing t"),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad prompt"),
        (grpc.StatusCode.UNAVAILABLE, "model warming up"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"),
    ],
)
async def test_agent_status_is_passed_on(
    agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter, code: grpc.StatusCode, details: str
) -> None:
    async def fail(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(code, details)
        raise AssertionError("abort returns never")

    agent.unary = fail
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.unary(make_call("GetThing"))
    assert caught.value.code == code
    assert caught.value.message == f"agent answered {code.name}: {details}"


async def test_connection_refused_is_unavailable() -> None:
    adapter = GrpcPassthroughAdapter(
        Upstream(url=f"http://127.0.0.1:{free_port()}", protocol="grpc"), max_message_bytes=MAX
    )
    try:
        with pytest.raises(UpstreamUnavailable):
            await adapter.unary(make_call("Echo"))
        with pytest.raises(UpstreamUnavailable):
            await collect(adapter.stream(make_call("Chat")), [])
    finally:
        await adapter.aclose()


async def test_slow_agent_times_out(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    async def slow(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await agent.release.wait()
        return data

    agent.unary = slow
    with pytest.raises(UpstreamTimeout):
        await adapter.unary(make_call("Echo", timeout=0.2))


async def test_spent_deadline_never_reaches_the_agent(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    with pytest.raises(UpstreamTimeout):
        await adapter.unary(make_call("Echo", timeout=0))
    with pytest.raises(UpstreamTimeout):
        await collect(adapter.stream(make_call("Chat", timeout=-0.5)), [])
    assert agent.requests == []


async def test_response_above_the_limit_is_a_violation(agent: FakeGrpcAgent) -> None:
    async def big(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request("Echo", {"name": "x" * 5000}).SerializeToString()

    agent.unary = big
    adapter = GrpcPassthroughAdapter(agent.upstream, max_message_bytes=1024)
    try:
        with pytest.raises(ContractViolation) as caught:
            await adapter.unary(make_call("Echo"))
    finally:
        await adapter.aclose()
    assert (caught.value.side, caught.value.reason) == ("response", "too_large")


async def test_cancelling_the_caller_cancels_the_rpc(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    async def slow(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await agent.release.wait()
        return data

    agent.unary = slow
    task = asyncio.create_task(adapter.unary(make_call("Echo", timeout=None)))
    await asyncio.wait_for(agent.received.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(agent.cancelled.wait(), 10)


async def test_stream_yields_each_message(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    prompt = request("Chat", {"prompt": "hi"})
    payloads = await collect(adapter.stream(make_call("Chat", prompt)), [])
    assert payloads == [Payload(chunk(i), "proto") for i in range(3)]
    assert agent.requests == [prompt.SerializeToString()]


async def test_stream_error_after_messages(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    async def partial(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield chunk(0)
        await context.abort(grpc.StatusCode.INTERNAL, "model crashed")

    agent.stream = partial
    payloads: list[Payload] = []
    with pytest.raises(UpstreamStatus) as caught:
        await collect(adapter.stream(make_call("Chat")), payloads)
    assert payloads == [Payload(chunk(0), "proto")]
    assert caught.value.code == grpc.StatusCode.INTERNAL


async def endless(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    index = 0
    while True:
        yield chunk(index)
        index += 1
        await asyncio.sleep(0.01)


async def test_stalled_stream_times_out(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    async def stall(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield chunk(0)
        await agent.release.wait()

    agent.stream = stall
    payloads: list[Payload] = []
    with pytest.raises(UpstreamTimeout):
        await collect(adapter.stream(make_call("Chat", timeout=0.3)), payloads)
    assert payloads == [Payload(chunk(0), "proto")]


async def test_cancelling_the_caller_mid_stream_cancels_the_rpc(
    agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter
) -> None:
    agent.stream = endless
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in adapter.stream(make_call("Chat", timeout=None)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(agent.cancelled.wait(), 10)


async def test_closing_the_stream_early_cancels_the_rpc(agent: FakeGrpcAgent, adapter: GrpcPassthroughAdapter) -> None:
    agent.stream = endless
    stream = adapter.stream(make_call("Chat"))
    async with contextlib.aclosing(stream):
        assert await anext(stream) == Payload(chunk(0), "proto")
    await asyncio.wait_for(agent.cancelled.wait(), 10)


async def test_closed_adapter_refuses_calls(agent: FakeGrpcAgent) -> None:
    adapter = GrpcPassthroughAdapter(agent.upstream, max_message_bytes=MAX)
    await adapter.unary(make_call("Echo"))
    await adapter.aclose()
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await adapter.unary(make_call("Echo"))
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await collect(adapter.stream(make_call("Chat")), [])


def test_repr_names_the_target() -> None:
    adapter = GrpcPassthroughAdapter(Upstream(url="http://[::1]:9090", protocol="grpc"), max_message_bytes=MAX)
    assert repr(adapter) == "GrpcPassthroughAdapter(target='http://[::1]:9090', max_message_bytes=65536)"
