"""Calls an untouched agent that speaks HTTP/JSON (the upstream step of the inbound chain).

The typed request is transcoded to HTTP (`_transcode.HttpRoute`: the method's
`google.api.http` rule, else the Connect convention), sent with aiohttp over
one keep-alive pool per adapter, and the agent's JSON answer is returned
undecoded for the contract filter. Server-streaming skills read SSE, NDJSON or
a single JSON document (`_framing`). The call's deadline travels as the
aiohttp timeout and a `Connect-Timeout-Ms` header; cancelling the calling task
aborts the HTTP request. Every aiohttp failure leaves here as a
`sidecar.errors` type.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Iterable
from typing import Literal

import aiohttp
import grpc
from yarl import URL

from sidecar.config.bootstrap import Upstream
from sidecar.contract import MethodContract
from sidecar.errors import (
    ContractViolation,
    MeshError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
    grpc_code_for_http,
)
from sidecar.upstream._framing import NdjsonParser, SseParser, too_large
from sidecar.upstream._transcode import HttpRoute
from sidecar.upstream.base import Payload, UpstreamCall

log = logging.getLogger("agentmesh.sidecar.upstream")

USER_AGENT = "agentmesh-sidecar"
# Idle pooled connections are dropped before common agent servers (uvicorn,
# Node) close theirs at 5 s, so a request rarely meets a connection being closed.
DEFAULT_KEEPALIVE_SECONDS = 4.0
# How much of an error body is read to find a Connect error or quote the agent.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_SNIPPET_CHARS = 200
# Bound on the parsed request targets kept (targets with path variables vary per call).
MAX_URLS_REMEMBERED = 1024

_SSE = "text/event-stream"
_NDJSON = frozenset({"application/x-ndjson", "application/jsonl", "application/ndjson", "application/x-jsonlines"})
_STREAM_ACCEPT = "text/event-stream, application/x-ndjson"
# OpenAI-style streams end with this sentinel instead of closing quietly.
_SSE_DONE = b"[DONE]"

# Headers the adapter sets itself or that belong to one hop only.
_OWN_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "connect-protocol-version",
        "connect-timeout-ms",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Connect protocol error codes (https://connectrpc.com/docs/protocol#error-codes).
CONNECT_CODES: dict[str, grpc.StatusCode] = {
    code.name.lower(): code for code in grpc.StatusCode if code is not grpc.StatusCode.OK
}
CONNECT_CODES["canceled"] = grpc.StatusCode.CANCELLED
_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class HttpJsonAdapter:
    """UpstreamAdapter for agents that speak HTTP/JSON."""

    def __init__(
        self, upstream: Upstream, *, max_message_bytes: int, json_names: Literal["proto", "json"] = "proto"
    ) -> None:
        self._base = upstream.url
        self._max = max_message_bytes
        self._json_names = json_names
        self._proto_names = json_names == "proto"
        self._routes: dict[tuple[object, ...], HttpRoute] = {}
        # Request targets already parsed into URLs (a route without path variables has one target).
        self._urls: dict[str, URL] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpJsonAdapter(url={self._base!r}, max_message_bytes={self._max}, json_names={self._json_names!r})"

    def prepare(self, methods: Iterable[MethodContract]) -> None:
        """Compiles every method's HTTP route now; raises ValueError for a rule that cannot be used.

        Optional: routes are otherwise compiled on a method's first call.
        """
        for method in methods:
            self._routes[_route_key(method)] = HttpRoute.for_method(method)

    async def unary(self, call: UpstreamCall) -> Payload:
        route = self._route(call.method)
        target, body = route.build(call.request, proto_names=self._proto_names)
        headers = self._headers(call, route, accept="application/json")
        deadline = _deadline(call)
        session = self._client()
        try:
            async with (
                asyncio.timeout_at(deadline),
                # asyncio.timeout_at bounds the whole exchange; the session sets no timer of its own.
                session.request(
                    route.verb, self._url(target), data=body, headers=headers, allow_redirects=False
                ) as response,
            ):
                if not 200 <= response.status < 300:
                    raise await _status_error(response, route)
                data = await _read_limited(response, self._max)
                if response.status == 204 or not data.strip():
                    return Payload(b"{}", "json")
                if not _is_json(response):
                    raise _wrong_content_type(response, "application/json")
                return Payload(data, "json")
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the agent did not answer {call.method.path} within the deadline") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(exc, self._base, call.method) from exc

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[Payload, None]:
        route = self._route(call.method)
        target, body = route.build(call.request, proto_names=self._proto_names)
        headers = self._headers(call, route, accept=_STREAM_ACCEPT)
        deadline = _deadline(call)
        session = self._client()
        response: aiohttp.ClientResponse | None = None
        complete = False
        try:
            # The deadline guards each wait, never a `yield`: the consumer's own
            # awaits must not be cancelled by this generator's timer.
            async with asyncio.timeout_at(deadline):
                response = await session.request(
                    route.verb, self._url(target), data=body, headers=headers, allow_redirects=False
                )
                if not 200 <= response.status < 300:
                    raise await _status_error(response, route)
            content_type = response.content_type if "Content-Type" in response.headers else ""
            if content_type == _SSE:
                sse = SseParser(self._max)
                end = False
                while not end:
                    chunk = await _read_chunk(response, deadline)
                    end = not chunk
                    for event in sse.feed(chunk, end=end):
                        if event.event == "error":
                            raise _error_event(event.data)
                        if event.event != "message":
                            continue  # like EventSource.onmessage: other event types carry no message
                        if event.data == _SSE_DONE:
                            end = True
                            break
                        yield Payload(event.data, "json")
            elif content_type in _NDJSON:
                ndjson = NdjsonParser(self._max)
                end = False
                while not end:
                    chunk = await _read_chunk(response, deadline)
                    end = not chunk
                    for line in ndjson.feed(chunk, end=end):
                        if error := _end_of_stream_error(line):
                            raise error
                        yield Payload(line, "json")
            elif _is_json(response):
                async with asyncio.timeout_at(deadline):
                    data = await _read_limited(response, self._max)
                if data.strip():
                    yield Payload(data, "json")
            else:
                raise _wrong_content_type(response, f"{_SSE}, application/x-ndjson or application/json")
            complete = True
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the agent's stream {call.method.path} did not finish within the deadline") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(exc, self._base, call.method) from exc
        finally:
            if response is not None:
                if complete and response.content.at_eof():
                    response.release()
                else:
                    # Cancelled, failed or stopped early: drop the connection so the agent sees it.
                    response.close()

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise UpstreamUnavailable(f"the adapter for {self._base} is closed")
            # Created here, inside the running loop; concurrency is bounded by the
            # inbound listener (limits.max_concurrent_calls), not by the pool.
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=DEFAULT_KEEPALIVE_SECONDS),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
            )
        return session

    def _url(self, target: str) -> URL:
        url = self._urls.get(target)
        if url is None:
            url = URL(self._base + target, encoded=True)
            if len(self._urls) < MAX_URLS_REMEMBERED:
                self._urls[target] = url
        return url

    def _route(self, method: MethodContract) -> HttpRoute:
        key = _route_key(method)
        route = self._routes.get(key)
        if route is None:
            try:
                route = HttpRoute.for_method(method)
            except ValueError as exc:
                raise MeshError(f"cannot call the agent over HTTP: {exc}") from exc
            self._routes[key] = route
        return route

    def _headers(self, call: UpstreamCall, route: HttpRoute, *, accept: str) -> dict[str, str]:
        headers = {
            key: value
            for key, value in call.headers.items()
            if key.lower() not in _OWN_HEADERS and not any(c in value for c in "\r\n\0")
        }
        headers["Accept"] = accept
        if route.body:
            headers["Content-Type"] = "application/json"
        if route.connect and not call.method.server_streaming:
            headers["Connect-Protocol-Version"] = "1"
        if call.timeout is not None:
            headers["Connect-Timeout-Ms"] = str(max(1, int(call.timeout * 1000)))
        return headers


def _route_key(method: MethodContract) -> tuple[object, ...]:
    # A new contract may bind the same path to another rule or request type.
    return (method.path, method.http_rule, method.input)


def _deadline(call: UpstreamCall) -> float | None:
    if call.timeout is None:
        return None
    if call.timeout <= 0:
        raise UpstreamTimeout(f"the deadline for {call.method.path} passed before the agent was called")
    return asyncio.get_running_loop().time() + call.timeout


async def _read_chunk(response: aiohttp.ClientResponse, deadline: float | None) -> bytes:
    async with asyncio.timeout_at(deadline):
        return await response.content.readany()


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refusing (without buffering) anything above `limit` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise too_large(f"a {response.content_length}-byte response", limit)
    data = bytearray()
    while chunk := await response.content.readany():
        data += chunk
        if len(data) > limit:
            raise too_large("the response", limit)
    return bytes(data)


async def _read_prefix(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    while len(data) < limit and (chunk := await response.content.readany()):
        data += chunk
    return bytes(data[:limit])


def _is_json(response: aiohttp.ClientResponse) -> bool:
    if "Content-Type" not in response.headers:
        return False
    content_type = response.content_type
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _wrong_content_type(response: aiohttp.ClientResponse, expected: str) -> ContractViolation:
    got = response.headers.get("Content-Type", "no Content-Type")
    return ContractViolation(
        f"the agent answered HTTP {response.status} with {got}, expected {expected}",
        side="response",
        reason="content_type",
    )


async def _status_error(response: aiohttp.ClientResponse, route: HttpRoute) -> UpstreamStatus:
    """The error for a non-2xx answer: the Connect error in the body, else the HTTP status mapped."""
    try:
        body = await _read_prefix(response, ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, OSError):
        body = b""  # the status alone is the answer
    found = _connect_error(body)
    if found is not None:
        code, message = found
        return UpstreamStatus(f"agent answered {code.name}: {message}", code=code, http_status=response.status)
    if response.status == 404 and not route.connect:
        # With a google.api.http rule the URL names a resource, so 404 means that resource is missing.
        code = grpc.StatusCode.NOT_FOUND
    else:
        code = grpc_code_for_http(response.status)
    snippet = body.decode("utf-8", "replace").strip()[:ERROR_SNIPPET_CHARS]
    detail = snippet or response.reason or ""
    return UpstreamStatus(f"agent answered HTTP {response.status}: {detail}", code=code, http_status=response.status)


def _connect_error(body: bytes) -> tuple[grpc.StatusCode, str] | None:
    """Reads `{"code": "not_found", "message": ...}` (Connect) or `{"code": 5, ...}` (grpc-gateway)."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    raw_code, message = parsed.get("code"), parsed.get("message")
    code: grpc.StatusCode | None = None
    if isinstance(raw_code, str):
        code = CONNECT_CODES.get(raw_code.lower())
    elif isinstance(raw_code, int) and not isinstance(raw_code, bool):
        code = _CODES_BY_NUMBER.get(raw_code)
    if code is None or code is grpc.StatusCode.OK:
        return None
    return code, message if isinstance(message, str) else ""


def _end_of_stream_error(line: bytes) -> UpstreamStatus | None:
    """An NDJSON line `{"error": {"code": ..., "message": ...}}` (Connect's end-of-stream error)."""
    if not line.startswith(b'{"error"'):
        return None  # cheap test first: messages are parsed once, later, by the contract step
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict):
        return _error_event(json.dumps(body["error"]).encode())
    return None


def _error_event(data: bytes) -> UpstreamStatus:
    found = _connect_error(data)
    if found is not None:
        code, message = found
        return UpstreamStatus(f"agent answered {code.name}: {message}", code=code)
    snippet = data.decode("utf-8", "replace").strip()[:ERROR_SNIPPET_CHARS]
    return UpstreamStatus(f"agent sent an error event: {snippet}", code=grpc.StatusCode.UNKNOWN)


def _unavailable(exc: BaseException, base: str, method: MethodContract) -> UpstreamUnavailable:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"cannot connect to the agent at {base}: {exc.os_error or exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamUnavailable(f"the agent at {base} closed the connection during {method.path}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnavailable(f"the agent's response to {method.path} was cut off: {exc}")
    return UpstreamUnavailable(f"HTTP call {method.path} to the agent at {base} failed: {exc or type(exc).__name__}")
