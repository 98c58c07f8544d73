"""Splits a streamed HTTP response body into messages: SSE events and NDJSON lines.

An untouched agent streams a server-streaming skill as Server-Sent Events
(`text/event-stream`) or newline-delimited JSON. The parsers here are fed raw
body chunks as they arrive and yield complete messages, holding at most one
message (bounded by `max_message_bytes`) in memory. They know nothing of HTTP
or asyncio, so they are tested with plain bytes.

SSE follows the WHATWG "event stream interpretation" rules: lines end with
CRLF, LF or CR; `data:` lines of one event are joined with "\\n"; comments
(`:`) and unknown fields are ignored; a blank line dispatches the event.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from sidecar.errors import ContractViolation

_ANY_EOL = re.compile(rb"\r\n|\r|\n")
_LF = re.compile(rb"\n")
_BOM = b"\xef\xbb\xbf"


def too_large(what: str, limit: int) -> ContractViolation:
    """The error for a response message above the configured size limit."""
    return ContractViolation(
        f"{what} from the agent exceeds the {limit}-byte message limit", side="response", reason="too_large"
    )


class _LineSplitter:
    """Cuts a byte stream into lines without holding more than `max_line` bytes of one line."""

    def __init__(self, max_line: int, *, any_eol: bool) -> None:
        self._max = max_line
        self._eol = _ANY_EOL if any_eol else _LF
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yields the lines `chunk` completes; consume it fully before feeding more."""
        buffer = self._buffer
        buffer += chunk
        start = 0
        try:
            while (match := self._eol.search(buffer, start)) is not None:
                if match.end() == len(buffer) and buffer[-1:] == b"\r":
                    break  # a CR at the end may be the first half of CRLF
                if match.start() - start > self._max:
                    raise too_large("a streamed line", self._max)
                line = bytes(buffer[start : match.start()])
                start = match.end()
                yield line
        finally:
            del buffer[:start]
        if len(buffer) > self._max + 1:
            raise too_large("a streamed line", self._max)

    def finish(self) -> bytes | None:
        """The last line at the end of the body, if any: unterminated, or ended by a held CR (maybe empty)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if rest.endswith(b"\r"):
            return rest[:-1]
        return rest or None


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its type ("message" unless `event:` said otherwise) and data."""

    event: str
    data: bytes
    id: str | None = None


class SseParser:
    """Incremental text/event-stream parser."""

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        # A line may carry a whole event's data plus "data: ".
        self._lines = _LineSplitter(max_event_bytes + 64, any_eol=True)
        self._started = False
        self._head = bytearray()
        self._event = ""
        self._data = bytearray()
        self._has_data = False
        self._id: str | None = None

    def feed(self, chunk: bytes, *, end: bool = False) -> Iterator[SseEvent]:
        """Consumes body bytes, yielding the events they complete in order.

        `end=True` marks the end of the body (with the last bytes, or b""). A
        problem is raised when the parser reaches it, after the events before
        it were yielded: too large, or (at the end) a stream stopped inside an
        event, which WHATWG clients would drop silently.
        """
        if not self._started:
            # A UTF-8 byte order mark at the very start is skipped; it may arrive split.
            self._head += chunk
            if len(self._head) < len(_BOM) and _BOM.startswith(self._head) and not end:
                return
            chunk, self._started = bytes(self._head), True
            self._head.clear()
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        for line in self._lines.feed(chunk):
            event = self._line(line)
            if event is not None:
                yield event
        if not end:
            return
        last = self._lines.finish()
        if last is not None:
            event = self._line(last)
            if event is not None:
                yield event  # the body ended with a CR: a blank line
                return
        if self._has_data:
            raise ContractViolation(
                "the agent's event stream ended inside an event (no blank line after the last 'data:')",
                side="response",
                reason="malformed_sse",
            )

    def _line(self, line: bytes) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            if self._has_data:
                self._data += b"\n"
            self._data += value
            self._has_data = True
            if len(self._data) > self._max:
                raise too_large("an event", self._max)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        # "retry" and unknown fields are ignored.
        return None

    def _dispatch(self) -> SseEvent | None:
        event_type, self._event = self._event or "message", ""
        if not self._has_data:
            return None
        data = bytes(self._data)
        self._data.clear()
        self._has_data = False
        return SseEvent(event_type, data, self._id)


class NdjsonParser:
    """Incremental application/x-ndjson (JSON Lines) parser: one message per non-empty line."""

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._lines = _LineSplitter(max_message_bytes + 64, any_eol=False)

    def feed(self, chunk: bytes, *, end: bool = False) -> Iterator[bytes]:
        """Consumes body bytes, yielding the complete messages in order.

        `end=True` marks the end of the body: a last line without newline is a message too.
        """
        for line in self._lines.feed(chunk):
            message = self._message(line)
            if message:
                yield message
        if end:
            last = self._lines.finish()
            if last is not None and (message := self._message(last)):
                yield message

    def _message(self, line: bytes) -> bytes:
        line = line.strip()
        if len(line) > self._max:
            raise too_large("a streamed message", self._max)
        return line
