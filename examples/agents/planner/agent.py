"""The planner: an untouched HTTP/JSON agent implementing planning.v1.Planner.

`Plan` splits a topic into sections, asks the researcher to `Search` each
one and the writer to `Draft` the result. It calls them the way any untouched
agent calls the mesh: plain HTTP/JSON to its sidecar's egress,

    POST {AGENTMESH_EGRESS_HTTP}/<agent>/<package.Service>/<Method>

passing on the `traceparent`, `tracestate` and `baggage` headers it received
(so the whole chain is one trace) and the remaining deadline as
`Connect-Timeout-Ms`. A failed downstream call fails the plan with the same
status and Connect error code, and a message naming the call. Only the
standard library is used; no model is called, and token usage is the sum of
the downstream usage plus a made-up planning cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

PLAN_PATH = "/planning.v1.Planner/Plan"
MODEL = "planner-sim-1"
DEFAULT_EGRESS = "http://127.0.0.1:15080"
DEFAULT_MAX_SECTIONS = 3
# Used for downstream calls when the caller sets no deadline.
DEFAULT_CALL_TIMEOUT = 30.0
FINDINGS_PER_SECTION = 3
PROPAGATED_HEADERS = ("traceparent", "tracestate", "baggage")
MESH_HEADERS = (*PROPAGATED_HEADERS, "connect-timeout-ms")
CONFIG_PREFIX = "x-agentmesh-config-"
ASPECTS = ("Background", "Current state", "Key players", "Open questions", "Outlook")
# HTTP status for a Connect error code, for downstream errors without a usable status.
_STATUS_FOR_CODE = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "resource_exhausted": 429,
    "unimplemented": 501,
    "unavailable": 503,
    "deadline_exceeded": 504,
}

log = logging.getLogger("planner")


class AgentError(Exception):
    """A failed call: the HTTP status and the Connect error code to answer with."""

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class Egress:
    """Calls other agents through the sidecar's HTTP egress, on behalf of one inbound call."""

    def __init__(self, base_url: str, headers: Mapping[str, str], deadline: float | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.propagated = {k: v for k, v in headers.items() if k in PROPAGATED_HEADERS}
        self.deadline = deadline
        # The egress is on loopback: never route it through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, agent: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
        """POSTs `request` to `<agent>/<method>` and returns the JSON response; raises AgentError."""
        what = f"{agent} {method}"
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.propagated}
        timeout = DEFAULT_CALL_TIMEOUT
        if self.deadline is not None:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise AgentError(504, "deadline_exceeded", f"{what}: no time left before the caller's deadline")
            headers["Connect-Timeout-Ms"] = str(max(1, int(timeout * 1000)))
        url = f"{self.base_url}/{agent}/{method.strip('/')}"
        outgoing = urllib.request.Request(url, data=json.dumps(request).encode(), headers=headers, method="POST")
        try:
            with self._opener.open(outgoing, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise _downstream_error(what, exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise AgentError(504, "deadline_exceeded", f"{what}: timed out connecting to {url}") from None
            raise AgentError(
                503, "unavailable", f"{what}: cannot reach the mesh egress at {self.base_url}: {exc.reason}"
            ) from None
        except TimeoutError:
            raise AgentError(504, "deadline_exceeded", f"{what}: no answer within {timeout:.1f}s") from None
        except OSError as exc:
            raise AgentError(503, "unavailable", f"{what}: connection to {self.base_url} failed: {exc}") from None
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise AgentError(500, "internal", f"{what}: the answer is not a JSON object")
        return payload


def _downstream_error(what: str, status: int, body: bytes) -> AgentError:
    """Maps a downstream HTTP error (Connect error JSON, ideally) to the planner's own error."""
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
        details = error.get("details") if isinstance(error.get("details"), list) else None
    else:
        code = {400: "invalid_argument", 404: "unimplemented", 429: "resource_exhausted", 504: "deadline_exceeded"}.get(
            status, "unavailable" if status in (502, 503) else "internal"
        )
        message, details = f"HTTP {status}", None
    # The plan's caller sent a valid request; a downstream INVALID_ARGUMENT is the planner's fault.
    if code == "invalid_argument":
        code, status = "internal", 500
    if not 400 <= status < 600:
        status = _STATUS_FOR_CODE.get(code, 500)
    return AgentError(status, code, f"{what} failed: {code}: {message}", details)


def plan(request: dict[str, Any], egress: Egress, *, model: str) -> dict[str, Any]:
    """Answers one PlanRequest (protobuf JSON, original field names) with a PlanResponse."""
    topic = request.get("topic", "")
    if not isinstance(topic, str) or not 3 <= len(topic) <= 200:
        raise AgentError(400, "invalid_argument", "topic must be a string of 3 to 200 characters")
    raw = request.get("max_sections", 0)
    try:
        max_sections = int(raw) if not isinstance(raw, bool) else -1
    except (TypeError, ValueError):
        max_sections = -1
    max_sections = max_sections or DEFAULT_MAX_SECTIONS
    if not 1 <= max_sections <= len(ASPECTS):
        raise AgentError(400, "invalid_argument", f"max_sections must be between 1 and {len(ASPECTS)}, got {raw!r}")
    usage = {"input_tokens": 40 + len(topic.split()), "output_tokens": 12 * max_sections}
    sections = []
    for aspect in ASPECTS[:max_sections]:
        found = egress.call(
            "researcher",
            "research.v1.Researcher/Search",
            # Keep the query within the researcher's 200-character limit.
            {"query": f"{topic[:180]} {aspect.lower()}", "max_results": FINDINGS_PER_SECTION},
        )
        findings = [f for f in found.get("findings", []) if isinstance(f, dict)]
        _add_usage(usage, found)
        sections.append(
            {
                "title": f"{aspect} of {topic}",
                "research_summary": findings[0].get("snippet", "") if findings else "Nothing found.",
                "sources": [str(f.get("title", "")) for f in findings],
            }
        )
    draft = egress.call(
        "writer",
        "writing.v1.Writer/Draft",
        {"topic": topic, "facts": [s["research_summary"] for s in sections], "style": "STYLE_DETAILED"},
    )
    _add_usage(usage, draft)
    return {"topic": topic, "sections": sections, "draft": str(draft.get("text", "")), "usage": usage, "model": model}


def _add_usage(total: dict[str, int], response: dict[str, Any]) -> None:
    usage = response.get("usage")
    if isinstance(usage, dict):
        for key in total:
            # int64 values arrive as JSON strings in the protobuf JSON mapping.
            value = usage.get(key, 0)
            if isinstance(value, int | str) and str(value).isdigit():
                total[key] += int(value)


class PlannerServer(ThreadingHTTPServer):
    """The HTTP server plus the agent's state: its egress address and call statistics."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, egress: str) -> None:
        super().__init__(address, PlannerHandler)
        self.egress = egress
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.last_headers: dict[str, str] = {}

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.calls[path] += 1
            self.last_headers = headers

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"egress": self.egress, "calls": dict(self.calls), "last_headers": dict(self.last_headers)}


class PlannerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "planner/1"
    # Headers and body go out as separate writes: without TCP_NODELAY each answer
    # waits for the client's delayed ACK (about 40 ms on Linux).
    disable_nagle_algorithm = True

    @property
    def agent(self) -> PlannerServer:
        assert isinstance(self.server, PlannerServer)
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
        if path != PLAN_PATH:
            self._send_error(AgentError(404, "not_found", f"no such method: POST {path}"))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.agent.record(path, {k: v for k, v in headers.items() if k in MESH_HEADERS or k.startswith(CONFIG_PREFIX)})
        try:
            request = json.loads(body or b"{}")
        except ValueError as exc:
            self._send_error(AgentError(400, "invalid_argument", f"the request body is not JSON: {exc}"))
            return
        try:
            if not isinstance(request, dict):
                raise AgentError(400, "invalid_argument", "the request body must be a JSON object")
            egress = Egress(self.agent.egress, headers, _deadline(headers.get("connect-timeout-ms")))
            self._send_json(200, plan(request, egress, model=headers.get(CONFIG_PREFIX + "model") or MODEL))
        except AgentError as exc:
            log.warning("Plan failed: %s", exc.message)
            self._send_error(exc)
        except Exception as exc:
            log.exception("Plan failed")
            self._send_error(AgentError(500, "internal", f"planning failed: {exc}"))

    def _send_error(self, error: AgentError) -> None:
        self._send_json(error.status, error.to_json())

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


def _deadline(timeout_ms: str | None) -> float | None:
    """The monotonic deadline from a Connect-Timeout-Ms header, if present and valid."""
    if timeout_ms is None or not timeout_ms.strip().isdigit():
        return None
    return time.monotonic() + int(timeout_ms) / 1000


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The planner example agent (HTTP/JSON; calls researcher and writer).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101, help="0 picks a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    egress = os.environ.get("AGENTMESH_EGRESS_HTTP", DEFAULT_EGRESS)
    server = PlannerServer((args.host, args.port), egress=egress)
    signal.signal(signal.SIGTERM, _terminate)
    print(f"planner listening on http://{args.host}:{server.server_address[1]} (egress {egress})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
