"""HttpJsonAdapter against a real aiohttp agent on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import grpc
import pytest
from aiohttp import web

from sidecar.config.bootstrap import Upstream
from sidecar.contract import HttpRule
from sidecar.errors import ContractViolation, MeshError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from sidecar.upstream import Payload, adapter_for
from sidecar.upstream.base import UpstreamCall
from sidecar.upstream.grpc_passthrough import GrpcPassthroughAdapter
from sidecar.upstream.http_json import HttpJsonAdapter
from tests.unit.sidecar.upstream.conftest import FakeAgent, Handler, free_port, make_call, method, request

MAX = 64 * 1024
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

MakeAdapter = Callable[..., HttpJsonAdapter]


@pytest.fixture
async def make_adapter() -> AsyncIterator[MakeAdapter]:
    made: list[HttpJsonAdapter] = []

    def make(upstream: Upstream, **options: object) -> HttpJsonAdapter:
        options.setdefault("max_message_bytes", MAX)
        adapter = HttpJsonAdapter(upstream, **options)  # type: ignore[arg-type]
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.aclose()


def reply(body: bytes | str, *, status: int = 200, content_type: str | None = "application/json") -> Handler:
    async def handler(request: web.Request, _: bytes) -> web.StreamResponse:
        headers = {"Content-Type": content_type} if content_type else {}
        data = body.encode() if isinstance(body, str) else body
        return web.Response(body=data, status=status, headers=headers)

    return handler


def streamed(*pieces: bytes, content_type: str = "text/event-stream", stall: bool = False) -> Handler:
    """A handler writing `pieces` one by one (chunked), then ending or stalling."""

    async def handler(request: web.Request, _: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
        if stall:
            await asyncio.Event().wait()
        await response.write_eof()
        return response

    return handler


async def collect(stream: AsyncGenerator[Payload, None], into: list[Payload]) -> list[Payload]:
    async with contextlib.aclosing(stream):
        async for payload in stream:
            into.append(payload)
    return into


def bodies(payloads: list[Payload]) -> list[object]:
    assert all(p.encoding == "json" for p in payloads)
    return [json.loads(p.data) for p in payloads]


# --- unary: routing and headers ---------------------------------------------------------


async def test_connect_convention_posts_the_whole_message(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    thing = request("Echo", {"name": "n1", "display_title": "T", "size": "3", "tags": ["a"]})
    headers = {"traceparent": TRACEPARENT, "x-agentmesh-config-model": "small", "host": "evil", "content-length": "9"}

    payload = await adapter.unary(make_call("Echo", thing, timeout=5, headers=headers))

    seen = agent.seen[0]
    assert (seen.method, seen.path) == ("POST", "/testing.things.v1.Things/Echo")
    assert json.loads(seen.body) == {"name": "n1", "display_title": "T", "size": "3", "tags": ["a"]}
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["Connect-Protocol-Version"] == "1"
    assert seen.headers["Connect-Timeout-Ms"] == "5000"
    assert seen.headers["traceparent"] == TRACEPARENT
    assert seen.headers["x-agentmesh-config-model"] == "small"
    assert seen.headers["Host"] != "evil"
    assert payload == Payload(seen.body, "json")


async def test_json_names_send_lower_camel_case_and_no_deadline_header(
    agent: FakeAgent, make_adapter: MakeAdapter
) -> None:
    adapter = make_adapter(agent.upstream, json_names="json")
    await adapter.unary(make_call("Echo", request("Echo", {"display_title": "T"}), timeout=None))
    assert json.loads(agent.seen[0].body) == {"displayTitle": "T"}
    assert "Connect-Timeout-Ms" not in agent.seen[0].headers


async def test_http_rule_get_fills_path_and_query(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply('{"name": "a b/c"}')
    adapter = make_adapter(agent.upstream)
    get = request(
        "GetThing",
        {
            "name": "a b/c",
            "verbose": True,
            "fields": ["x", "y"],
            "filter": {"id": "i 1", "count": 2},
            "kind": "KIND_BIG",
            "as_of": "2024-01-02T03:04:05Z",
            "token": "+/8=",
            "ratio": 0.1,
        },
    )

    payload = await adapter.unary(make_call("GetThing", get))

    seen = agent.seen[0]
    assert seen.method == "GET"
    assert seen.path.startswith("/v1/things/a%20b%2Fc?")
    assert seen.query == [
        ("verbose", "true"),
        ("fields", "x"),
        ("fields", "y"),
        ("filter.id", "i 1"),
        ("filter.count", "2"),
        ("kind", "KIND_BIG"),
        ("as_of", "2024-01-02T03:04:05Z"),
        ("token", "-_8="),
        ("ratio", "0.1"),
    ]
    assert seen.body == b""
    assert "Content-Type" not in seen.headers
    assert "Connect-Protocol-Version" not in seen.headers
    assert payload == Payload(b'{"name": "a b/c"}', "json")


async def test_query_parameters_follow_json_names(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream, json_names="json")
    await adapter.unary(make_call("GetThing", request("GetThing", {"name": "t", "as_of": "2024-01-02T03:04:05Z"})))
    assert agent.seen[0].query == [("asOf", "2024-01-02T03:04:05Z")]


async def test_multi_segment_variable_keeps_slashes(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    await adapter.unary(make_call("ListItems", request("ListItems", {"parent": "projects/p 1", "page_size": 10})))
    assert agent.seen[0].path == "/v1/projects/p%201/items?page_size=10"


async def test_path_value_outside_the_template_is_refused_before_the_agent(
    agent: FakeAgent, make_adapter: MakeAdapter
) -> None:
    adapter = make_adapter(agent.upstream)
    with pytest.raises(ContractViolation) as caught:
        await adapter.unary(make_call("ListItems", request("ListItems", {"parent": "orgs/x"})))
    assert (caught.value.side, caught.value.reason) == ("request", "http_path")
    assert "projects/*" in caught.value.message
    with pytest.raises(ContractViolation, match="does not match"):
        await adapter.unary(make_call("GetThing", request("GetThing", {})))  # empty name
    assert agent.seen == []


async def test_body_field_with_path_and_query(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    create = request(
        "CreateThing", {"parent": "projects/p1", "thing": {"name": "t", "inner": {"count": 1}}, "request_id": "r1"}
    )
    await adapter.unary(make_call("CreateThing", create))
    seen = agent.seen[0]
    assert (seen.method, seen.path) == ("POST", "/v1/projects/p1/things?request_id=r1")
    assert json.loads(seen.body) == {"name": "t", "inner": {"count": 1}}
    assert seen.headers["Content-Type"] == "application/json"


async def test_body_star_leaves_out_nested_path_fields(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    update = request("UpdateThing", {"thing": {"name": "things/a/b", "display_title": "T"}, "allow_missing": True})
    await adapter.unary(make_call("UpdateThing", update))
    seen = agent.seen[0]
    assert (seen.method, seen.path) == ("PATCH", "/v1/things/a/b")
    assert json.loads(seen.body) == {"thing": {"display_title": "T"}, "allow_missing": True}
    # The caller's message is untouched.
    assert update.thing.name == "things/a/b"  # type: ignore[attr-defined]


async def test_custom_verb_suffix(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    await adapter.unary(make_call("ArchiveThing", request("ArchiveThing", {"name": "things/t1", "verbose": True})))
    seen = agent.seen[0]
    assert (seen.method, seen.path) == ("POST", "/v1/things/t1:archive")
    assert json.loads(seen.body) == {"verbose": True}


async def test_fields_a_query_string_cannot_carry_are_refused(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    await adapter.unary(make_call("Search", request("Search", {"query": "a&b=c"})))
    assert agent.seen[0].path == "/v1/search?query=a%26b%3Dc"
    for fields in ({"labels": {"k": "v"}}, {"inners": [{"id": "x"}]}):
        with pytest.raises(ContractViolation) as caught:
            await adapter.unary(make_call("Search", request("Search", fields)))
        assert caught.value.reason == "http_query"
    assert len(agent.seen) == 1


async def test_unusable_rule_fails_prepare_and_calls(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    broken = dataclasses.replace(method("GetThing"), http_rule=HttpRule("GET", "/v1/{missing}", ""))
    with pytest.raises(ValueError, match="has no field 'missing'"):
        adapter.prepare([method("Echo"), broken])
    call = dataclasses.replace(make_call("GetThing"), method=broken)
    with pytest.raises(MeshError) as caught:
        await adapter.unary(call)
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert agent.seen == []


# --- unary: answers -------------------------------------------------------------------


async def test_empty_success_is_the_empty_message(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    agent.handler = reply(b"", status=204, content_type=None)
    assert await adapter.unary(make_call("Echo")) == Payload(b"{}", "json")
    agent.handler = reply(b"", content_type=None)
    assert await adapter.unary(make_call("Echo")) == Payload(b"{}", "json")


async def test_json_suffix_content_type_is_json(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply('{"name": "x"}', content_type="application/vnd.things+json; charset=utf-8")
    adapter = make_adapter(agent.upstream)
    assert await adapter.unary(make_call("Echo")) == Payload(b'{"name": "x"}', "json")


@pytest.mark.parametrize("content_type", ["text/html", None])
async def test_non_json_answer_is_a_response_violation(
    agent: FakeAgent, make_adapter: MakeAdapter, content_type: str | None
) -> None:
    agent.handler = reply("<html>hi</html>", content_type=content_type)
    adapter = make_adapter(agent.upstream)
    with pytest.raises(ContractViolation) as caught:
        await adapter.unary(make_call("Echo"))
    assert (caught.value.side, caught.value.reason) == ("response", "content_type")


@pytest.mark.parametrize(
    ("name", "status", "body", "code"),
    [
        ("Echo", 400, "bad input", grpc.StatusCode.INVALID_ARGUMENT),
        ("Echo", 404, "no route", grpc.StatusCode.UNIMPLEMENTED),
        ("GetThing", 404, "no such thing", grpc.StatusCode.NOT_FOUND),
        ("Echo", 429, "slow down", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("Echo", 503, "overloaded", grpc.StatusCode.UNAVAILABLE),
        ("Echo", 504, "upstream model timed out", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("Echo", 500, "boom", grpc.StatusCode.INTERNAL),
    ],
)
async def test_http_error_status_is_mapped(
    agent: FakeAgent, make_adapter: MakeAdapter, name: str, status: int, body: str, code: grpc.StatusCode
) -> None:
    agent.handler = reply(body, status=status, content_type="text/plain")
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.unary(make_call(name, request(name, {"name": "t"})))
    assert caught.value.code == code
    assert caught.value.http_status == status
    assert caught.value.message == f"agent answered HTTP {status}: {body}"


async def test_error_message_quotes_at_most_200_characters(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply("x" * 5000, status=500, content_type="text/plain")
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.unary(make_call("Echo"))
    assert caught.value.message == "agent answered HTTP 500: " + "x" * 200


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (404, {"code": "not_found", "message": "no thing t"}, grpc.StatusCode.NOT_FOUND, "no thing t"),
        (499, {"code": "canceled"}, grpc.StatusCode.CANCELLED, ""),
        (400, {"code": 9, "message": "not ready", "details": []}, grpc.StatusCode.FAILED_PRECONDITION, "not ready"),
    ],
)
async def test_connect_error_body_sets_the_code(
    agent: FakeAgent, make_adapter: MakeAdapter, status: int, body: object, code: grpc.StatusCode, message: str
) -> None:
    agent.handler = reply(json.dumps(body), status=status)
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.unary(make_call("Echo"))
    assert caught.value.code == code
    assert caught.value.http_status == status
    assert caught.value.message == f"agent answered {code.name}: {message}"


async def test_unknown_connect_code_falls_back_to_http_status(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply('{"code": "teapot", "message": "short and stout"}', status=503)
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.unary(make_call("Echo"))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_response_above_the_limit_is_refused(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream, max_message_bytes=1024)
    agent.handler = reply(json.dumps({"name": "x" * 4000}))
    with pytest.raises(ContractViolation) as caught:
        await adapter.unary(make_call("Echo"))
    assert (caught.value.side, caught.value.reason) == ("response", "too_large")
    # Without Content-Length, the limit applies while reading.
    agent.handler = streamed(*[b'{"name": "' + b"x" * 500] * 8, b'"}', content_type="application/json")
    with pytest.raises(ContractViolation) as caught:
        await adapter.unary(make_call("Echo"))
    assert caught.value.reason == "too_large"


# --- unary: transport failures, deadlines, cancellation ---------------------------------


async def test_slow_agent_times_out(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    async def slow(request: web.Request, _: bytes) -> web.StreamResponse:
        await agent.release.wait()
        return web.Response(text="{}", content_type="application/json")

    agent.handler = slow
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamTimeout):
        await adapter.unary(make_call("Echo", timeout=0.2))
    await asyncio.wait_for(agent.disconnected.wait(), 10)


async def test_spent_deadline_never_reaches_the_agent(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamTimeout):
        await adapter.unary(make_call("Echo", timeout=0))
    with pytest.raises(UpstreamTimeout):
        await anext(adapter.stream(make_call("Chat", timeout=-1)))
    assert agent.seen == []


async def test_connection_refused_is_unavailable(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(Upstream(url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await adapter.unary(make_call("Echo"))
    with pytest.raises(UpstreamUnavailable):
        await anext(adapter.stream(make_call("Chat")))


async def raw_agent(answer: bytes) -> asyncio.Server:
    """A TCP server that reads a request head, writes `answer` verbatim and hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"SPEAKING NONSENSE\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"na',
    ],
    ids=["hang-up", "garbage", "cut-off-body"],
)
async def test_broken_connection_is_unavailable(make_adapter: MakeAdapter, answer: bytes) -> None:
    server = await raw_agent(answer)
    port = server.sockets[0].getsockname()[1]
    try:
        adapter = make_adapter(Upstream(url=f"http://127.0.0.1:{port}"))
        with pytest.raises(UpstreamUnavailable):
            await adapter.unary(make_call("Echo"))
    finally:
        server.close()
        await server.wait_closed()


async def test_cancelling_the_caller_aborts_the_request(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    async def slow(request: web.Request, _: bytes) -> web.StreamResponse:
        await agent.release.wait()
        return web.Response(text="{}", content_type="application/json")

    agent.handler = slow
    adapter = make_adapter(agent.upstream)
    task = asyncio.create_task(adapter.unary(make_call("Echo", timeout=None)))
    await asyncio.wait_for(agent.received.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(agent.disconnected.wait(), 10)


async def test_closed_adapter_refuses_calls(agent: FakeAgent) -> None:
    adapter = HttpJsonAdapter(agent.upstream, max_message_bytes=MAX)
    await adapter.unary(make_call("Echo"))
    await adapter.aclose()
    with pytest.raises(UpstreamUnavailable, match="closed"):
        await adapter.unary(make_call("Echo"))


async def test_keep_alive_reuses_one_connection(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(agent.upstream)
    ports = set()

    async def who(request: web.Request, _: bytes) -> web.StreamResponse:
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        return web.Response(text="{}", content_type="application/json")

    agent.handler = who
    for _ in range(3):
        await adapter.unary(make_call("Echo"))
    assert len(ports) == 1


# --- streaming ---------------------------------------------------------------------------


async def test_sse_stream(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(
        b": keep-alive comment\r\n",
        b'data: {"text": "a"',
        b', "index": 0}\r\n\r',
        b"\n",
        b"event: ping\ndata: not a message\n\n",
        b'id: 7\nretry: 100\nfoo: bar\ndata: {"text":\r\ndata: "b"}\n\n',
        b'data:{"text": "c"}\n\n',
    )
    adapter = make_adapter(agent.upstream)
    payloads = await collect(adapter.stream(make_call("Chat", request("Chat", {"prompt": "hi"}))), [])
    assert bodies(payloads) == [{"text": "a", "index": 0}, {"text": "b"}, {"text": "c"}]
    assert payloads[1].data == b'{"text":\n"b"}'
    seen = agent.seen[0]
    assert (seen.method, seen.path) == ("POST", "/testing.things.v1.Things/Chat")
    assert seen.headers["Accept"] == "text/event-stream, application/x-ndjson"
    assert "Connect-Protocol-Version" not in seen.headers
    assert json.loads(seen.body) == {"prompt": "hi"}


async def test_sse_error_event_raises_after_the_messages_before_it(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(
        b'data: {"text": "a"}\n\n',
        b'event: error\ndata: {"code": "resource_exhausted", "message": "token budget spent"}\n\n',
        b'data: {"text": "never"}\n\n',
    )
    adapter = make_adapter(agent.upstream)
    payloads: list[Payload] = []
    with pytest.raises(UpstreamStatus) as caught:
        await collect(adapter.stream(make_call("Chat")), payloads)
    assert bodies(payloads) == [{"text": "a"}]
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.message == "agent answered RESOURCE_EXHAUSTED: token budget spent"


async def test_sse_error_event_without_connect_json(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(b"event: error\ndata: model crashed\n\n")
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamStatus) as caught:
        await collect(adapter.stream(make_call("Chat")), [])
    assert caught.value.code == grpc.StatusCode.UNKNOWN
    assert "model crashed" in caught.value.message


async def test_sse_done_sentinel_ends_the_stream(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(b'data: {"text": "a"}\n\n', b"data: [DONE]\n\n", stall=True)
    adapter = make_adapter(agent.upstream)
    payloads = await collect(adapter.stream(make_call("Chat")), [])
    assert bodies(payloads) == [{"text": "a"}]


async def test_sse_stream_ending_inside_an_event_is_malformed(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(b'data: {"text": "a"}\n\n', b'data: {"text": "b"}\n')
    adapter = make_adapter(agent.upstream)
    payloads: list[Payload] = []
    with pytest.raises(ContractViolation) as caught:
        await collect(adapter.stream(make_call("Chat")), payloads)
    assert (caught.value.side, caught.value.reason) == ("response", "malformed_sse")
    assert bodies(payloads) == [{"text": "a"}]


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl; charset=utf-8"])
async def test_ndjson_stream(agent: FakeAgent, make_adapter: MakeAdapter, content_type: str) -> None:
    agent.handler = streamed(
        b'{"text": "a"}\n\n{"te', b'xt": "b"}\r\n', b"   \n", b'{"text": "c"}', content_type=content_type
    )
    adapter = make_adapter(agent.upstream)
    payloads = await collect(adapter.stream(make_call("Chat")), [])
    assert bodies(payloads) == [{"text": "a"}, {"text": "b"}, {"text": "c"}]


async def test_ndjson_end_of_stream_error(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(
        b'{"text": "a"}\n',
        b'{"error": {"code": "unavailable", "message": "model overloaded"}}\n',
        content_type="application/x-ndjson",
    )
    adapter = make_adapter(agent.upstream)
    payloads: list[Payload] = []
    with pytest.raises(UpstreamStatus) as caught:
        await collect(adapter.stream(make_call("Chat")), payloads)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "model overloaded" in caught.value.message
    assert bodies(payloads) == [{"text": "a"}]


async def test_json_answer_is_a_one_message_stream(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply('{"items": []}')
    adapter = make_adapter(agent.upstream)
    call = make_call("WatchThings", request("WatchThings", {"parent": "projects/p", "page_size": 2}))
    payloads = await collect(adapter.stream(call), [])
    assert bodies(payloads) == [{"items": []}]
    assert (agent.seen[0].method, agent.seen[0].path) == ("GET", "/v1/projects/p/things:watch?page_size=2")


async def test_stream_with_wrong_content_type(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply("hello", content_type="text/plain")
    adapter = make_adapter(agent.upstream)
    with pytest.raises(ContractViolation) as caught:
        await collect(adapter.stream(make_call("Chat")), [])
    assert caught.value.reason == "content_type"


async def test_stream_error_status(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = reply('{"code": "unavailable", "message": "warming up"}', status=503)
    adapter = make_adapter(agent.upstream)
    with pytest.raises(UpstreamStatus) as caught:
        await collect(adapter.stream(make_call("Chat")), [])
    assert (caught.value.code, caught.value.http_status) == (grpc.StatusCode.UNAVAILABLE, 503)


@pytest.mark.parametrize(
    ("content_type", "pieces"),
    [
        ("text/event-stream", [b'data: {"text": "ok"}\n\n', b"data: " + b"x" * 3000 + b"\n\n"]),
        ("text/event-stream", [b'data: {"text": "ok"}\n\n', b"data: " + b"x" * 600 + b"\ndata: " + b"x" * 600 + b"\n"]),
        ("application/x-ndjson", [b'{"text": "ok"}\n', b"x" * 3000]),
    ],
    ids=["sse-line", "sse-event", "ndjson"],
)
async def test_streamed_message_above_the_limit(
    agent: FakeAgent, make_adapter: MakeAdapter, content_type: str, pieces: list[bytes]
) -> None:
    agent.handler = streamed(*pieces, content_type=content_type, stall=True)
    adapter = make_adapter(agent.upstream, max_message_bytes=1024)
    payloads: list[Payload] = []
    with pytest.raises(ContractViolation) as caught:
        await collect(adapter.stream(make_call("Chat")), payloads)
    assert caught.value.reason == "too_large"
    assert bodies(payloads) == [{"text": "ok"}]


async def test_stalled_stream_times_out(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = streamed(b'data: {"text": "a"}\n\n', stall=True)
    adapter = make_adapter(agent.upstream)
    payloads: list[Payload] = []
    with pytest.raises(UpstreamTimeout):
        await collect(adapter.stream(make_call("Chat", timeout=0.3)), payloads)
    assert bodies(payloads) == [{"text": "a"}]
    await asyncio.wait_for(agent.disconnected.wait(), 10)


async def endless(request: web.Request, _: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    index = 0
    while True:
        await response.write(f'data: {{"index": {index}}}\n\n'.encode())
        index += 1
        await asyncio.sleep(0.01)


async def test_cancelling_the_caller_mid_stream_disconnects(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = endless
    adapter = make_adapter(agent.upstream)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in adapter.stream(make_call("Chat", timeout=None)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(agent.disconnected.wait(), 10)


async def test_closing_the_stream_early_disconnects(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    agent.handler = endless
    adapter = make_adapter(agent.upstream)
    stream = adapter.stream(make_call("Chat"))
    async with contextlib.aclosing(stream):
        assert bodies([await anext(stream)]) == [{"index": 0}]
    await asyncio.wait_for(agent.disconnected.wait(), 10)


async def test_a_finished_stream_leaves_the_connection_reusable(agent: FakeAgent, make_adapter: MakeAdapter) -> None:
    ports = set()

    async def sse(request: web.Request, _: bytes) -> web.StreamResponse:
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        return web.Response(body=b'data: {"text": "a"}\n\n', content_type="text/event-stream")

    agent.handler = sse
    adapter = make_adapter(agent.upstream)
    for _ in range(3):
        assert len(await collect(adapter.stream(make_call("Chat")), [])) == 1
    assert len(ports) == 1


# --- choosing an adapter -----------------------------------------------------------------


async def test_adapter_for_picks_the_protocol() -> None:
    http = adapter_for(Upstream(url="http://127.0.0.1:8080"), max_message_bytes=MAX, json_names="json")
    grpc_adapter = adapter_for(Upstream(url="http://127.0.0.1:9090", protocol="grpc"), max_message_bytes=MAX)
    assert isinstance(http, HttpJsonAdapter)
    assert isinstance(grpc_adapter, GrpcPassthroughAdapter)
    assert repr(http) == "HttpJsonAdapter(url='http://127.0.0.1:8080', max_message_bytes=65536, json_names='json')"
    assert "127.0.0.1:9090" in repr(grpc_adapter)
    await http.aclose()
    await grpc_adapter.aclose()


def test_upstream_call_is_frozen() -> None:
    call = make_call("Echo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.timeout = 1.0  # type: ignore[misc]
    assert isinstance(call, UpstreamCall)
