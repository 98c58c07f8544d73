"""AccessRoute: the access line of one call shape, its constant part formatted once, equals log_access's."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from agentmesh.telemetry import ACCESS_LOGGER, AccessRoute, configure_logging, flush_access_log, log_access

pytestmark = pytest.mark.usefixtures("logging_state")


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    flush_access_log()
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    for entry in entries:
        entry.pop("ts")
    return entries


ROUTE = AccessRoute(
    direction="inbound", destination="shop", version="v3", method="/shop.v1.Shop/GetItem", fields=("policy", "caller")
)


def test_a_prepared_line_is_the_line_log_access_writes() -> None:
    out = io.StringIO()
    configure_logging("info", component="sidecar", agent="shop", stream=out)

    ROUTE.log("planner", "OK", 1.23456, trace_id="ab" * 16, span_id="cd" * 8, values=("", "spiffe://x/planner"))
    ROUTE.log(
        "unknown", "PERMISSION_DENIED", 0.5, values=("p/deny", "unauthenticated"), extra={"claimed_source": "planner"}
    )
    common: dict[str, Any] = {
        "direction": "inbound",
        "destination": "shop",
        "version": "v3",
        "method": "/shop.v1.Shop/GetItem",
    }
    log_access(
        **common,
        source="planner",
        code="OK",
        duration_ms=1.23456,
        trace_id="ab" * 16,
        span_id="cd" * 8,
        policy="",
        caller="spiffe://x/planner",
    )
    log_access(
        **common,
        source="unknown",
        code="PERMISSION_DENIED",
        duration_ms=0.5,
        policy="p/deny",
        caller="unauthenticated",
        claimed_source="planner",
    )

    prepared_ok, prepared_denied, plain_ok, plain_denied = lines(out)
    assert prepared_ok == plain_ok
    assert prepared_denied == plain_denied
    assert list(prepared_denied) == list(plain_denied)  # same field order
    assert prepared_ok["duration_ms"] == 1.235 and prepared_denied["claimed_source"] == "planner"


def test_field_names_the_formatter_owns_get_an_underscore_and_non_strings_are_encoded() -> None:
    out = io.StringIO()
    configure_logging("info", component="sidecar", stream=out)
    route = AccessRoute(direction="outbound", destination="b", version="v1", method="/p.S/M", fields=("msg", "n"))

    route.log("a", "OK", 2.0, attempt=3, values=("hello", 7), extra={"level": ["x"]})
    route.log(None, "OK", 2.0, values=("x", 1))  # type: ignore[arg-type]  # a caller's mistake still logs

    entry, odd = lines(out)
    assert (entry["msg"], entry["msg_"], entry["n"], entry["level_"], entry["attempt"]) == (
        "access",
        "hello",
        7,
        ["x"],
        3,
    )
    assert odd["source"] is None and odd["msg_"] == "x"


def test_before_configure_logging_lines_go_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger(ACCESS_LOGGER).disabled = False
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        ROUTE.log("planner", "OK", 1.0, values=("", "id"))
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    fields = record.__dict__["agentmesh_fields"]
    assert (fields["method"], fields["source"], fields["policy"], fields["caller"]) == (
        "/shop.v1.Shop/GetItem",
        "planner",
        "",
        "id",
    )


def test_a_disabled_access_log_writes_nothing() -> None:
    out = io.StringIO()
    configure_logging("info", component="sidecar", stream=out, access_log=False)
    ROUTE.log("planner", "OK", 1.0, values=("", "id"))
    assert lines(out) == []
