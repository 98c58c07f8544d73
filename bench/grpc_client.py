"""A Python grpc.aio load generator, run as its own process: `python -m bench.grpc_client MODE ...`.

Used where h2load cannot go, and clearly labelled as such in the report:

- `unary`: open loop at `--rate` req/s (latency measured from each call's
  scheduled time, so a stalled server is not hidden by a stalled client) or
  closed loop with `--concurrency` callers. The target may be `xds:///<agent>`
  (gRPC's proxyless xDS client; bootstrap from GRPC_XDS_BOOTSTRAP_CONFIG),
  which h2load cannot resolve. It is also the fallback when h2load is absent.
- `ttfm`: sequential server-streaming calls; time from each call's start to
  its first message.
- `streams`: `--count` server streams held open at once, opened at
  `--open-rate` per second; prints `open <n>` when all are open (or failed)
  and counts messages, errors and completions.

Each mode writes one JSON document to `--out`. Requests are raw bytes from
`--body-file` (a serialized message, not framed). With `--tls-dir` (a
workload identity's `key.pem`, `cert-chain.pem`, `root-cert.pem`) every
channel is mutual TLS, presenting that certificate and verifying the
server's DNS SAN `--tls-server-name`; the handshake happens while
connecting, before the clock starts, as on any long-lived channel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# Bounds that keep a run finite whatever the server does.
MAX_IN_FLIGHT = 20_000
CALL_TIMEOUT_S = 30.0
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 8 * 1024 * 1024)]
# A workload identity's files (agentmesh/identity/files.py names them so).
TLS_KEY, TLS_CHAIN, TLS_ROOTS = "key.pem", "cert-chain.pem", "root-cert.pem"


@dataclass(frozen=True)
class ClientTls:
    """Mutual TLS for the generator's channels: the identity it presents and the server name it expects."""

    key_pem: bytes
    chain_pem: bytes
    roots_pem: bytes
    server_name: str

    @classmethod
    def from_dir(cls, directory: Path, server_name: str) -> ClientTls:
        """Reads the three PEM files; a missing one is an error naming it."""
        files = {name: directory / name for name in (TLS_KEY, TLS_CHAIN, TLS_ROOTS)}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise ValueError(f"--tls-dir {directory}: missing {', '.join(missing)}")
        if not server_name:
            raise ValueError("--tls-dir needs --tls-server-name: the DNS name the server's certificate carries")
        return cls(
            files[TLS_KEY].read_bytes(), files[TLS_CHAIN].read_bytes(), files[TLS_ROOTS].read_bytes(), server_name
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.roots_pem, private_key=self.key_pem, certificate_chain=self.chain_pem
        )


def _channels(target: str, count: int, authority: str | None, tls: ClientTls | None = None) -> list[grpc.aio.Channel]:
    options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
    if authority:
        options.append(("grpc.default_authority", authority))
    if tls is None:
        return [grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, count))]
    options.append(("grpc.ssl_target_name_override", tls.server_name))
    return [grpc.aio.secure_channel(target, tls.credentials(), options=options) for _ in range(max(1, count))]


def _metadata(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((k.strip().lower(), v.strip()) for k, _, v in (p.partition("=") for p in pairs))


async def _unary(args: argparse.Namespace) -> dict[str, Any]:
    body: bytes = args.body
    metadata = _metadata(args.metadata)
    channels = _channels(args.target, args.channels, args.authority, args.tls)
    stubs = [c.unary_unary(args.method, request_serializer=None, response_deserializer=None) for c in channels]
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    for stub in stubs:  # connect (and, for xds:///, resolve) before the clock starts
        await stub(body, timeout=CALL_TIMEOUT_S, metadata=metadata, wait_for_ready=True)
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    loop = asyncio.get_running_loop()

    async def one(index: int, scheduled: float) -> None:
        try:
            await stubs[index % len(stubs)](body, timeout=CALL_TIMEOUT_S, metadata=metadata)
            latencies.append(int((loop.time() - scheduled) * 1e6))
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
        finally:
            in_flight.release()

    started = loop.time()
    deadline = started + args.duration
    tasks: set[asyncio.Task[None]] = set()
    if args.rate:
        interval = 1 / args.rate
        index = 0
        while True:
            scheduled = started + index * interval
            if scheduled >= deadline:
                break
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            task = asyncio.ensure_future(one(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
    else:

        async def worker(index: int) -> None:
            while loop.time() < deadline:
                await in_flight.acquire()
                await one(index, loop.time())

        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    if tasks:
        await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S)
    elapsed = loop.time() - started
    for channel in channels:
        await channel.close(None)
    return {"latencies_us": latencies, "errors": dict(errors), "elapsed_s": elapsed}


async def _ttfm(args: argparse.Namespace) -> dict[str, Any]:
    body: bytes = args.body
    metadata = _metadata(args.metadata)
    (channel,) = _channels(args.target, 1, args.authority, args.tls)
    stream = channel.unary_stream(args.method, request_serializer=None, response_deserializer=None)
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    for index in range(args.count + args.warmup):
        started = time.perf_counter()
        call = stream(body, timeout=CALL_TIMEOUT_S, metadata=metadata, wait_for_ready=True)
        try:
            async for _ in call:
                if index >= args.warmup:
                    latencies.append(int((time.perf_counter() - started) * 1e6))
                break
            call.cancel()
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
    await channel.close(None)
    return {"latencies_us": latencies, "errors": dict(errors)}


async def _streams(args: argparse.Namespace) -> dict[str, Any]:
    body: bytes = args.body
    metadata = _metadata(args.metadata)
    channels = _channels(args.target, args.channels, args.authority, args.tls)
    callables = [c.unary_stream(args.method, request_serializer=None, response_deserializer=None) for c in channels]
    errors: Counter[str] = Counter()
    # The first failure of each status, with whether its stream had opened: a clue to which hop refused it.
    examples: dict[str, dict[str, Any]] = {}
    counts = {"opened": 0, "completed": 0, "messages": 0}
    first_message = asyncio.Event()
    settled = 0
    all_settled = asyncio.Event()
    loop = asyncio.get_running_loop()
    message_times: list[float] = []
    completion_times: list[float] = []

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == args.count:
            all_settled.set()

    async def one(index: int) -> None:
        call = callables[index % len(callables)](body, timeout=args.timeout, metadata=metadata)
        opened = False
        try:
            async for _ in call:
                counts["messages"] += 1
                message_times.append(loop.time())
                if not opened:
                    opened = True
                    counts["opened"] += 1
                    settle()
                    first_message.set()
            counts["completed"] += 1
            completion_times.append(loop.time())
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1
            examples.setdefault(
                exc.code().name,
                {"details": exc.details(), "debug": exc.debug_error_string()[:500], "opened": opened, "index": index},
            )
        finally:
            if not opened:
                settle()

    started = loop.time()
    tasks = []
    for index in range(args.count):
        scheduled = started + index / args.open_rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_settled.wait(), args.timeout)
    all_open_at = loop.time()
    print(f"open {counts['opened']}", flush=True)
    await asyncio.wait(tasks, timeout=args.timeout)
    finished = loop.time()
    for channel in channels:
        await channel.close(None)
    # Message rate while every stream was open: from the moment all were open to the first completion.
    window_end = min(completion_times, default=finished)
    window = [t for t in message_times if all_open_at <= t <= window_end]
    span = max(0.0, window_end - all_open_at)
    return {
        **counts,
        "errors": dict(errors),
        "error_examples": examples,
        "open_s": all_open_at - started,
        "elapsed_s": finished - started,
        "steady_messages": len(window),
        "steady_span_s": span,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("unary", "ttfm", "streams"))
    parser.add_argument("--target", required=True, help="host:port or xds:///<agent>")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--authority")
    parser.add_argument("--metadata", action="append", default=[], help="key=value, repeatable")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop req/s (unary); 0 = closed loop")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop callers (unary)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=100, help="calls (ttfm) or streams (streams)")
    parser.add_argument("--warmup", type=int, default=20, help="calls not measured first (ttfm)")
    parser.add_argument("--open-rate", type=float, default=1000.0, help="streams opened per second")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-stream deadline (streams)")
    parser.add_argument("--tls-dir", type=Path, help="call over mutual TLS with the identity in this folder")
    parser.add_argument("--tls-server-name", default="", help="the DNS name the server's certificate must carry")
    args = parser.parse_args(argv)
    args.body = Path(args.body_file).read_bytes()
    args.tls = None
    if args.tls_dir is not None:
        try:
            args.tls = ClientTls.from_dir(args.tls_dir, args.tls_server_name)
        except ValueError as exc:
            parser.error(str(exc))
    elif args.tls_server_name:
        parser.error("--tls-server-name needs --tls-dir")
    run = {"unary": _unary, "ttfm": _ttfm, "streams": _streams}[args.mode]
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
