"""The control plane's HTTP endpoint (:18080): probes, metrics and Prometheus service discovery.

`/sd/prometheus` follows Prometheus' HTTP SD format: one target group per
sidecar admin endpoint, labelled with agent, version and team, so Prometheus
finds every sidecar without a static list.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from control_plane.registry import Registry


class ControlPlaneHttp:
    def __init__(self, *, registry: Registry, metrics: CollectorRegistry, ready: Callable[[], bool]) -> None:
        self._registry = registry
        self._metrics = metrics
        self._ready = ready
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/sd/prometheus", self._service_discovery)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="no snapshot published yet\n")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._metrics), headers={"Content-Type": content_type})

    async def _service_discovery(self, request: web.Request) -> web.Response:
        groups = [
            {
                "targets": [instance.admin_address],
                "labels": {
                    "agent": instance.agent,
                    "version": instance.version,
                    "team": instance.team,
                    "__metrics_path__": "/metrics",
                },
            }
            for instance in self._registry.instances()
            if instance.admin_address
        ]
        return web.json_response(groups)
