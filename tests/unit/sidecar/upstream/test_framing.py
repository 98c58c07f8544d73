"""SSE and NDJSON framing, fed as whole bodies and byte by byte."""

from __future__ import annotations

import pytest

from sidecar.errors import ContractViolation
from sidecar.upstream._framing import NdjsonParser, SseEvent, SseParser

STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    b"data: one\r\n\r\n"
    b"event: update\rdata: two\rdata:  three\r\r"
    b"id: 42\nretry: 5\nunknown: x\ndata\n\n"
    b"event: lonely\n\n"
    b"id: bad\0id\ndata:last\n\n"
)
EVENTS = [
    SseEvent("message", b"one"),
    SseEvent("update", b"two\n three"),
    SseEvent("message", b"", "42"),
    SseEvent("message", b"last", "42"),
]


def sse(chunks: list[bytes], limit: int = 1024) -> list[SseEvent]:
    parser = SseParser(limit)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return [*events, *parser.feed(b"", end=True)]


def test_sse_whole_body() -> None:
    assert sse([STREAM]) == EVENTS


def test_sse_byte_by_byte() -> None:
    assert sse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


def test_sse_crlf_split_across_chunks_is_one_line_end() -> None:
    assert sse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [SseEvent("message", b"a\nb")]


def test_sse_trailing_cr_at_the_end_of_the_body_ends_the_line() -> None:
    assert sse([b"data: a\n\r"]) == [SseEvent("message", b"a")]


def test_sse_event_without_data_is_not_dispatched_and_resets_the_type() -> None:
    assert sse([b"event: x\n\ndata: y\n\n"]) == [SseEvent("message", b"y")]


def test_sse_ending_inside_an_event_is_malformed() -> None:
    for body in (b"data: a\n", b"data: a\n\ndata: b"):
        parser = SseParser(1024)
        with pytest.raises(ContractViolation) as caught:
            list(parser.feed(body, end=True))
        assert (caught.value.side, caught.value.reason) == ("response", "malformed_sse")


def test_sse_bom_alone_and_empty_bodies() -> None:
    assert sse([b"\xef\xbb"]) == []
    assert sse([]) == []


def test_sse_comment_at_the_end_is_fine() -> None:
    assert sse([b"data: a\n\n: bye"]) == [SseEvent("message", b"a")]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * 200 + b"\n\n"],
        [b"data: " + b"x" * 60 + b"\n", b"data: " + b"x" * 60 + b"\n"],
        [b"data: " + b"x" * 200],  # no line end yet: refused without buffering it all
    ],
)
def test_sse_event_above_the_limit(chunks: list[bytes]) -> None:
    parser = SseParser(100)
    with pytest.raises(ContractViolation) as caught:
        for chunk in chunks:
            list(parser.feed(chunk))
    assert caught.value.reason == "too_large"


def test_sse_events_before_a_too_large_one_are_delivered() -> None:
    parser = SseParser(100)
    got = []
    with pytest.raises(ContractViolation):
        for event in parser.feed(b"data: ok\n\ndata: " + b"x" * 200 + b"\n\n"):
            got.append(event)
    assert got == [SseEvent("message", b"ok")]


def test_ndjson_lines() -> None:
    parser = NdjsonParser(1024)
    body = b'{"a": 1}\n\n  {"b": 2}  \r\n\n{"c": 3}'
    got = [line for i in range(len(body)) for line in parser.feed(body[i : i + 1])]
    assert got == [b'{"a": 1}', b'{"b": 2}']
    assert list(parser.feed(b"", end=True)) == [b'{"c": 3}']


def test_ndjson_blank_tail_is_no_message() -> None:
    parser = NdjsonParser(1024)
    assert list(parser.feed(b'{"a": 1}\n  ', end=True)) == [b'{"a": 1}']


def test_ndjson_line_above_the_limit() -> None:
    parser = NdjsonParser(10)
    with pytest.raises(ContractViolation) as caught:
        list(parser.feed(b'{"a": "' + b"x" * 100 + b'"}\n'))
    assert caught.value.reason == "too_large"
