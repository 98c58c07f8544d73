"""The writer: an untouched HTTP/JSON agent implementing writing.v1.Writer.

It serves the Connect paths `POST /writing.v1.Writer/Draft` (one JSON answer)
and `POST /writing.v1.Writer/StreamDraft` (a server stream, one chunk per
sentence), plus `GET /healthz`. The stream is server-sent events
(`data: <json>` per chunk), or NDJSON (one JSON object per line) when the
request says `Accept: application/x-ndjson`. Only the standard library is used.

No model is called: the text is assembled from the topic and the facts, so
answers are deterministic, and a made-up token usage is reported (on the last
chunk of a stream). The chunks of a stream, joined, are exactly the text
`Draft` returns.

Test hooks, by topic:

    __error__          HTTP 503 with a Connect error body, before any output
    __stream_error__   two chunks, then an error in the stream: an SSE event
                       `event: error` with the Connect error JSON as data, or
                       the NDJSON line {"error": {"code": ..., "message": ...}}

`chunk_delay_ms` slows a stream down (default 20 ms between chunks). `GET
/stats` counts calls, completed streams and streams the client abandoned, and
shows the mesh headers of the last call.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

DRAFT_PATH = "/writing.v1.Writer/Draft"
STREAM_PATH = "/writing.v1.Writer/StreamDraft"
MODEL = "writer-sim-1"
DEFAULT_CHUNK_DELAY_MS = 20
MAX_CHUNK_DELAY_MS = 2000
MAX_FACTS = 20
STYLES = ("STYLE_UNSPECIFIED", "STYLE_BRIEF", "STYLE_DETAILED", "STYLE_BULLETS")
NDJSON = "application/x-ndjson"
MESH_HEADERS = ("traceparent", "tracestate", "baggage", "connect-timeout-ms")
CONFIG_PREFIX = "x-agentmesh-config-"

log = logging.getLogger("writer")


class AgentError(Exception):
    """A failed call: the HTTP status and the Connect error code to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _style(value: object) -> str:
    # Protobuf JSON carries enums by name, but numbers are valid too.
    if value is None:
        return "STYLE_UNSPECIFIED"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(STYLES):
        return STYLES[value]
    if isinstance(value, str) and value in STYLES:
        return value
    raise AgentError(400, "invalid_argument", f"style must be one of {', '.join(STYLES)}, got {value!r}")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def compose(topic: str, facts: list[str], style: str) -> list[str]:
    """The draft as pieces whose concatenation is the whole text (one per sentence or bullet)."""
    facts = [f for f in facts if f.strip()]
    if style == "STYLE_BULLETS":
        lines = [f"{topic}:"] + ([f"- {fact.strip()}" for fact in facts] or [f"- Little is known about {topic} yet."])
        return [line + "\n" for line in lines[:-1]] + [lines[-1]]
    if style == "STYLE_BRIEF":
        sentences = [f"{topic} in brief."] + [_sentence(f) for f in facts[:3]]
    else:
        sentences = [f"This draft looks at {topic}."] + [_sentence(f) for f in facts]
    if len(sentences) == 1:
        sentences.append(f"Little is known about {topic} yet.")
    if style == "STYLE_DETAILED":
        sentences.append(f"In short, {topic} deserves a closer look.")
    return [s + " " for s in sentences[:-1]] + [sentences[-1]]


def _usage(topic: str, facts: list[str], text: str) -> dict[str, int]:
    input_words = len(topic.split()) + sum(len(f.split()) for f in facts)
    return {"input_tokens": 24 + input_words * 4 // 3, "output_tokens": len(text.split()) * 4 // 3}


class DraftCall:
    """One validated DraftRequest (protobuf JSON, original field names)."""

    def __init__(self, request: dict[str, Any]) -> None:
        topic = request.get("topic", "")
        if not isinstance(topic, str) or not 1 <= len(topic) <= 200:
            raise AgentError(400, "invalid_argument", "topic must be a string of 1 to 200 characters")
        facts = request.get("facts", [])
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise AgentError(400, "invalid_argument", "facts must be a list of strings")
        if len(facts) > MAX_FACTS:
            raise AgentError(400, "invalid_argument", f"at most {MAX_FACTS} facts, got {len(facts)}")
        delay = request.get("chunk_delay_ms", DEFAULT_CHUNK_DELAY_MS)
        if isinstance(delay, bool) or not isinstance(delay, int | str) or not str(delay).isdigit():
            raise AgentError(400, "invalid_argument", f"chunk_delay_ms must be a non-negative integer, got {delay!r}")
        if int(delay) > MAX_CHUNK_DELAY_MS:
            raise AgentError(400, "invalid_argument", f"chunk_delay_ms must be at most {MAX_CHUNK_DELAY_MS}")
        self.topic = topic
        self.facts = facts
        self.style = _style(request.get("style"))
        self.chunk_delay = int(delay) / 1000
        self.pieces = compose(topic, facts, self.style)
        self.text = "".join(self.pieces)

    def response(self, model: str) -> dict[str, Any]:
        return {
            "text": self.text,
            "word_count": len(self.text.split()),
            "usage": _usage(self.topic, self.facts, self.text),
            "model": model,
        }

    def chunks(self, model: str) -> Iterator[dict[str, Any]]:
        """The StreamDraft messages; raises AgentError mid-stream for the __stream_error__ hook."""
        for index, piece in enumerate(self.pieces):
            if index:
                time.sleep(self.chunk_delay)
            if self.topic == "__stream_error__" and index == 2:
                raise AgentError(503, "unavailable", "the writer lost its model mid-stream (test hook)")
            chunk: dict[str, Any] = {"text": piece, "index": index}
            if index == len(self.pieces) - 1:
                chunk["usage"] = _usage(self.topic, self.facts, self.text)
                chunk["model"] = model
            yield chunk
        if self.topic == "__stream_error__":
            raise AgentError(503, "unavailable", "the writer lost its model mid-stream (test hook)")


class WriterServer(ThreadingHTTPServer):
    """The HTTP server plus the agent's call statistics."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, WriterHandler)
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.counters[path] += 1
            self.last_headers = headers

    def stats(self) -> dict[str, Any]:
        with self.lock:
            counters = dict(self.counters)
            return {
                "calls": {k: v for k, v in counters.items() if k.startswith("/")},
                "streams_completed": counters.get("streams_completed", 0),
                "streams_cancelled": counters.get("streams_cancelled", 0),
                "last_headers": dict(self.last_headers),
            }


class WriterHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "writer/1"
    # Headers and body go out as separate writes: without TCP_NODELAY each answer
    # waits for the client's delayed ACK (about 40 ms on Linux).
    disable_nagle_algorithm = True

    @property
    def agent(self) -> WriterServer:
        assert isinstance(self.server, WriterServer)
        return self.server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/stats":
            self._send_json(200, self.agent.stats())
        else:
            self._send_json(404, AgentError(404, "not_found", f"no such path: GET {path}").to_json())

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path not in (DRAFT_PATH, STREAM_PATH):
            self._send_json(404, AgentError(404, "not_found", f"no such method: POST {path}").to_json())
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.agent.record(path, {k: v for k, v in headers.items() if k in MESH_HEADERS or k.startswith(CONFIG_PREFIX)})
        model = headers.get(CONFIG_PREFIX + "model") or MODEL
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise AgentError(400, "invalid_argument", "the request body must be a JSON object")
            call = DraftCall(request)
            if call.topic == "__error__":
                raise AgentError(503, "unavailable", "the writer's model is overloaded (test hook __error__)")
        except ValueError as exc:
            self._send_json(400, AgentError(400, "invalid_argument", f"the request body is not JSON: {exc}").to_json())
            return
        except AgentError as exc:
            self._send_json(exc.status, exc.to_json())
            return
        if path == DRAFT_PATH:
            self._send_json(200, call.response(model))
        else:
            self._stream(call, model, ndjson=NDJSON in headers.get("accept", ""))

    def _stream(self, call: DraftCall, model: str, *, ndjson: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", NDJSON if ndjson else "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            try:
                for chunk in call.chunks(model):
                    self._write_event(chunk, ndjson=ndjson)
            except AgentError as exc:
                if ndjson:
                    self._write_chunk(json.dumps({"error": exc.to_json()}).encode() + b"\n")
                else:
                    self._write_chunk(b"event: error\ndata: " + json.dumps(exc.to_json()).encode() + b"\n\n")
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            # The caller went away (cancelled, or its deadline passed): stop writing.
            self.agent.count("streams_cancelled")
            self.close_connection = True
            return
        self.agent.count("streams_completed")

    def _write_event(self, chunk: dict[str, Any], *, ndjson: bool) -> None:
        data = json.dumps(chunk).encode()
        self._write_chunk(data + b"\n" if ndjson else b"data: " + data + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        # HTTP/1.1 chunked transfer coding; an empty chunk ends the body.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailer fields, up to the blank line
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The writer example agent (HTTP/JSON, SSE and NDJSON streams).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8301, help="0 picks a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server = WriterServer((args.host, args.port))
    signal.signal(signal.SIGTERM, _terminate)
    print(f"writer listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
