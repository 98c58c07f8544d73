"""configure_logging / log_access: one JSON object per line, shared fields, access log."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from agentmesh.telemetry import ACCESS_LOGGER, configure_logging, flush_access_log, log_access

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


pytestmark = pytest.mark.usefixtures("logging_state")


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    flush_access_log()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def access(**fields: Any) -> None:
    log_access(
        **{
            "direction": "inbound",
            "source": "a",
            "destination": "b",
            "version": "v1",
            "method": "/p.S/M",
            "code": "OK",
            "duration_ms": 1.0,
            **fields,
        }
    )


def test_one_json_object_per_line_with_the_shared_fields(out: io.StringIO) -> None:
    configure_logging("info", component="sidecar", agent="writer", stream=out)

    logging.getLogger("sidecar.inbound").info("listening on %s", "127.0.0.1:15006", extra={"port": 15006})

    (entry,) = lines(out)
    assert TS.match(entry.pop("ts"))
    assert entry == {
        "level": "info",
        "component": "sidecar",
        "agent": "writer",
        "logger": "sidecar.inbound",
        "msg": "listening on 127.0.0.1:15006",
        "port": 15006,
    }


def test_agent_is_omitted_when_unknown(out: io.StringIO) -> None:
    configure_logging(component="control-plane", stream=out)

    logging.getLogger("control_plane").warning("no agents registered")

    (entry,) = lines(out)
    assert "agent" not in entry
    assert (entry["component"], entry["level"]) == ("control-plane", "warning")


def test_multiline_messages_stay_on_one_line(out: io.StringIO) -> None:
    configure_logging(component="cli", stream=out)

    logging.getLogger("x").info("first\nsecond")

    assert out.getvalue().count("\n") == 1
    assert lines(out)[0]["msg"] == "first\nsecond"


def test_exception_becomes_error_and_stack(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)

    try:
        raise ConnectionError("agent refused the connection")
    except ConnectionError:
        logging.getLogger("sidecar.upstream").exception("upstream call failed")

    (entry,) = lines(out)
    assert entry["level"] == "error"
    assert entry["error"] == "ConnectionError: agent refused the connection"
    assert "Traceback" in entry["stack"]
    assert "raise ConnectionError" in entry["stack"]


def test_calling_twice_does_not_duplicate_lines(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)
    configure_logging(component="sidecar", agent="writer", stream=out)

    logging.getLogger("x").info("once")

    (entry,) = lines(out)
    assert entry["agent"] == "writer"


def test_level_filters_records(out: io.StringIO) -> None:
    configure_logging("warning", component="sidecar", stream=out)

    logging.getLogger("x").info("hidden")
    logging.getLogger("x").error("shown")

    assert [e["msg"] for e in lines(out)] == ["shown"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", component="sidecar")


def test_extra_fields_never_replace_core_fields(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)

    logging.getLogger("x").info("hello", extra={"level": "fake", "component": "fake", "blob": object()})

    (entry,) = lines(out)
    assert (entry["level"], entry["component"]) == ("info", "sidecar")
    assert (entry["level_"], entry["component_"]) == ("fake", "fake")
    assert entry["blob"].startswith("<object object")


def test_active_span_adds_trace_ids(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("call") as span:
        logging.getLogger("x").info("inside")
    logging.getLogger("x").info("outside")

    inside, outside = lines(out)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside


def test_access_line(out: io.StringIO) -> None:
    configure_logging("warning", component="sidecar", agent="writer", stream=out)

    log_access(
        direction="inbound",
        source="planner",
        destination="writer",
        version="v1",
        method="/scribe.v1.Scribe/Draft",
        code="OK",
        duration_ms=12.34567,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        request_bytes=42,
        module="custom",
    )

    (entry,) = lines(out)
    assert entry["msg"] == "access"
    assert entry["logger"] == ACCESS_LOGGER
    assert entry["level"] == "info"  # written although the process level is warning
    assert entry["duration_ms"] == 12.346
    assert entry["attempt"] == 1
    assert entry["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert entry["request_bytes"] == 42
    assert entry["module"] == "custom"
    for key in ("direction", "source", "destination", "version", "method", "code", "span_id"):
        assert key in entry


def test_access_line_always_has_trace_id(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)

    log_access(
        direction="outbound", source="a", destination="b", version="v1", method="/p.S/M", code="UNAVAILABLE",
        duration_ms=1.0, attempt=2,
    )  # fmt: skip

    (entry,) = lines(out)
    assert entry["trace_id"] == ""
    assert entry["attempt"] == 2


def test_access_log_can_be_turned_off(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out, access_log=False)

    log_access(
        direction="inbound", source="a", destination="b", version="v1", method="/p.S/M", code="OK", duration_ms=1
    )
    logging.getLogger("x").info("still logging")

    assert [e["msg"] for e in lines(out)] == ["still logging"]


def test_default_stream_is_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(component="cli")

    logging.getLogger("x").info("to stderr")

    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.splitlines()[-1])["msg"] == "to stderr"


def test_access_lines_are_written_without_an_explicit_flush(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)

    for n in range(3):
        access(attempt=n + 1)

    deadline = time.monotonic() + 10
    while out.getvalue().count("\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [json.loads(line)["attempt"] for line in out.getvalue().splitlines()] == [1, 2, 3]


def test_other_log_lines_come_after_the_access_lines_before_them(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)

    access(code="OK")
    logging.getLogger("x").warning("between")
    access(code="UNAVAILABLE")

    assert [(e["msg"], e.get("code")) for e in lines(out)] == [
        ("access", "OK"),
        ("between", None),
        ("access", "UNAVAILABLE"),
    ]


def test_access_line_escapes_like_json_and_spells_odd_values(out: io.StringIO) -> None:
    configure_logging(component="sidecar", agent='we"ird', stream=out)

    access(method='/p.S/"M"\n', duration_ms=float("nan"), attempt=True, source=None, level="x", blob=object())

    (entry,) = lines(out)
    assert entry["agent"] == 'we"ird'
    assert entry["method"] == '/p.S/"M"\n'
    assert entry["duration_ms"] != entry["duration_ms"]  # NaN, as json.dumps spells it
    assert (entry["attempt"], entry["source"]) == (True, None)
    assert (entry["level"], entry["level_"]) == ("info", "x")
    assert entry["blob"].startswith("<object object")


def test_reconfiguring_writes_pending_lines_to_the_old_stream(out: io.StringIO) -> None:
    configure_logging(component="sidecar", stream=out)
    access(code="OK")

    configure_logging(component="sidecar", stream=io.StringIO())

    assert [e["code"] for e in [json.loads(line) for line in out.getvalue().splitlines()]] == ["OK"]


def test_a_closed_stream_never_fails_the_caller() -> None:
    broken = io.StringIO()
    configure_logging(component="sidecar", stream=broken)
    broken.close()

    access()
    flush_access_log()
    access()


def test_without_configure_logging_access_lines_are_log_records(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging(component="sidecar", stream=io.StringIO())
    for handler in [h for h in logging.getLogger().handlers if type(h).__name__ == "_JsonHandler"]:
        logging.getLogger().removeHandler(handler)

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        access(code="NOT_FOUND")

    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert record.getMessage() == "access"
    assert vars(record)["agentmesh_fields"]["code"] == "NOT_FOUND"


def test_no_access_line_is_lost_when_the_process_exits() -> None:
    script = (
        "import sys\n"
        "from agentmesh.telemetry import configure_logging, log_access\n"
        "configure_logging(component='sidecar', stream=sys.stdout)\n"
        "for n in range(2000):\n"
        "    log_access(direction='inbound', source='a', destination='b', version='v1', method='/p.S/M',\n"
        "               code='OK', duration_ms=1.0, attempt=n)\n"
    )

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)

    assert [json.loads(line)["attempt"] for line in done.stdout.splitlines()] == list(range(2000))
