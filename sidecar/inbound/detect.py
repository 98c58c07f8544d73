"""Permissive mode's front door: one public port for mutual TLS and plaintext callers.

grpc serves the inbound services on two loopback ports, one with TLS (client
certificates required) and one plaintext. This front accepts connections on
the public port, looks at the first byte the caller sends, and splices the
connection to the matching port: 0x16 opens every TLS handshake (a
handshake record), while a plaintext HTTP/2 connection opens with its
preface ("PRI * HTTP/2.0"). Bytes are copied unchanged both ways, so grpc
sees the caller's own TLS handshake and client certificate; the chain tells
plaintext calls by their transport security (no "ssl"). Plaintext
connections are counted here (`agentmesh_inbound_plaintext_connections_total`).

The splice costs a copy in this process; strict mode (no front, grpc on the
public port) is the one to run once every caller has an identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from prometheus_client import Counter

from sidecar.stats import SidecarStats

log = logging.getLogger("agentmesh.sidecar.inbound")

TLS_HANDSHAKE_RECORD = 0x16
# A caller that connects and sends nothing for this long is dropped.
FIRST_BYTE_TIMEOUT = 10.0
CHUNK_BYTES = 64 * 1024


class PermissiveFront:
    """Accepts on the public inbound address and splices each connection to grpc's TLS or plaintext port."""

    def __init__(self, *, tls_port: int, plaintext_port: int, stats: SidecarStats, host: str = "127.0.0.1") -> None:
        self._host = host
        self._tls_port = tls_port
        self._plaintext_port = plaintext_port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        counter = Counter(
            "agentmesh_inbound_plaintext_connections",
            "Connections accepted without TLS on the inbound port (permissive mode).",
            ("agent",),
            registry=stats.registry,
        )
        self._plaintext = counter.labels(stats.agent)
        self.tls_connections = 0

    async def start(self, host: str, port: int) -> int:
        """Listens on host:port (0 picks a free port); returns the bound port. Raises OSError when taken."""
        self._server = await asyncio.start_server(self._accept, host or None, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        """Closes the public port; spliced connections go on until grpc closes its side (drain) or the caller."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Cuts every spliced connection still open (call after grpc stopped)."""
        self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._splice(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("inbound connection ended: %s", exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _splice(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await asyncio.wait_for(reader.read(CHUNK_BYTES), FIRST_BYTE_TIMEOUT)
        if not first:
            return
        if first[0] == TLS_HANDSHAKE_RECORD:
            self.tls_connections += 1
            port = self._tls_port
        else:
            self._plaintext.inc()
            port = self._plaintext_port
        upstream_reader, upstream_writer = await asyncio.open_connection(self._host, port)
        try:
            _no_delay(upstream_writer)
            upstream_writer.write(first)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()
            with contextlib.suppress(Exception):
                await upstream_writer.wait_closed()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copies until `source` ends, then half-closes `sink` (the other direction may still be talking)."""
    try:
        while chunk := await source.read(CHUNK_BYTES):
            sink.write(chunk)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        if not sink.is_closing() and sink.can_write_eof():
            with contextlib.suppress(OSError):
                sink.write_eof()
