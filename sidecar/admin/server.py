"""The sidecar's admin HTTP endpoint (default 127.0.0.1:15000), like Envoy's admin.

Off the request path: it only reads state the sidecar publishes through the
callables it is given, so a slow scrape never touches a call in flight.

    GET /healthz                       200 "ok" while the process runs (liveness)
    GET /readyz                        200, or 503 with the reason (readiness)
    GET /metrics                       Prometheus text, or OpenMetrics with exemplars
    GET /config_dump                   the effective configuration, as JSON (protos as proto3 JSON)
    GET /identity                      the workload identity: mTLS on or off (and why), mode, SPIFFE ID,
                                       certificate serial, validity and generation (never the key)
    GET /manifest                      the capability manifest: proto3 JSON, or binary
                                       with `Accept: application/x-protobuf`
    GET /.well-known/agent-card.json   the manifest as an A2A Agent Card

The JSON manifest is for reading: proto3 JSON drops descriptor options whose
extensions this process does not know (protovalidate's rules, for one); the
binary form, like `agentmesh.v1.Agent/GetManifest`, is exact.

Every failure, including an unknown path or a callable that raises, becomes a
JSON error response; the server itself never stops on a bad request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from google.protobuf import json_format, message, text_format
from pydantic import BaseModel

from agentmesh.v1 import manifest_pb2
from sidecar.admin.agent_card import agent_card
from sidecar.stats import SidecarStats

log = logging.getLogger(__name__)

AGENT_CARD_PATH = "/.well-known/agent-card.json"
# The A2A 0.2 location, still fetched by older clients.
LEGACY_AGENT_CARD_PATH = "/.well-known/agent.json"

# Accept values that select the binary manifest.
_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    """Serves health, readiness, metrics, config and discovery documents over HTTP."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        stats: SidecarStats,
        manifest: Callable[[], manifest_pb2.Manifest],
        card_url: str,
        config_dump: Callable[[], Mapping[str, object]],
        readiness: Callable[[], tuple[bool, str]],
        runtime_config: Callable[[], Mapping[str, str]] = dict,
        identity: Callable[[], Mapping[str, object]] = lambda: {"mtls": False},
    ) -> None:
        self.host = host
        self.port = port
        self._stats = stats
        self._manifest = manifest
        self._card_url = card_url
        self._config_dump = config_dump
        self._readiness = readiness
        self._runtime_config = runtime_config
        self._identity = identity
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"AdminServer(host={self.host!r}, port={self.port!r})"

    async def start(self) -> int:
        """Binds and serves; returns the bound port (useful with port 0). Raises OSError if the port is taken."""
        if self._runner is not None:
            raise RuntimeError("admin server already started")
        app = web.Application(middlewares=[_errors_as_json])
        app.router.add_get("/", self._index)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/config_dump", self._config)
        app.router.add_get("/config", self._runtime)
        app.router.add_get("/identity", self._identity_json)
        app.router.add_get("/manifest", self._manifest_json)
        app.router.add_get(AGENT_CARD_PATH, self._agent_card)
        app.router.add_get(LEGACY_AGENT_CARD_PATH, self._agent_card)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        log.info("admin endpoint listening", extra={"address": f"{self.host}:{self.port}"})
        return self.port

    async def stop(self) -> None:
        """Stops serving; safe to call twice or before start."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _index(self, request: web.Request) -> web.Response:
        routes = sorted(
            {
                str(r.resource.canonical)
                for r in request.app.router.routes()
                if r.resource is not None and r.method == "GET"
            }
        )
        return web.json_response({"endpoints": routes})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready, reason = self._readiness()
        except Exception as exc:
            log.warning("readiness check failed", exc_info=True)
            return web.Response(status=503, text=f"readiness check failed: {exc}\n")
        text = (reason or ("ready" if ready else "not ready")) + "\n"
        return web.Response(status=200 if ready else 503, text=text)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._stats.exposition(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        # Set verbatim: the OpenMetrics type carries parameters aiohttp's content_type setter would drop.
        response.headers["Content-Type"] = content_type
        return response

    async def _runtime(self, request: web.Request) -> web.Response:
        """AgentConfig values in force, as the agent receives them (x-agentmesh-config-<key>)."""
        return web.json_response(dict(self._runtime_config()))

    async def _identity_json(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self._identity()))

    async def _config(self, request: web.Request) -> web.Response:
        body = json.dumps(self._config_dump(), indent=2, default=_json_value, ensure_ascii=False)
        return web.Response(text=body + "\n", content_type="application/json")

    async def _manifest_json(self, request: web.Request) -> web.Response:
        manifest = self._manifest()
        accept = request.headers.get("Accept", "")
        if any(part.split(";")[0].strip() in _PROTOBUF_TYPES for part in accept.split(",")):
            return web.Response(body=manifest.SerializeToString(), content_type="application/x-protobuf")
        body = json_format.MessageToJson(manifest, indent=2)
        return web.Response(text=body + "\n", content_type="application/json")

    async def _agent_card(self, request: web.Request) -> web.Response:
        card = agent_card(self._manifest(), url=self._card_url)
        return web.Response(text=json.dumps(card, indent=2) + "\n", content_type="application/json")


def _json_value(value: object) -> object:
    """JSON for what a config dump holds besides plain data: protos (xDS resources), models, dataclasses."""
    if isinstance(value, message.Message):
        try:
            return json_format.MessageToDict(value)
        except Exception:  # e.g. an Any whose type this process does not know
            return {"@type": value.DESCRIPTOR.full_name, "text": text_format.MessageToString(value, as_one_line=True)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


@web.middleware
async def _errors_as_json(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turns HTTP errors and handler exceptions into JSON error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response(
            {"error": exc.reason, "status": exc.status, "path": request.path}, status=exc.status, headers=headers
        )
    except Exception as exc:
        log.exception("admin request failed", extra={"path": request.path})
        return web.json_response(
            {"error": f"{type(exc).__name__}: {exc}", "status": 500, "path": request.path}, status=500
        )
