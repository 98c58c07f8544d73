"""Scenario 6: what contract validation costs per message, in-process.

`sidecar.contract.MessageChecker` on bench.v1.EchoRequest, the way the
inbound chain calls it: `parse` (decode wire bytes, reject unknown fields,
run the protovalidate rules) and `from_json` (the HTTP/JSON path). Messages:
small (a short id), ~1 KiB (the hop benchmark's), 64 KiB in one bytes field,
and 64 KiB of structure (about two thousand nested items, each with rules).
For each, the time of a bare `ParseFromString` too, so the validation share
is visible. Each case runs for a fixed time, not a fixed count.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from agentmesh.protoc import compile_descriptor_set
from bench.backend import PROTO, SERVICE, Messages
from sidecar.contract import ContractSet, MessageChecker

STRUCTURED_TARGET_BYTES = 64 * 1024
MIN_ROUNDS = 5


def _time_per_call(work: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Mean seconds per call over about `seconds` of repeated calls (after one warm-up call)."""
    work()
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    batch = 1
    while True:
        for _ in range(batch):
            work()
        calls += batch
        now = time.perf_counter()
        if now >= deadline and calls >= MIN_ROUNDS:
            return (now - started) / calls, calls
        batch = min(batch * 2, 1024)


def messages(m: Messages) -> dict[str, Any]:
    item = {"name": "an item with a name", "score": 0.5, "count": 12345}
    one = m.item(**item).SerializeToString()
    items = max(1, STRUCTURED_TARGET_BYTES // (len(one) + 3))
    return {
        "small": m.echo_request(id="x", payload=b"p" * 16),
        "1KiB": m.echo_request(id="bench-1", payload=b"p" * 1000, reply_bytes=1024),
        "64KiB_bytes": m.echo_request(id="bench-1", payload=b"p" * (64 * 1024)),
        "64KiB_structured": m.echo_request(id="bench-1", items=[m.item(**item) for _ in range(items)]),
    }


def run(seconds: float) -> dict[str, Any]:
    m = Messages()
    contract = ContractSet.compile(compile_descriptor_set([PROTO]), services=(SERVICE,))
    method = contract.method(f"/{SERVICE}/Echo")
    checker = MessageChecker()
    results: dict[str, Any] = {}
    for name, message in messages(m).items():
        wire = message.SerializeToString()
        as_json = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
        parse_s, _ = _time_per_call(functools.partial(m.echo_request.FromString, wire), seconds)
        check_s, calls = _time_per_call(functools.partial(checker.parse, method, wire, side="request"), seconds)
        json_s, _ = _time_per_call(functools.partial(checker.from_json, method, as_json, side="request"), seconds)
        results[name] = {
            "wire_bytes": len(wire),
            "json_bytes": len(as_json),
            "decode_us": parse_s * 1e6,
            "parse_and_validate_us": check_s * 1e6,
            "validation_us": (check_s - parse_s) * 1e6,
            "from_json_us": json_s * 1e6,
            "calls": calls,
        }
    return results
