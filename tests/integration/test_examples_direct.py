"""The example agents as real processes, called directly (no sidecar).

Each agent starts on a free port (`--port 0`; it prints where it listens) and
is called the way its sidecar would call it: HTTP/JSON at the Connect path or
the google.api.http path, SSE or NDJSON for streams, gRPC for the summarizer
(with message classes built from its committed descriptor set). Answers are
checked against the agent's own contract with the sidecar's MessageChecker,
and the test hooks are checked to break it. The planner talks to a fake
egress served by this test, which forwards to the real researcher and writer
and records what the planner sent.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format, message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.protoc import compile_descriptor_set
from sidecar.contract import ContractSet, MessageChecker, MethodContract
from sidecar.errors import ContractViolation

AGENTS = Path(__file__).resolve().parents[2] / "examples" / "agents"
TRACE_HEADERS = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=opaque",
    "baggage": "tenant=acme",
}
_LISTENING = re.compile(r"listening on (?:http://)?(?P<host>[\d.]+):(?P<port>\d+)")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CHECKER = MessageChecker()


@dataclass
class Agent:
    name: str
    popen: subprocess.Popen[str]
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        assert self.popen.stdout is not None
        self.popen.stdout.close()
        return self.popen.returncode


def _start(tmp: Path, name: str, script: str, *args: str, env: dict[str, str] | None = None) -> Agent:
    log = tmp / f"{name}.log"
    with log.open("w") as stderr:
        popen = subprocess.Popen(
            [sys.executable, str(AGENTS / script), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
    assert popen.stdout is not None
    line = popen.stdout.readline()
    match = _LISTENING.search(line)
    if match is None:
        popen.kill()
        popen.wait(5)
        popen.stdout.close()
        raise AssertionError(f"{name} did not start: {line!r}\n{log.read_text()}")
    return Agent(name, popen, match["host"], int(match["port"]), log)


def _running(agent: Agent) -> Iterator[Agent]:
    yield agent
    code = agent.stop()
    assert code == 0, f"{agent.name} exited with {code} on SIGTERM:\n{agent.log.read_text()}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _send(request: urllib.request.Request, timeout: float) -> Reply:
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as exc:
        try:
            return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())
        finally:
            exc.close()


def post(url: str, payload: Any, headers: dict[str, str] | None = None, *, timeout: float = 15) -> Reply:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return _send(urllib.request.Request(url, data=data, headers=all_headers, method="POST"), timeout)


def get(url: str) -> Reply:
    return _send(urllib.request.Request(url), 5)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents")


@pytest.fixture(scope="module")
def contracts() -> dict[str, ContractSet]:
    compiled = {
        name: ContractSet.compile(compile_descriptor_set([AGENTS / name / f"{name}.proto"]))
        for name in ("planner", "researcher", "writer")
    }
    binpb = (AGENTS / "summarizer" / "summarizer.binpb").read_bytes()
    compiled["summarizer"] = ContractSet.compile(descriptor_pb2.FileDescriptorSet.FromString(binpb))
    return compiled


def method(contracts: dict[str, ContractSet], path: str) -> MethodContract:
    package = path.lstrip("/").split(".", 1)[0]
    agent = {"research": "researcher", "writing": "writer", "planning": "planner", "summarize": "summarizer"}[package]
    return contracts[agent].method(path)


@pytest.fixture(scope="module")
def researcher(logs: Path) -> Iterator[Agent]:
    yield from _running(_start(logs, "researcher", "researcher/agent.py", "--version", "v1"))


@pytest.fixture(scope="module")
def researcher_v2(logs: Path) -> Iterator[Agent]:
    yield from _running(_start(logs, "researcher-v2", "researcher/agent.py", "--version", "v2"))


@pytest.fixture(scope="module")
def writer(logs: Path) -> Iterator[Agent]:
    yield from _running(_start(logs, "writer", "writer/agent.py"))


@pytest.fixture(scope="module")
def summarizer(logs: Path) -> Iterator[Agent]:
    yield from _running(_start(logs, "summarizer", "summarizer/agent.py"))


class FakeEgress(ThreadingHTTPServer):
    """Stands in for the planner's sidecar egress: forwards to the real agents, records every call."""

    daemon_threads = True

    def __init__(self, upstreams: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _EgressHandler)
        self.upstreams = upstreams
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        self.failures: dict[str, tuple[int, bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _EgressHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        egress = self.server
        assert isinstance(egress, FakeEgress)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        agent, _, rpc = self.path.lstrip("/").partition("/")
        egress.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
        if agent in egress.failures:
            status, payload = egress.failures[agent]
        else:
            reply = post(f"{egress.upstreams[agent]}/{rpc}", body)
            status, payload = reply.status, reply.body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_egress(researcher: Agent, writer: Agent) -> Iterator[FakeEgress]:
    server = FakeEgress({"researcher": researcher.url, "writer": writer.url})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def egress(fake_egress: FakeEgress) -> FakeEgress:
    fake_egress.seen.clear()
    fake_egress.failures.clear()
    return fake_egress


@pytest.fixture(scope="module")
def planner(logs: Path, fake_egress: FakeEgress) -> Iterator[Agent]:
    env = {"AGENTMESH_EGRESS_HTTP": fake_egress.url}
    yield from _running(_start(logs, "planner", "planner/agent.py", env=env))


@pytest.fixture(scope="module")
def stranded_planner(logs: Path) -> Iterator[Agent]:
    """A planner whose egress address has nothing listening."""
    env = {"AGENTMESH_EGRESS_HTTP": f"http://127.0.0.1:{_closed_port()}"}
    yield from _running(_start(logs, "stranded-planner", "planner/agent.py", env=env))


# --- every HTTP agent ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["researcher", "writer", "planner"])
def test_healthz_and_unknown_paths(name: str, request: pytest.FixtureRequest):
    agent: Agent = request.getfixturevalue(name)
    health = get(f"{agent.url}/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})
    missing = post(f"{agent.url}/nope.v1.Nope/Nothing", {})
    assert missing.status == 404
    assert missing.json()["code"] == "not_found"
    garbage = post(f"{agent.url}/{_first_path(name)}", b"{not json")
    assert garbage.status == 400
    assert garbage.json()["code"] == "invalid_argument"


def _first_path(name: str) -> str:
    return {
        "researcher": "research.v1.Researcher/Search",
        "writer": "writing.v1.Writer/Draft",
        "planner": "planning.v1.Planner/Plan",
    }[name]


# --- researcher -------------------------------------------------------------------------------------------------


SEARCH = "/research.v1.Researcher/Search"


def test_search_answers_within_the_contract(researcher: Agent, contracts: dict[str, ContractSet]):
    reply = post(f"{researcher.url}{SEARCH}", {"query": "tidal energy", "max_results": 4})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    response: Any = CHECKER.from_json(method(contracts, SEARCH), reply.body, side="response")
    assert len(response.findings) == 4
    assert response.model == "research-sim-1"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_search_serves_its_http_rule_path_with_the_same_answer(researcher: Agent):
    body = {"query": "tidal energy", "max_results": 3}
    connect = post(f"{researcher.url}{SEARCH}", body)
    rule = post(f"{researcher.url}/v1/search", body)
    assert (connect.status, rule.status) == (200, 200)
    assert connect.json() == rule.json()


def test_search_v2_answers_differently(researcher: Agent, researcher_v2: Agent, contracts: dict[str, ContractSet]):
    body = {"query": "tidal energy", "max_results": 3}
    v1 = post(f"{researcher.url}{SEARCH}", body).json()
    reply = post(f"{researcher_v2.url}{SEARCH}", body)
    CHECKER.from_json(method(contracts, SEARCH), reply.body, side="response")
    v2 = reply.json()
    assert v2["model"] == "research-sim-2"
    assert v2["findings"] != v1["findings"]


def test_search_accepts_a_chunked_request_body(researcher: Agent):
    connection = http.client.HTTPConnection(researcher.host, researcher.port, timeout=15)
    try:
        body = iter([b'{"query": "tidal', b' energy", "max_results": 2}'])
        connection.request("POST", SEARCH, body, {"Content-Type": "application/json"}, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 200
        assert len(json.loads(response.read())["findings"]) == 2
        # The connection stays usable for the next call.
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b'{"status": "ok"}'
    finally:
        connection.close()


def test_search_reads_mesh_headers(researcher: Agent):
    headers = {**TRACE_HEADERS, "Connect-Timeout-Ms": "2500", "x-agentmesh-config-model": "research-large"}
    reply = post(f"{researcher.url}/v1/search", {"query": "tidal energy", "max_results": 1}, headers)
    assert reply.json()["model"] == "research-large"
    last = get(f"{researcher.url}/stats").json()["last_headers"]
    assert last == {
        **TRACE_HEADERS,
        "connect-timeout-ms": "2500",
        "x-agentmesh-config-model": "research-large",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"query": "ab", "max_results": 1}, "query"),
        ({"query": "tidal energy", "max_results": 11}, "max_results"),
        ([1, 2], "JSON object"),
    ],
)
def test_search_rejects_bad_requests(researcher: Agent, body: Any, message: str):
    reply = post(f"{researcher.url}{SEARCH}", body)
    assert reply.status == 400
    error = reply.json()
    assert error["code"] == "invalid_argument"
    assert message in error["message"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [("__invalid__", "rule_violation"), ("__unknown__", "unknown_field"), ("__badjson__", "invalid_json")],
)
def test_search_hooks_break_the_contract(researcher: Agent, contracts: dict[str, ContractSet], query: str, reason: str):
    reply = post(f"{researcher.url}{SEARCH}", {"query": query, "max_results": 2})
    assert reply.status == 200
    with pytest.raises(ContractViolation) as caught:
        CHECKER.from_json(method(contracts, SEARCH), reply.body, side="response")
    assert caught.value.reason == reason


def test_search_error_hook_answers_a_connect_error(researcher: Agent):
    reply = post(f"{researcher.url}/v1/search", {"query": "__error__", "max_results": 2})
    assert reply.status == 503
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()
    assert error["code"] == "unavailable"
    assert "__error__" in error["message"]


def test_search_slow_hook_does_not_answer_promptly(researcher: Agent):
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post(f"{researcher.url}{SEARCH}", {"query": "__slow__", "max_results": 1}, timeout=0.5)
    # The agent keeps serving other calls meanwhile.
    assert post(f"{researcher.url}{SEARCH}", {"query": "tidal energy", "max_results": 1}).status == 200


# --- writer -----------------------------------------------------------------------------------------------------


DRAFT = "/writing.v1.Writer/Draft"
STREAM_DRAFT = "/writing.v1.Writer/StreamDraft"
DRAFT_REQUEST = {"topic": "Tidal energy", "facts": ["tides are predictable", "turbines sit on the seabed"]}


def _stream(agent: Agent, body: Any, *, ndjson: bool) -> tuple[str, list[tuple[str, Any]]]:
    """Reads a whole StreamDraft answer; returns its content type and (event, data) pairs."""
    headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson" if ndjson else "text/event-stream"}
    connection = http.client.HTTPConnection(agent.host, agent.port, timeout=15)
    try:
        connection.request("POST", STREAM_DRAFT, json.dumps(body), headers)
        response = connection.getresponse()
        assert response.status == 200
        content_type = response.getheader("Content-Type", "")
        text = response.read().decode()
    finally:
        connection.close()
    if ndjson:
        events = [json.loads(line) for line in text.splitlines() if line]
        return content_type, [("error", e["error"]) if "error" in e else ("message", e) for e in events]
    parsed = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        parsed.append((fields.get("event", "message"), json.loads(fields["data"])))
    return content_type, parsed


def test_draft_answers_within_the_contract(writer: Agent, contracts: dict[str, ContractSet]):
    reply = post(f"{writer.url}{DRAFT}", {**DRAFT_REQUEST, "style": "STYLE_DETAILED"})
    assert reply.status == 200
    response: Any = CHECKER.from_json(method(contracts, DRAFT), reply.body, side="response")
    assert response.text.startswith("This draft looks at Tidal energy.")
    assert response.word_count == len(response.text.split())
    assert response.usage.output_tokens > 0


@pytest.mark.parametrize("ndjson", [False, True], ids=["sse", "ndjson"])
def test_stream_draft_chunks_join_to_the_draft(writer: Agent, contracts: dict[str, ContractSet], ndjson: bool):
    content_type, events = _stream(writer, {**DRAFT_REQUEST, "chunk_delay_ms": 1}, ndjson=ndjson)
    assert content_type == ("application/x-ndjson" if ndjson else "text/event-stream")
    assert {name for name, _ in events} == {"message"}
    chunks: list[Any] = [
        CHECKER.from_json(method(contracts, STREAM_DRAFT), json.dumps(data), side="response") for _, data in events
    ]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.HasField("usage") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    whole = post(f"{writer.url}{DRAFT}", DRAFT_REQUEST).json()
    assert "".join(c.text for c in chunks) == whole["text"]


@pytest.mark.parametrize("ndjson", [False, True], ids=["sse", "ndjson"])
def test_stream_error_hook_ends_the_stream_with_an_error(writer: Agent, ndjson: bool):
    body = {"topic": "__stream_error__", "facts": ["a", "b", "c"], "chunk_delay_ms": 0}
    _, events = _stream(writer, body, ndjson=ndjson)
    assert [name for name, _ in events] == ["message", "message", "error"]
    assert events[-1][1]["code"] == "unavailable"


def test_writer_error_hook_fails_before_streaming(writer: Agent):
    reply = post(f"{writer.url}{STREAM_DRAFT}", {"topic": "__error__"})
    assert reply.status == 503
    assert reply.json()["code"] == "unavailable"


@pytest.mark.parametrize(
    "body", [{"topic": ""}, {"topic": "t", "chunk_delay_ms": 5000}, {"topic": "t", "style": "STYLE_FANCY"}]
)
def test_writer_rejects_bad_requests(writer: Agent, body: dict[str, Any]):
    for path in (DRAFT, STREAM_DRAFT):
        reply = post(f"{writer.url}{path}", body)
        assert reply.status == 400
        assert reply.json()["code"] == "invalid_argument"


def test_writer_stops_a_stream_its_caller_abandons(writer: Agent):
    before = get(f"{writer.url}/stats").json()["streams_cancelled"]
    body = {"topic": "Tides", "facts": [f"fact {i}" for i in range(10)], "chunk_delay_ms": 100}
    connection = http.client.HTTPConnection(writer.host, writer.port, timeout=15)
    try:
        connection.request("POST", STREAM_DRAFT, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.readline().startswith(b"data: ")
        response.close()
    finally:
        connection.close()
    wait_for(
        lambda: get(f"{writer.url}/stats").json()["streams_cancelled"] > before, "the writer to notice the cancellation"
    )


# --- planner ----------------------------------------------------------------------------------------------------


PLAN = "/planning.v1.Planner/Plan"


def test_plan_calls_researcher_and_writer_through_the_egress(
    planner: Agent, egress: FakeEgress, contracts: dict[str, ContractSet]
):
    headers = {**TRACE_HEADERS, "Connect-Timeout-Ms": "20000"}
    reply = post(f"{planner.url}{PLAN}", {"topic": "tidal energy", "max_sections": 2}, headers)
    assert reply.status == 200, reply.body
    response: Any = CHECKER.from_json(method(contracts, PLAN), reply.body, side="response")
    assert [s.title for s in response.sections] == ["Background of tidal energy", "Current state of tidal energy"]
    assert all(len(s.sources) == 3 and s.research_summary for s in response.sections)
    assert response.draft.startswith("This draft looks at tidal energy.")
    assert [path for path, _, _ in egress.seen] == [
        "/researcher/research.v1.Researcher/Search",
        "/researcher/research.v1.Researcher/Search",
        "/writer/writing.v1.Writer/Draft",
    ]
    for _, sent, _ in egress.seen:
        assert {k: sent[k] for k in TRACE_HEADERS} == TRACE_HEADERS
        assert 0 < int(sent["connect-timeout-ms"]) <= 20000
        assert sent["content-type"] == "application/json"
    searches = [body for path, _, body in egress.seen if "Search" in path]
    assert searches[0] == {"query": "tidal energy background", "max_results": 3}
    # The downstream usage is part of the plan's usage.
    research_usage = [post(f"{egress.upstreams['researcher']}{SEARCH}", s).json()["usage"] for s in searches]
    assert response.usage.output_tokens > sum(u["output_tokens"] for u in research_usage)


def test_plan_without_a_deadline_sends_none(planner: Agent, egress: FakeEgress):
    assert post(f"{planner.url}{PLAN}", {"topic": "tidal energy", "max_sections": 1}).status == 200
    assert all("connect-timeout-ms" not in sent and "traceparent" not in sent for _, sent, _ in egress.seen)


def test_plan_maps_a_downstream_error(planner: Agent, egress: FakeEgress):
    details = [{"type": "google.rpc.ErrorInfo", "value": "", "debug": {"reason": "no_route"}}]
    failure = {"code": "unavailable", "message": "no healthy endpoint for writer", "details": details}
    egress.failures["writer"] = (503, json.dumps(failure).encode())
    reply = post(f"{planner.url}{PLAN}", {"topic": "tidal energy", "max_sections": 1})
    assert reply.status == 503
    error = reply.json()
    assert error["code"] == "unavailable"
    assert error["message"] == ("writer writing.v1.Writer/Draft failed: unavailable: no healthy endpoint for writer")
    assert error["details"] == details


def test_plan_hides_a_downstream_invalid_argument_from_its_caller(planner: Agent, egress: FakeEgress):
    egress.failures["researcher"] = (400, b'{"code": "invalid_argument", "message": "query: too long"}')
    reply = post(f"{planner.url}{PLAN}", {"topic": "tidal energy", "max_sections": 1})
    assert reply.status == 500
    assert reply.json()["code"] == "internal"
    assert "query: too long" in reply.json()["message"]


def test_plan_fails_clearly_when_its_egress_is_unreachable(stranded_planner: Agent):
    reply = post(f"{stranded_planner.url}{PLAN}", {"topic": "tidal energy", "max_sections": 1})
    assert reply.status == 503
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()
    assert error["code"] == "unavailable"
    egress_url = get(f"{stranded_planner.url}/stats").json()["egress"]
    assert error["message"].startswith(
        f"researcher research.v1.Researcher/Search: cannot reach the mesh egress at {egress_url}"
    )


def test_plan_rejects_a_bad_request_without_calling_anyone(planner: Agent, egress: FakeEgress):
    reply = post(f"{planner.url}{PLAN}", {"topic": "ab", "max_sections": 1})
    assert reply.status == 400
    assert reply.json()["code"] == "invalid_argument"
    assert egress.seen == []


# --- summarizer (gRPC) ------------------------------------------------------------------------------------------


SUMMARIZE = "/summarize.v1.Summarizer/Summarize"
STREAM_SUMMARY = "/summarize.v1.Summarizer/StreamSummary"
TEXT = (
    "Tides rise and fall twice a day. Tidal turbines turn the moving water into power. "
    "The moon pulls the water, and the tides follow the moon. Fish swim near the turbines."
)


@pytest.fixture(scope="module")
def channel(summarizer: Agent) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(summarizer.address) as opened:
        yield opened


def _request(contracts: dict[str, ContractSet], **fields: Any) -> message.Message:
    return method(contracts, SUMMARIZE).request_class(**fields)


def _unary(channel: grpc.Channel, contracts: dict[str, ContractSet]) -> grpc.UnaryUnaryMultiCallable:
    m = method(contracts, SUMMARIZE)
    return channel.unary_unary(
        m.path, request_serializer=m.request_class.SerializeToString, response_deserializer=m.response_class.FromString
    )


def _streaming(channel: grpc.Channel, contracts: dict[str, ContractSet]) -> grpc.UnaryStreamMultiCallable:
    m = method(contracts, STREAM_SUMMARY)
    return channel.unary_stream(
        m.path, request_serializer=m.request_class.SerializeToString, response_deserializer=m.response_class.FromString
    )


def test_summarizer_serves_grpc_health(channel: grpc.Channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "summarize.v1.Summarizer"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_summarize_answers_within_the_contract(channel: grpc.Channel, contracts: dict[str, ContractSet]):
    response: Any = _unary(channel, contracts)(_request(contracts, text=TEXT, max_words=20), timeout=10)
    CHECKER.check(response, side="response")
    assert 0 < len(response.summary.split()) <= 20
    assert response.model == "summarizer-sim-1"
    assert response.usage.input_tokens > response.usage.output_tokens > 0
    again: Any = _unary(channel, contracts)(_request(contracts, text=TEXT, max_words=20), timeout=10)
    assert json_format.MessageToDict(again) == json_format.MessageToDict(response)


def test_stream_summary_chunks_join_to_the_summary(channel: grpc.Channel, contracts: dict[str, ContractSet]):
    request = _request(contracts, text=TEXT, max_words=20)
    chunks: list[Any] = list(_streaming(channel, contracts)(request, timeout=10))
    for chunk in chunks:
        CHECKER.check(chunk, side="response")
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.HasField("usage") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    whole: Any = _unary(channel, contracts)(request, timeout=10)
    assert " ".join(c.text for c in chunks) == whole.summary


def test_summarizer_reads_config_metadata(channel: grpc.Channel, contracts: dict[str, ContractSet]):
    metadata = (("x-agentmesh-config-model", "summarizer-large"), ("traceparent", TRACE_HEADERS["traceparent"]))
    response: Any = _unary(channel, contracts)(
        _request(contracts, text=TEXT, max_words=5), metadata=metadata, timeout=10
    )
    assert response.model == "summarizer-large"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"text": "", "max_words": 5}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"text": TEXT, "max_words": 0}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"text": "__error__", "max_words": 5}, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_summarizer_errors(
    channel: grpc.Channel, contracts: dict[str, ContractSet], fields: dict[str, Any], code: grpc.StatusCode
):
    for call in (
        _unary(channel, contracts),
        lambda r, timeout: list(_streaming(channel, contracts)(r, timeout=timeout)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(_request(contracts, **fields), timeout=10)
        assert caught.value.code() == code


def test_summarizer_invalid_hook_breaks_the_contract(channel: grpc.Channel, contracts: dict[str, ContractSet]):
    response = _unary(channel, contracts)(_request(contracts, text="__invalid__", max_words=5), timeout=10)
    with pytest.raises(ContractViolation) as caught:
        CHECKER.check(response, side="response")
    assert caught.value.reason == "rule_violation"


def test_summarizer_slow_hook_gives_way_to_the_deadline(channel: grpc.Channel, contracts: dict[str, ContractSet]):
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, contracts)(_request(contracts, text="__slow__", max_words=5), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
