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
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from sidecar.contract import MessageChecker, MethodContract
from sidecar.errors import HTTP_STATUS, ContractViolation, MeshError, UnknownMethod
from sidecar.inbound.server import headers_of
from sidecar.outbound.egress import TARGET_HEADER, Egress, OutboundRecord, Plan
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
        egress: Egress,
        checker: MessageChecker,
        stats: SidecarStats,
        default_timeout: float,
        max_body_bytes: int,
    ) -> None:
        self._egress = egress
        self._checker = checker
        self._stats = stats
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
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = f"/{request.match_info['service']}/{request.match_info['method']}"
        metadata = headers_of(request.headers.items())
        if agent := request.match_info.get("agent"):
            metadata[TARGET_HEADER] = agent
        with self._egress.observed(path, metadata) as record:
            try:
                plan = await self._egress.plan(record, metadata)
                wire = (await self._request_message(request, plan.method)).SerializeToString()
                timeout = self._timeout(metadata)
                if plan.method.server_streaming:
                    return await self._stream(request, plan, record, wire, metadata, timeout)
                reply = await self._egress.unary(plan, record, wire, metadata, timeout)
                return web.json_response(_to_json(plan.method.response_class.FromString(reply)))
            except MeshError as exc:
                record.code = exc.code.name
                status, body = connect_error(exc)
                return web.json_response(body, status=status)

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
        plan: Plan,
        record: OutboundRecord,
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
        async with contextlib.aclosing(self._egress.stream(plan, record, wire, metadata, timeout)) as chunks:
            try:
                async for chunk in chunks:
                    if not response.prepared:
                        await response.prepare(request)
                    data = json.dumps(_to_json(plan.method.response_class.FromString(chunk)))
                    await response.write(f"data: {data}\n\n".encode() if sse else f"{data}\n".encode())
            except MeshError as exc:
                if not response.prepared:
                    raise
                # Headers are sent: the error travels in the stream (Connect end-of-stream style).
                record.code = exc.code.name
                _, body = connect_error(exc)
                line = f"event: error\ndata: {json.dumps(body)}\n\n" if sse else json.dumps({"error": body}) + "\n"
                await response.write(line.encode())
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
