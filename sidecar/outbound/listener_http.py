"""HTTP/JSON egress listener (:15080): untouched agents call other agents with plain JSON.

URL scheme (Connect-style, the target named in the path or left to routing):

    POST /<agent>/<package.Service>/<Method>    a named agent
    POST /<package.Service>/<Method>            any agent implementing the service

The body is the request message's JSON mapping. The sidecar checks it against
the target's contract (an invalid request never leaves this host), makes the
typed gRPC call to the target sidecar and answers with the response's JSON.
Server-streaming skills answer NDJSON, or SSE when the agent sends
`Accept: text/event-stream`. Errors are Connect error JSON
(`{"code", "message", "details"}`) with the matching HTTP status.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from agentmesh.telemetry.logs import log_access
from sidecar.contract import MessageChecker, MethodContract
from sidecar.errors import HTTP_STATUS, ContractViolation, MeshError, UnknownMethod
from sidecar.outbound.forward import Forwarder
from sidecar.outbound.targets import TargetDirectory
from sidecar.stats import SidecarStats

TIMEOUT_HEADER = "connect-timeout-ms"


def connect_error(exc: MeshError) -> tuple[int, dict[str, Any]]:
    """HTTP status and Connect error body for a domain error."""
    body: dict[str, Any] = {"code": exc.code.name.lower(), "message": exc.message}
    if exc.violations:
        body["details"] = [{"field": v.field, "description": v.description, "reason": v.reason} for v in exc.violations]
    return HTTP_STATUS.get(exc.code, 500), body


class EgressHttpListener:
    def __init__(
        self,
        *,
        directory: TargetDirectory,
        forwarder: Forwarder,
        checker: MessageChecker,
        stats: SidecarStats,
        agent: str,
        default_timeout: float,
        max_body_bytes: int,
    ) -> None:
        self._directory = directory
        self._forwarder = forwarder
        self._checker = checker
        self._stats = stats
        self._agent = agent
        self._default_timeout = default_timeout
        self._app = web.Application(client_max_size=max_body_bytes)
        self._app.router.add_post("/{agent}/{service}/{method}", self._handle)
        self._app.router.add_post("/{service}/{method}", self._handle)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info.get("agent")
        path = f"/{request.match_info['service']}/{request.match_info['method']}"
        metadata = {k.lower(): v for k, v in request.headers.items()}
        started = time.perf_counter()
        destination, version, code = agent or "unknown", "unknown", "OK"
        route = None
        try:
            target, method = await self._directory.resolve(path, agent)
            destination, version = target.name, target.version
            route = self._stats.route(
                direction="outbound",
                source_agent=self._agent,
                destination_agent=destination,
                destination_version=version,
                rpc_method=method.path,
            )
            route.start()
            message = await self._request_message(request, method)
            timeout = self._timeout(metadata)
            wire = message.SerializeToString()
            if method.server_streaming:
                return await self._stream(request, target, method, wire, metadata, timeout)
            reply = await self._forwarder.unary(target, path, wire, metadata=metadata, timeout=timeout)
            return web.json_response(_to_json(method.response_class.FromString(reply)))
        except MeshError as exc:
            code = exc.code.name
            status, body = connect_error(exc)
            return web.json_response(body, status=status)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            elapsed = time.perf_counter() - started
            if route is not None:
                route.finish(code, elapsed)
            log_access(
                direction="outbound",
                source=self._agent,
                destination=destination,
                version=version,
                method=path,
                code=code,
                duration_ms=round(elapsed * 1000, 3),
                traceparent=metadata.get("traceparent", ""),
            )

    async def _request_message(self, request: web.Request, method: MethodContract) -> Message:
        if method.client_streaming:
            raise UnknownMethod(f"{method.path}: client-streaming skills are not supported")
        body = await request.read()
        try:
            return self._checker.from_json(method, body or b"{}", side="request")
        except ContractViolation as exc:
            self._stats.contract_violation(method.path, exc.side, exc.reason)
            raise

    def _timeout(self, headers: Mapping[str, str]) -> float:
        value = headers.get(TIMEOUT_HEADER)
        if value and value.isdigit():
            return int(value) / 1000
        return self._default_timeout

    async def _stream(
        self,
        request: web.Request,
        target: Any,
        method: MethodContract,
        wire: bytes,
        metadata: Mapping[str, str],
        timeout: float,
    ) -> web.StreamResponse:
        sse = "text/event-stream" in request.headers.get("Accept", "")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
                "Cache-Control": "no-cache",
            }
        )
        stream = self._forwarder.stream(target, method.path, wire, metadata=metadata, timeout=timeout)
        async with contextlib.aclosing(stream) as chunks:
            try:
                async for chunk in chunks:
                    if not response.prepared:
                        await response.prepare(request)
                    data = json.dumps(_to_json(method.response_class.FromString(chunk)))
                    await response.write(f"data: {data}\n\n".encode() if sse else f"{data}\n".encode())
            except MeshError as exc:
                if not response.prepared:
                    raise
                # Headers are sent: the error travels in the stream (Connect end-of-stream style).
                _, body = connect_error(exc)
                line = f"event: error\ndata: {json.dumps(body)}\n\n" if sse else json.dumps({"error": body}) + "\n"
                await response.write(line.encode())
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


__all__ = ["EgressHttpListener", "connect_error"]
