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

The access log is on the hot path of every call, so once `configure_logging`
has run it bypasses `logging`'s records and handlers: `log_access` formats
the line itself around a prefix of the fields that never change (component,
agent, logger, msg, level) and appends it to an in-memory batch; the sidecar's
request path goes further with `AccessRoute`, which also formats a call
shape's direction, destination, version, method and field names once. A daemon
thread writes the batch to the stream `ACCESS_FLUSH_INTERVAL` seconds after
its first line (one write instead of one per call, like Envoy's file flush
interval); every other log line, `flush_access_log()` and interpreter exit
write pending access lines first, so order is kept and a graceful shutdown
loses none. Before `configure_logging`, access lines go through `logging`
like any other record.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from typing import Any, TextIO

from opentelemetry import trace

ACCESS_LOGGER = "agentmesh.access"
# Seconds from the first pending access line to the write that carries it.
ACCESS_FLUSH_INTERVAL = 0.1
# Pending access lines beyond which the caller writes the batch itself (the writer thread is starved).
MAX_PENDING_ACCESS_LINES = 4096

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
# A JSON string literal (quotes included), non-ASCII kept as is: json.dumps(s, ensure_ascii=False).
_quote = json.encoder.encode_basestring
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


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


class _Output:
    """The stream both log paths write to (a fixed one, or the current sys.stderr), one writer at a time."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        """Writes and flushes; the caller holds `lock`."""
        stream = self._stream if self._stream is not None else sys.stderr
        stream.write(text)
        stream.flush()


class _AccessLog:
    """Formats access lines on the caller's thread and writes them in batches from a daemon thread."""

    def __init__(self, output: _Output, *, component: str, agent: str | None, interval: float) -> None:
        self._output = output
        self._interval = interval
        agent_field = f',"agent":{_quote(agent)}' if agent else ""
        # Everything after "ts" that no call changes, formatted once.
        self._static = (
            f'","level":"info","component":{_quote(component)}{agent_field},"logger":"{ACCESS_LOGGER}","msg":"access",'
        )
        # Appended by callers, drained by whoever flushes: both ends are atomic, so no lock on the request path.
        self._pending: deque[str] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._second = -1
        self._second_text = ""
        self.dropped = 0

    def line(self, fields: str) -> str:
        """A complete access line: timestamp, static fields, then `fields` (JSON members, no braces)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f'{{"ts":"{self._second_text}.{int((now - second) * 1000):03d}Z{self._static}{fields}}}\n'

    def append(self, line: str) -> None:
        pending = self._pending
        pending.append(line)
        if len(pending) >= MAX_PENDING_ACCESS_LINES or self._closing.is_set():
            self.flush()
        elif not self._wake.is_set():
            if self._thread is None:
                self._start()
            self._wake.set()

    def flush(self) -> None:
        """Writes every pending line now (on the caller's thread)."""
        with self._output.lock:
            self._flush_locked()

    def flush_locked(self) -> None:
        """`flush` for a caller already holding the output lock."""
        self._flush_locked()

    def close(self) -> None:
        """Writes what is pending and stops the writer thread."""
        self._closing.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()

    def _flush_locked(self) -> None:
        pending = self._pending
        if not pending:
            return
        batch = [pending.popleft() for _ in range(len(pending))]
        try:
            self._output.write("".join(batch))
        except Exception:
            # A closed or broken stream: the lines cannot be written anywhere; count them.
            self.dropped += len(batch)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agentmesh-access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            # Let a batch gather; cut short by close().
            self._closing.wait(self._interval)
            self._wake.clear()
            self.flush()


class _JsonHandler(logging.Handler):
    """Writes formatted records to the output, after any access lines still pending."""

    def __init__(self, output: _Output, access: _AccessLog) -> None:
        super().__init__()
        self._output = output
        self.access = access

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            with self._output.lock:
                self.access.flush_locked()
                self._output.write(line + "\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.access.flush()

    def close(self) -> None:
        self.access.close()
        super().close()


_root = logging.getLogger()
# The handler configure_logging installed last; its access log takes log_access's lines while it is installed.
_installed: _JsonHandler | None = None


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
    global _installed
    try:
        numeric = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: expected one of debug, info, warning, error") from None
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
        handler.close()
    output = _Output(stream)
    handler = _JsonHandler(output, _AccessLog(output, component=component, agent=agent, interval=ACCESS_FLUSH_INTERVAL))
    handler.setFormatter(JsonFormatter(component=component, agent=agent))
    root.addHandler(handler)
    _installed = handler
    root.setLevel(numeric)
    _access.setLevel(logging.INFO)
    _access.disabled = not access_log


def flush_access_log() -> None:
    """Writes the access lines still waiting for their batch (done at exit and before other log lines)."""
    handler = _installed
    if handler is not None:
        handler.access.flush()


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
    handler = _installed
    if handler is None or handler not in _root.handlers:
        # Not configured (a library user, a test with its own handlers): an ordinary log record.
        fields = _core_fields(
            direction, source, destination, version, method, code, duration_ms, attempt, trace_id, span_id
        )
        fields.update(extra)
        _access.info("access", extra={_FIELDS_ATTR: fields})
        return
    try:
        members = (
            f'"direction":{_quote(direction)},"source":{_quote(source)},"destination":{_quote(destination)},'
            f'"version":{_quote(version)},"method":{_quote(method)},"code":{_quote(code)},'
            f'"duration_ms":{_number(round(duration_ms, 3))},"attempt":{_number(attempt)},'
            f'"trace_id":{_quote(trace_id)},"span_id":{_quote(span_id)}'
        )
    except TypeError:  # a caller passed a non-string: let the generic encoder spell it
        core = _core_fields(
            direction, source, destination, version, method, code, duration_ms, attempt, trace_id, span_id
        )
        members = _encode(core)[1:-1]
    if extra:
        members += _extra_members(extra)
    access = handler.access
    access.append(access.line(members))


class AccessRoute:
    """The access line of one call shape, its constant part formatted once.

    Direction, destination, version and method never change for a contract
    method (inbound) or a resolved destination (outbound), nor do the names of
    the extra fields the caller always sends (`fields`): the sidecar builds one
    `AccessRoute` per shape when its config is compiled, and `log` formats only
    what the call changes. The line is the one `log_access` writes for the same
    values, field for field.
    """

    __slots__ = ("_field_names", "_head", "_middle", "_names", "destination", "direction", "method", "version")

    def __init__(
        self, *, direction: str, destination: str, version: str, method: str, fields: tuple[str, ...] = ()
    ) -> None:
        self.direction = direction
        self.destination = destination
        self.version = version
        self.method = method
        self._field_names = fields
        self._head = f'"direction":{_quote(direction)},"source":'
        self._middle = (
            f',"destination":{_quote(destination)},"version":{_quote(version)},"method":{_quote(method)},"code":'
        )
        self._names = tuple(f",{_member_name(name)}:" for name in fields)

    def __repr__(self) -> str:
        return (
            f"AccessRoute(direction={self.direction!r}, destination={self.destination!r}, version={self.version!r}, "
            f"method={self.method!r}, fields={self._field_names!r})"
        )

    def log(
        self,
        source: str,
        code: str,
        duration_ms: float,
        *,
        attempt: int = 1,
        trace_id: str = "",
        span_id: str = "",
        values: tuple[object, ...] = (),
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Writes the line of one finished call; `values` are those of `fields`, in order, then `extra`."""
        if _access.disabled or not _access.isEnabledFor(logging.INFO):
            return
        handler = _installed
        if handler is None or handler not in _root.handlers:
            self._log_generic(source, code, duration_ms, attempt, trace_id, span_id, values, extra)
            return
        try:
            members = (
                f"{self._head}{_quote(source)}{self._middle}{_quote(code)}"
                f',"duration_ms":{_number(round(duration_ms, 3))},"attempt":{_number(attempt)}'
                f',"trace_id":{_quote(trace_id)},"span_id":{_quote(span_id)}'
            )
        except TypeError:  # a non-string: the generic encoder spells it
            self._log_generic(source, code, duration_ms, attempt, trace_id, span_id, values, extra)
            return
        for name, value in zip(self._names, values, strict=True):
            members += f"{name}{_quote(value)}" if type(value) is str else f"{name}{_encode(value)}"
        if extra:
            members += _extra_members(extra)
        access = handler.access
        access.append(access.line(members))

    def _log_generic(
        self,
        source: str,
        code: str,
        duration_ms: float,
        attempt: int,
        trace_id: str,
        span_id: str,
        values: tuple[object, ...],
        extra: Mapping[str, object] | None,
    ) -> None:
        fields = dict(zip(self._field_names, values, strict=True))
        if extra:
            fields.update(extra)
        log_access(
            direction=self.direction,
            source=source,
            destination=self.destination,
            version=self.version,
            method=self.method,
            code=code,
            duration_ms=duration_ms,
            attempt=attempt,
            trace_id=trace_id,
            span_id=span_id,
            **fields,
        )


def _member_name(key: str) -> str:
    """An extra field's JSON key (quoted): a name the formatter owns gets a trailing "_"."""
    return _quote(f"{key}_" if key in _CORE_KEYS else key)


def _extra_members(extra: Mapping[str, object]) -> str:
    members = ""
    for key, value in extra.items():
        name = _member_name(key)
        members += f",{name}:{_quote(value)}" if type(value) is str else f",{name}:{_encode(value)}"
    return members


def _core_fields(
    direction: str,
    source: str,
    destination: str,
    version: str,
    method: str,
    code: str,
    duration_ms: float,
    attempt: int,
    trace_id: str,
    span_id: str,
) -> dict[str, object]:
    """The fields every access line has, in their order, for the generic (slower) encoders."""
    return {
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


def _number(value: object) -> str:
    """A number as JSON spells it (finite floats and ints by repr, as json.dumps does)."""
    if type(value) is int or (type(value) is float and value - value == 0):
        return repr(value)
    return _encode(value)


def _rfc3339(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


atexit.register(flush_access_log)
