"""The researcher: an untouched HTTP/JSON agent implementing research.v1.Researcher.

It knows nothing about the mesh: it serves `Search` at the Connect path
`POST /research.v1.Researcher/Search` and at `POST /v1/search` (the method's
google.api.http binding, which its sidecar prefers), plus `GET /healthz`.
Only the standard library is used.

No model is called: findings are derived from a hash of the query, so answers
are deterministic, and a made-up token usage is reported like a real model
would. `--version v2` answers slightly differently (other wording, other
scores, another model name), for canary demos; any other version label
answers like v1.

Some queries are test hooks that make the failure paths of the mesh easy to
exercise:

    __slow__      answer normally after 5 s
    __invalid__   a finding with score 1.5 (the contract says 0..1)
    __badjson__   a 200 whose body is not JSON
    __unknown__   a response with a key the contract does not define
    __error__     HTTP 503 with a Connect error body (code "unavailable")

`GET /stats` reports calls per path and the mesh headers of the last call,
so tests can check what the sidecar passed on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

SEARCH_PATHS = ("/research.v1.Researcher/Search", "/v1/search")
MODELS = {"v1": "research-sim-1", "v2": "research-sim-2"}
DEFAULT_MAX_RESULTS = 5
SLOW_SECONDS = 5.0
# Headers the sidecar sets that are worth reporting in /stats.
MESH_HEADERS = ("traceparent", "tracestate", "baggage", "connect-timeout-ms")
CONFIG_PREFIX = "x-agentmesh-config-"

_ASPECTS = {
    "v1": ("overview", "history", "recent results", "open problems", "practical uses", "criticism", "key terms"),
    "v2": ("primer", "timeline", "latest findings", "unsolved questions", "applications", "debates", "glossary"),
}
_SOURCES = ("an encyclopedia", "a survey paper", "a news archive", "a textbook", "a conference talk", "a field report")

log = logging.getLogger("researcher")


class AgentError(Exception):
    """A failed call: the HTTP status and the Connect error code to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _int_field(request: dict[str, Any], name: str, default: int) -> int:
    # Protobuf JSON may carry integers as numbers or as decimal strings.
    value = request.get(name, default)
    if isinstance(value, bool):
        raise AgentError(400, "invalid_argument", f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AgentError(400, "invalid_argument", f"{name} must be an integer, got {value!r}") from None


def _words(text: str) -> int:
    return len(text.split())


def search(request: dict[str, Any], *, version: str, model: str) -> dict[str, Any]:
    """Answers one SearchRequest (protobuf JSON, original field names) with a SearchResponse."""
    query = request.get("query", "")
    if not isinstance(query, str) or not 3 <= len(query) <= 200:
        raise AgentError(400, "invalid_argument", "query must be a string of 3 to 200 characters")
    max_results = _int_field(request, "max_results", 0) or DEFAULT_MAX_RESULTS
    if not 1 <= max_results <= 10:
        raise AgentError(400, "invalid_argument", f"max_results must be between 1 and 10, got {max_results}")
    aspects = _ASPECTS[version]
    findings: list[dict[str, Any]] = []
    for index in range(max_results):
        digest = hashlib.sha256(f"{version}|{query}|{index}".encode()).digest()
        aspect = aspects[digest[0] % len(aspects)]
        source = _SOURCES[digest[1] % len(_SOURCES)]
        score = int.from_bytes(digest[2:6], "big") / 0xFFFFFFFF
        if version == "v2":
            # v2 ranks more confidently: scores are pulled towards 1.
            score = round(0.5 + score / 2, 4)
            title = f"{query.title()}: {aspect}"
            snippet = f"According to {source}, the {aspect} of {query} is well documented."
        else:
            score = round(score, 4)
            title = f"{aspect.capitalize()} of {query}"
            snippet = f"{source.capitalize()} describes the {aspect} of {query}."
        findings.append({"title": title, "snippet": snippet, "score": score})
    findings.sort(key=lambda f: f["score"], reverse=True)
    output_words = sum(_words(f["title"]) + _words(f["snippet"]) for f in findings)
    return {
        "findings": findings,
        "usage": {"input_tokens": 16 + _words(query), "output_tokens": output_words * 4 // 3},
        "model": model,
    }


class ResearcherServer(ThreadingHTTPServer):
    """The HTTP server plus the agent's state: its version and call statistics."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, version: str) -> None:
        super().__init__(address, ResearcherHandler)
        self.version = version
        self.behaviour = "v2" if version == "v2" else "v1"
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.calls[path] += 1
            self.last_headers = headers

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"version": self.version, "calls": dict(self.calls), "last_headers": dict(self.last_headers)}


class ResearcherHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "researcher/1"
    # Headers and body go out as separate writes: without TCP_NODELAY each answer
    # waits for the client's delayed ACK (about 40 ms on Linux).
    disable_nagle_algorithm = True

    @property
    def agent(self) -> ResearcherServer:
        assert isinstance(self.server, ResearcherServer)
        return self.server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/stats":
            self._send_json(200, self.agent.stats())
        else:
            self._send_error(AgentError(404, "not_found", f"no such path: GET {path}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path not in SEARCH_PATHS:
            self._send_error(AgentError(404, "not_found", f"no such method: POST {path}"))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        mesh_headers = {k: v for k, v in headers.items() if k in MESH_HEADERS or k.startswith(CONFIG_PREFIX)}
        self.agent.record(path, mesh_headers)
        try:
            request = json.loads(body or b"{}")
        except ValueError as exc:
            self._send_error(AgentError(400, "invalid_argument", f"the request body is not JSON: {exc}"))
            return
        try:
            if not isinstance(request, dict):
                raise AgentError(400, "invalid_argument", "the request body must be a JSON object")
            self._answer(request, model=headers.get(CONFIG_PREFIX + "model") or MODELS[self.agent.behaviour])
        except AgentError as exc:
            self._send_error(exc)
        except Exception as exc:
            log.exception("Search failed")
            self._send_error(AgentError(500, "internal", f"search failed: {exc}"))

    def _answer(self, request: dict[str, Any], *, model: str) -> None:
        query = request.get("query")
        if query == "__slow__":
            time.sleep(SLOW_SECONDS)
        elif query == "__error__":
            raise AgentError(503, "unavailable", "the search backend is overloaded (test hook __error__)")
        elif query == "__badjson__":
            self._send(200, "application/json", b"<html>search results</html>")
            return
        response = search(request, version=self.agent.behaviour, model=model)
        if query == "__invalid__":
            response["findings"][0]["score"] = 1.5
        elif query == "__unknown__":
            response["confidence"] = "high"
        self._send_json(200, response)

    def _send_error(self, error: AgentError) -> None:
        self._send_json(error.status, {"code": error.code, "message": error.message})

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(payload).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
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
    parser = argparse.ArgumentParser(description="The researcher example agent (HTTP/JSON).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8201, help="0 picks a free port")
    parser.add_argument("--version", default="v1", help="v1 or v2 (the canary); other labels answer like v1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server = ResearcherServer((args.host, args.port), version=args.version)
    signal.signal(signal.SIGTERM, _terminate)
    print(f"researcher {args.version} listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
