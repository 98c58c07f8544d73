"""Fixtures for the upstream adapter tests: the compiled test contract and a fake HTTP agent."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from agentmesh.protoc import compile_descriptor_set
from sidecar.config.bootstrap import Upstream
from sidecar.contract import ContractSet, MethodContract
from sidecar.upstream.base import UpstreamCall

HERE = Path(__file__).parent
SERVICE = "testing.things.v1.Things"


@functools.cache
def things_contract() -> ContractSet:
    return ContractSet.compile(compile_descriptor_set([HERE / "things.proto"], includes=[HERE]))


def method(name: str) -> MethodContract:
    return things_contract().method(f"/{SERVICE}/{name}")


def request(name: str, fields: Mapping[str, object] | None = None) -> Message:
    """The method's request message, built from its proto3 JSON form."""
    return json_format.ParseDict(dict(fields or {}), method(name).request_class())


def make_call(
    name: str,
    request: Message | None = None,
    *,
    timeout: float | None = 10.0,
    headers: Mapping[str, str] | None = None,
    request_bytes: bytes | None = None,
) -> UpstreamCall:
    contract = method(name)
    return UpstreamCall(
        method=contract,
        request=request if request is not None else contract.request_class(),
        request_bytes=request_bytes,
        timeout=timeout,
        headers=headers or {},
    )


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Seen:
    """One request as the fake agent received it."""

    method: str
    path: str  # raw path with query string, as sent
    query: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


async def echo(request: web.Request, body: bytes) -> web.StreamResponse:
    return web.Response(body=body or b"{}", content_type="application/json")


@dataclass
class FakeAgent:
    """An untouched HTTP agent on loopback whose answer each test scripts."""

    handler: Handler = echo
    seen: list[Seen] = field(default_factory=list)
    # Set when a request arrived, and when a handler saw the client go away.
    received: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    # Slow handlers wait on this; set at teardown.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    @property
    def upstream(self) -> Upstream:
        return Upstream(url=self.url)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.raw_path, list(request.query.items()), dict(request.headers), body)
        )
        self.received.set()
        try:
            return await self.handler(request, body)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    fake = FakeAgent()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    # handler_cancellation: a client disconnect cancels the handler, so tests can see it.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    fake.release.set()
    await runner.cleanup()
