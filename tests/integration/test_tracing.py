"""One trace across planner → researcher → writer, exported by real sidecars to a real Phoenix.

The sidecars export over OTLP/HTTP to an Arize Phoenix server (see
`tests/integration/phoenix.py`) into a project of the test's own, named by the
`openinference.project.name` resource attribute. The test then reads the
backend like an operator would: it searches Phoenix for the planner's failed
call by agent name and error status, and checks the span tree of that trace;
the successful call's trace is checked too, including token usage.

Phoenix keeps span attributes but not the OpenTelemetry span kind, so a
sidecar CLIENT span is told from a SERVER span of the same method by
`agentmesh.source_agent`, which only CLIENT spans carry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.mesh import Messages, agent_with_sidecar, unary
from tests.integration.phoenix import PhoenixServer, RegistryUnreachable, running_phoenix
from tests.integration.procs import wait_for

ROOT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT_SPAN = "00f067aa0ba902b7"
PLAN = "planning.v1.Planner/Plan"
SEARCH = "research.v1.Researcher/Search"
DRAFT = "writing.v1.Writer/Draft"
SPANS_PER_PLAN = 5  # planner SERVER, 2 planner CLIENT, researcher SERVER, writer SERVER
EXPORT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    try:
        with running_phoenix(tmp_path_factory.mktemp("phoenix")) as server:
            yield server
    except RegistryUnreachable as exc:
        pytest.skip(f"Phoenix is not installed and the package index is unreachable: {exc}")


def _one(spans: list[dict[str, Any]], name: str, *, client: bool) -> dict[str, Any]:
    matches = [s for s in spans if s["name"] == name and ("agentmesh.source_agent" in s["attributes"]) == client]
    assert len(matches) == 1, f"expected one {'CLIENT' if client else 'SERVER'} {name} span, got {matches}"
    return matches[0]


def _plan_tree(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The five spans of one Plan call, after checking they form one trace of the expected shape."""
    tree = {
        "plan": _one(spans, PLAN, client=False),
        "search_client": _one(spans, SEARCH, client=True),
        "draft_client": _one(spans, DRAFT, client=True),
        "search": _one(spans, SEARCH, client=False),
        "draft": _one(spans, DRAFT, client=False),
    }
    assert len({s["context"]["trace_id"] for s in tree.values()}) == 1
    plan_id = tree["plan"]["context"]["span_id"]
    assert tree["search_client"]["parent_id"] == plan_id
    assert tree["draft_client"]["parent_id"] == plan_id
    assert tree["search"]["parent_id"] == tree["search_client"]["context"]["span_id"]
    assert tree["draft"]["parent_id"] == tree["draft_client"]["context"]["span_id"]
    assert tree["plan"]["attributes"]["gen_ai.agent.name"] == "planner"
    assert tree["search"]["attributes"]["gen_ai.agent.name"] == "researcher"
    assert tree["draft"]["attributes"]["gen_ai.agent.name"] == "writer"
    for client in (tree["search_client"], tree["draft_client"]):
        assert client["attributes"]["agentmesh.source_agent"] == "planner"
    return tree


def _trace(phoenix: PhoenixServer, project: str, trace_id: str) -> list[dict[str, Any]]:
    """All spans of one trace, once the backend has stored the whole Plan call."""
    found: list[dict[str, Any]] = []

    def complete() -> bool:
        found[:] = phoenix.spans(project, trace_id=trace_id)
        return len(found) >= SPANS_PER_PLAN

    wait_for(complete, what=f"{SPANS_PER_PLAN} spans of trace {trace_id} in Phoenix", timeout=EXPORT_TIMEOUT)
    return found


@pytest.mark.timeout(900)  # covers installing Phoenix on first use
def test_failed_plan_is_found_in_phoenix_as_one_trace(tmp_path: Path, phoenix: PhoenixServer) -> None:
    project = f"agentmesh-{uuid.uuid4().hex[:12]}"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.otlp_http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}",
    }
    messages = Messages()
    request = messages("planning.v1.PlanRequest", topic="distributed tracing", max_sections=1)
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
                f"/{PLAN}",
                request,
                messages.cls("planning.v1.PlanResponse"),
                timeout=30,
                metadata=(("traceparent", f"00-{ROOT_TRACE}-{ROOT_SPAN}-01"),),
            )
            assert len(reply.sections) == 1  # type: ignore[attr-defined]

            # The writer agent goes away, its sidecar stays: the Draft call fails UNAVAILABLE.
            assert writer.agent is not None
            writer.agent.stop()
            with pytest.raises(grpc.RpcError) as failed:
                unary(channel, f"/{PLAN}", request, messages.cls("planning.v1.PlanResponse"), timeout=30)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

            # Search the backend for the planner's failed call, as an operator would.
            errors: list[dict[str, Any]] = []

            def planner_error_stored() -> bool:
                errors[:] = phoenix.spans(
                    project, status_code="ERROR", attributes={"gen_ai.agent.name": "planner"}, name=PLAN
                )
                return bool(errors)

            wait_for(planner_error_stored, what="the planner's failed span in Phoenix", timeout=EXPORT_TIMEOUT)
            failing = _trace(phoenix, project, errors[0]["context"]["trace_id"])
            succeeded = _trace(phoenix, project, ROOT_TRACE)

    assert len(errors) == 1, f"one failed Plan call was made, Phoenix has {errors}"
    assert errors[0]["context"]["trace_id"] != ROOT_TRACE

    # The failed call started its own trace at the planner's sidecar: a root span in Phoenix.
    tree = _plan_tree(failing)
    assert tree["plan"]["parent_id"] is None
    roots = phoenix.spans(project, trace_id=errors[0]["context"]["trace_id"], parent_id="null")
    assert [s["context"]["span_id"] for s in roots] == [tree["plan"]["context"]["span_id"]]
    for name in ("plan", "draft_client", "draft"):
        assert tree[name]["status_code"] == "ERROR", tree[name]
        assert tree[name]["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    for name in ("search_client", "search"):
        assert tree[name]["status_code"] != "ERROR", tree[name]
        assert tree[name]["attributes"]["rpc.grpc.status_code"] == 0

    # The successful call continues the caller's trace.
    tree = _plan_tree(succeeded)
    assert tree["plan"]["parent_id"] == ROOT_SPAN
    assert all(span["status_code"] != "ERROR" for span in tree.values())
    search = tree["search"]["attributes"]
    assert search["gen_ai.operation.name"] == "invoke_agent"
    assert search["gen_ai.usage.input_tokens"] > 0
