"""Certificates rotate several times under sustained traffic, and not one call fails.

A control plane issuing 4-second certificates (sidecars renew at about half
of that), the writer behind a strict mTLS sidecar, and the researcher's
sidecar as the caller (its egress): unary `Draft` calls back to back, and one
long `StreamDraft` opened before the first rotation and read to its end after
the third, on both sides. The caller's channels of old generations close once
their calls have ended.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from examples.agents.writer.agent import compose
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, admin_json, mtls_agent, unary
from tests.integration.procs import wait_for

DRAFT = "/writing.v1.Writer/Draft"
STREAM_DRAFT = "/writing.v1.Writer/StreamDraft"
TEAM = "examples"
ROTATIONS = 3
FACTS = [f"fact number {i} about tides" for i in range(20)]
TARGET = (("x-agentmesh-target", "writer"),)


@pytest.fixture(scope="module")
def messages() -> Messages:
    return Messages()


@pytest.fixture
def short_lived(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    process = ControlPlaneProcess(tmp_path, tmp_path / "cp.db", "--workload-cert-ttl", "4s")
    yield process
    process.process.stop()


def generation(under_test: AgentUnderTest) -> int:
    identity = under_test.identity()
    assert identity["state"] == "ready", identity
    return int(identity["generation"])


class UnaryTraffic(threading.Thread):
    """Draft calls through the caller's egress, one after another, until stopped; records every outcome."""

    def __init__(self, messages: Messages, egress: str) -> None:
        super().__init__(daemon=True)
        self._messages = messages
        self._egress = egress
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        request = self._messages("writing.v1.DraftRequest", topic="rotation", facts=["one"])
        response = self._messages.cls("writing.v1.DraftResponse")
        with grpc.insecure_channel(self._egress) as channel:
            while not self.stop.is_set():
                try:
                    unary(channel, DRAFT, request, response, timeout=10, metadata=TARGET)
                    self.ok += 1
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code()}: {error.details()}")


def test_rotation_under_sustained_traffic_fails_no_call(
    tmp_path: Path, short_lived: ControlPlaneProcess, messages: Messages
) -> None:
    with (
        mtls_agent(tmp_path, short_lived.address, "writer") as writer,
        mtls_agent(tmp_path, short_lived.address, "researcher") as caller,
    ):
        egress = f"127.0.0.1:{caller.ports.egress_grpc}"
        request = messages("writing.v1.DraftRequest", topic="rotation", facts=["one"])
        with grpc.insecure_channel(egress) as channel:
            wait_for(
                lambda: bool(unary(channel, DRAFT, request, messages.cls("writing.v1.DraftResponse"), metadata=TARGET)),
                what="caller → writer over mTLS",
            )
        traffic = UnaryTraffic(messages, egress)
        traffic.start()
        streamed: list[Any] = []
        stream_request = messages("writing.v1.DraftRequest", topic="tides", facts=FACTS, chunk_delay_ms=1000)
        with grpc.insecure_channel(egress) as channel:
            stream = channel.unary_stream(
                STREAM_DRAFT,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=messages.cls("writing.v1.DraftChunk").FromString,
            )(stream_request, timeout=120, metadata=TARGET)
            streamed.append(next(iter(stream)))
            start = {"writer": generation(writer), "caller": generation(caller)}
            for chunk in stream:
                streamed.append(chunk)
                now = {"writer": generation(writer), "caller": generation(caller)}
                if all(now[side] - start[side] >= ROTATIONS for side in start):
                    break
            rotated = {"writer": generation(writer) - start["writer"], "caller": generation(caller) - start["caller"]}
            # The stream still runs on the channel of the generation it started with, retired by now.
            retired = [c for c in channels_to(caller, writer) if c["retired"]]
            streamed.extend(stream)
        traffic.stop.set()
        traffic.join(30)

        assert all(count >= ROTATIONS for count in rotated.values()), (
            f"the stream ended before {ROTATIONS} rotations on each side ({rotated}); make it longer"
        )
        assert traffic.failures == []
        assert traffic.ok > 0
        assert [(c["generation"], c["in_flight"]) for c in retired] == [(start["caller"], 1)]
        pieces = compose("tides", FACTS, "STYLE_UNSPECIFIED")
        assert [c.index for c in streamed] == list(range(len(pieces)))
        assert "".join(c.text for c in streamed) == "".join(pieces)
        assert streamed[-1].usage.output_tokens > 0

        # The retired channel closed once the stream ended.
        wait_for(lambda: not any(c["retired"] for c in channels_to(caller, writer)), what="retired channels closed")


def channels_to(caller: AgentUnderTest, target: AgentUnderTest) -> list[dict[str, Any]]:
    channels: list[dict[str, Any]] = admin_json(caller.ports, "/config_dump")["targets"]["channels"]
    return [c for c in channels if c["address"] == target.ports.inbound_address]
