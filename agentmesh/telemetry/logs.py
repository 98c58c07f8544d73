"""One structured JSON log format for every AgentMesh process.

The sidecar, the control plane and the CLI all log through the standard
`logging` module; `configure_logging` installs one handler on the root logger
that writes one JSON object per line (stderr by default):

    {"ts": "2025-01-02T03:04:05.678Z", "level": "info", "component": "sidecar",
     "agent": "researcher", "logger": "sidecar.inbound", "msg": "listening", "port": 15006}

Fields passed with `extra=` become top-level keys; an exception becomes
`error` (type and message) and `stack`. Inside an active OpenTelemetry span the
line carries `trace_id`/`span_id`, so logs join traces in Grafana.

The access log is the `agentmesh.access` logger: one line per call, written by
`log_access` from the metrics/access-log step at the end of the request path.
Its level is independent of the process log level (like Envoy's access log),
and a disabled access log costs one `isEnabledFor` check per call.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any, TextIO

from opentelemetry import trace

ACCESS_LOGGER = "agentmesh.access"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)
# Keys the formatter owns; an `extra` field with one of these names is kept as "<name>_".
_CORE_KEYS = frozenset({"ts", "level", "component", "agent", "logger", "msg", "error", "stack"})
# log_access passes its fields as one dict under this attribute: no clash with LogRecord names.
_FIELDS_ATTR = "agentmesh_fields"

_access = logging.getLogger(ACCESS_LOGGER)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def __init__(self, *, component: str, agent: str | None = None) -> None:
        super().__init__()
        self.component = component
        self.agent = agent

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "component": self.component,
        }
        if self.agent:
            entry["agent"] = self.agent
        entry["logger"] = record.name
        entry["msg"] = record.getMessage()
        fields: dict[str, Any] = {}
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key != _FIELDS_ATTR:
                fields[key] = value
        bundled = record.__dict__.get(_FIELDS_ATTR)
        if isinstance(bundled, dict):
            fields.update(bundled)
        for key, value in fields.items():
            entry[f"{key}_" if key in _CORE_KEYS else key] = value
        if "trace_id" not in entry:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                entry["trace_id"] = format(context.trace_id, "032x")
                entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            entry["error"] = f"{exc_type.__name__}: {exc}"
            entry["stack"] = "".join(traceback.format_exception(exc_type, exc, tb))
        elif record.exc_text:
            entry["stack"] = record.exc_text
        if record.stack_info:
            entry["stack"] = (entry.get("stack", "") + record.stack_info).strip()
        return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class _JsonHandler(logging.Handler):
    """Writes formatted records to a fixed stream, or to the current sys.stderr."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = self._stream if self._stream is not None else sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(
    level: str = "info",
    *,
    component: str,
    agent: str | None = None,
    stream: TextIO | None = None,
    access_log: bool = True,
) -> None:
    """Routes every logger of the process to one JSON-lines handler.

    `level` is debug, info, warning (warn) or error; `component` is sidecar,
    control-plane or cli. Calling it again replaces the handler it installed
    before (handlers installed by others are left alone). `access_log=False`
    silences the `agentmesh.access` logger.
    Raises ValueError for an unknown level.
    """
    try:
        numeric = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: expected one of debug, info, warning, error") from None
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _JsonHandler(stream)
    handler.setFormatter(JsonFormatter(component=component, agent=agent))
    root.addHandler(handler)
    root.setLevel(numeric)
    _access.setLevel(logging.INFO)
    _access.disabled = not access_log


def log_access(
    *,
    direction: str,
    source: str,
    destination: str,
    version: str,
    method: str,
    code: str,
    duration_ms: float,
    attempt: int = 1,
    trace_id: str = "",
    span_id: str = "",
    **extra: object,
) -> None:
    """Writes one access-log line (`msg: "access"`) for a finished call or attempt.

    `direction` is inbound or outbound; `code` the gRPC status name. The line
    always carries `trace_id` (empty when the call was not traced).
    """
    if _access.disabled or not _access.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "direction": direction,
        "source": source,
        "destination": destination,
        "version": version,
        "method": method,
        "code": code,
        "duration_ms": round(duration_ms, 3),
        "attempt": attempt,
        "trace_id": trace_id,
        "span_id": span_id,
    }
    fields.update(extra)
    _access.info("access", extra={_FIELDS_ATTR: fields})


def _rfc3339(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
