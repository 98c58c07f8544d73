"""One trace across planner → researcher → writer, exported over OTLP by real sidecars.

The trace receiver is a minimal OTLP/HTTP endpoint in the test (an
OpenTelemetry Collector binary is not available on this machine); it decodes
the standard ExportTraceServiceRequest the sidecars' exporters send.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.integration.mesh import Messages, agent_with_sidecar, unary
from tests.integration.procs import wait_for

ROOT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT_SPAN = "00f067aa0ba902b7"


class OtlpReceiver:
    """Collects spans posted to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        (
                            a.value.string_value
                            for a in resource_spans.resource.attributes
                            if a.key == "agentmesh.agent"
                        ),
                        "",
                    )
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append(
                                {
                                    "agent": service,
                                    "name": span.name,
                                    "kind": span.kind,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "attributes": {a.key: a.value for a in span.attributes},
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def find(self, agent: str, name: str, kind: int) -> dict[str, Any]:
        matches = [s for s in self.spans if s["agent"] == agent and s["name"] == name and s["kind"] == kind]
        assert len(matches) == 1, f"expected one {agent} {name} span, got {matches}"
        return matches[0]


SERVER, CLIENT = 2, 3  # opentelemetry.proto SpanKind values


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_chain_is_one_trace(tmp_path: Path, receiver: OtlpReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    messages = Messages()
    with (
        agent_with_sidecar(tmp_path, "researcher", sidecar_env=env) as researcher,
        agent_with_sidecar(tmp_path, "writer", sidecar_env=env) as writer,
    ):
        targets = [
            {"name": "researcher", "address": researcher.ports.inbound_address},
            {"name": "writer", "address": writer.ports.inbound_address},
        ]
        with (
            agent_with_sidecar(tmp_path, "planner", targets=targets, sidecar_env=env) as planner,
            grpc.insecure_channel(planner.ports.inbound_address) as channel,
        ):
            reply = unary(
                channel,
                "/planning.v1.Planner/Plan",
                messages("planning.v1.PlanRequest", topic="distributed tracing", max_sections=1),
                messages.cls("planning.v1.PlanResponse"),
                timeout=30,
                metadata=(("traceparent", f"00-{ROOT_TRACE}-{ROOT_SPAN}-01"), ("baggage", "tenant=beta")),
            )
            assert len(reply.sections) == 1  # type: ignore[attr-defined]
            expected = 5  # planner SERVER, 2 planner CLIENT, researcher SERVER, writer SERVER
            wait_for(lambda: len(receiver.spans) >= expected, what="spans exported", timeout=30)

    plan = receiver.find("planner", "planning.v1.Planner/Plan", SERVER)
    search_client = receiver.find("planner", "research.v1.Researcher/Search", CLIENT)
    draft_client = receiver.find("planner", "writing.v1.Writer/Draft", CLIENT)
    search = receiver.find("researcher", "research.v1.Researcher/Search", SERVER)
    draft = receiver.find("writer", "writing.v1.Writer/Draft", SERVER)
    assert {s["trace_id"] for s in (plan, search_client, draft_client, search, draft)} == {ROOT_TRACE}
    assert plan["parent"] == ROOT_SPAN
    assert search_client["parent"] == plan["span_id"] and draft_client["parent"] == plan["span_id"]
    assert search["parent"] == search_client["span_id"]
    assert draft["parent"] == draft_client["span_id"]
    assert search["attributes"]["gen_ai.operation.name"].string_value == "invoke_agent"
    assert search["attributes"]["gen_ai.agent.name"].string_value == "researcher"
    assert search["attributes"]["gen_ai.usage.input_tokens"].int_value > 0
    assert search["attributes"]["rpc.grpc.status_code"].int_value == 0
