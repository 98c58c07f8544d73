"""The summarizer: an untouched gRPC agent implementing summarize.v1.Summarizer.

It uses grpcio and protobuf only. Instead of importing protoc-generated
modules (which would need a `buf.validate` Python module for the rule
annotations), it builds its message classes at start-up from
`summarizer.binpb`, the compiled form of summarizer.proto committed beside
it, and serves them with a generic handler. grpc.health.v1 is served too.

No model is called: the summary is extractive (the sentences whose words are
most frequent in the text, in their original order, within `max_words`), so
answers are deterministic, and a made-up token usage is reported.

Test hooks, by text:

    __error__     UNAVAILABLE
    __invalid__   an empty summary (the contract requires at least one character)
    __slow__      answer after 5 s, or stop early when the call is cancelled
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "summarize.v1.Summarizer"
MODEL = "summarizer-sim-1"
DEFAULT_DESCRIPTOR_SET = Path(__file__).resolve().parent / "summarizer.binpb"
SLOW_SECONDS = 5.0
STREAM_DELAY_SECONDS = 0.01
CONFIG_MODEL_KEY = "x-agentmesh-config-model"
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_WORD = re.compile(r"[a-z0-9']+")

log = logging.getLogger("summarizer")


class Messages:
    """The service's message classes, built from a FileDescriptorSet."""

    def __init__(self, descriptor_set: Path) -> None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for file in fds.file:
            pool.Add(file)
        service = pool.FindServiceByName(SERVICE)
        self.request: type[message.Message] = message_factory.GetMessageClass(
            service.methods_by_name["Summarize"].input_type
        )
        self.response: type[message.Message] = message_factory.GetMessageClass(
            service.methods_by_name["Summarize"].output_type
        )
        self.chunk: type[message.Message] = message_factory.GetMessageClass(
            service.methods_by_name["StreamSummary"].output_type
        )


def select_sentences(text: str, max_words: int) -> list[str]:
    """The extractive summary as sentences, in text order, at most `max_words` words in all."""
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    frequency = Counter(w for w in _WORD.findall(text.lower()) if len(w) > 3)

    def weight(sentence: str) -> float:
        words = _WORD.findall(sentence.lower())
        return sum(frequency[w] for w in words) / (len(words) or 1)

    ranked = sorted(range(len(sentences)), key=lambda i: (-weight(sentences[i]), i))
    chosen: list[int] = []
    budget = max_words
    for index in ranked:
        length = len(sentences[index].split())
        if length <= budget:
            chosen.append(index)
            budget -= length
    if not chosen and sentences:
        # Even the best sentence is too long: cut it to the budget.
        return [" ".join(sentences[ranked[0]].split()[:max_words]) + " ..."]
    return [sentences[i] for i in sorted(chosen)]


def usage(text: str, summary: str) -> dict[str, int]:
    """A made-up token count, as a model would report it."""
    return {"input_tokens": 12 + len(text.split()) * 4 // 3, "output_tokens": len(summary.split()) * 4 // 3}


class Summarizer:
    """The two skills, written against grpc's servicer context."""

    def __init__(self, messages: Messages) -> None:
        self.messages = messages

    def _check(self, request: Any, context: grpc.ServicerContext) -> list[str]:
        text: str = request.text
        if not 1 <= len(text) <= 100_000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text must have 1 to 100000 characters")
        if not 1 <= request.max_words <= 500:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_words must be between 1 and 500")
        if text == "__error__":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the summarizer's model is overloaded (test hook __error__)")
        if text == "__slow__":
            deadline = time.monotonic() + SLOW_SECONDS
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.05)
        if text == "__invalid__":
            return [""]
        sentences = select_sentences(text, request.max_words)
        if not sentences:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text has no sentences to summarize")
        return sentences

    def summarize(self, request: Any, context: grpc.ServicerContext) -> message.Message:
        sentences = self._check(request, context)
        summary = " ".join(sentences)
        return self.messages.response(summary=summary, usage=usage(request.text, summary), model=_model(context))

    def stream_summary(self, request: Any, context: grpc.ServicerContext) -> Iterator[message.Message]:
        sentences = self._check(request, context)
        for index, sentence in enumerate(sentences):
            if index:
                time.sleep(STREAM_DELAY_SECONDS)
            if not context.is_active():
                log.info("StreamSummary cancelled after %d chunks", index)
                return
            if index == len(sentences) - 1:
                last = {"usage": usage(request.text, " ".join(sentences)), "model": _model(context)}
                yield self.messages.chunk(text=sentence, index=index, **last)
            else:
                yield self.messages.chunk(text=sentence, index=index)

    def handler(self) -> grpc.GenericRpcHandler:
        m = self.messages
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Summarize": grpc.unary_unary_rpc_method_handler(
                    _logged("Summarize", self.summarize), m.request.FromString, m.response.SerializeToString
                ),
                "StreamSummary": grpc.unary_stream_rpc_method_handler(
                    _logged("StreamSummary", self.stream_summary), m.request.FromString, m.chunk.SerializeToString
                ),
            },
        )


def _model(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == CONFIG_MODEL_KEY and isinstance(value, str) and value:
            return value
    return MODEL


def _logged(name: str, behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        trace = dict(context.invocation_metadata()).get("traceparent", "-")
        log.info("%s from %s traceparent=%s", name, context.peer(), trace)
        return behaviour(request, context)

    return call


def serve(host: str, port: int, descriptor_set: Path) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Starts the gRPC server; returns it, the bound port and its health servicer."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((Summarizer(Messages(descriptor_set)).handler(),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    for service in ("", SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The summarizer example agent (gRPC).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8401, help="0 picks a free port")
    parser.add_argument("--descriptor-set", type=Path, default=DEFAULT_DESCRIPTOR_SET)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    server, port, health_servicer = serve(args.host, args.port, args.descriptor_set)
    stopping = threading.Event()

    def terminate(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    print(f"summarizer listening on {args.host}:{port} (grpc)", flush=True)
    while not stopping.wait(1.0):
        pass
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
