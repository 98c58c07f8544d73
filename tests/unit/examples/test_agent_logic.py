"""The example agents' deterministic work, without servers: findings, drafts, plans, summaries."""

from __future__ import annotations

from typing import Any

import pytest

from examples.agents.planner import agent as planner
from examples.agents.researcher import agent as researcher
from examples.agents.summarizer import agent as summarizer
from examples.agents.writer import agent as writer


def test_search_is_deterministic_ranked_and_bounded():
    first = researcher.search({"query": "tidal energy", "max_results": 4}, version="v1", model="m")
    assert first == researcher.search({"query": "tidal energy", "max_results": 4}, version="v1", model="m")
    scores = [f["score"] for f in first["findings"]]
    assert len(scores) == 4
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    assert first["usage"]["input_tokens"] > 0 and first["usage"]["output_tokens"] > 0


def test_search_v2_answers_differently():
    request = {"query": "tidal energy", "max_results": 3}
    v1 = researcher.search(request, version="v1", model="m")
    v2 = researcher.search(request, version="v2", model="m")
    assert v1["findings"] != v2["findings"]
    assert all(0.5 <= f["score"] <= 1 for f in v2["findings"])


def test_search_accepts_integers_as_strings_and_defaults_max_results():
    assert len(researcher.search({"query": "abc", "max_results": "2"}, version="v1", model="m")["findings"]) == 2
    assert len(researcher.search({"query": "abc"}, version="v1", model="m")["findings"]) == 5


@pytest.mark.parametrize(
    "request_body",
    [
        {"query": "ab"},
        {"query": "x" * 201},
        {"query": 7},
        {"query": "abc", "max_results": 11},
        {"query": "abc", "max_results": "many"},
    ],
)
def test_search_rejects_bad_requests(request_body: dict[str, Any]):
    with pytest.raises(researcher.AgentError) as caught:
        researcher.search(request_body, version="v1", model="m")
    assert (caught.value.status, caught.value.code) == (400, "invalid_argument")


@pytest.mark.parametrize("style", ["STYLE_UNSPECIFIED", "STYLE_BRIEF", "STYLE_DETAILED", "STYLE_BULLETS"])
def test_draft_pieces_join_to_the_text(style: str):
    call = writer.DraftCall({"topic": "Bees", "facts": ["bees dance", "", "Hives hold thousands"], "style": style})
    assert "".join(call.pieces) == call.text
    assert call.response("m")["word_count"] == len(call.text.split())
    chunks = list(call.chunks("m"))
    assert [c["index"] for c in chunks] == list(range(len(call.pieces)))
    assert "usage" in chunks[-1] and all("usage" not in c for c in chunks[:-1])


def test_draft_styles_differ_and_enums_accept_numbers():
    texts = {writer.DraftCall({"topic": "Bees", "facts": ["bees dance"], "style": s}).text for s in range(4)}
    assert len(texts) == 4
    assert writer.DraftCall({"topic": "Bees", "style": "STYLE_BULLETS"}).text.startswith("Bees:\n- ")


@pytest.mark.parametrize(
    "request_body",
    [
        {"topic": ""},
        {"topic": "t", "facts": "not a list"},
        {"topic": "t", "facts": ["f"] * 21},
        {"topic": "t", "style": "STYLE_FANCY"},
        {"topic": "t", "style": 9},
        {"topic": "t", "chunk_delay_ms": 2001},
        {"topic": "t", "chunk_delay_ms": -1},
    ],
)
def test_draft_rejects_bad_requests(request_body: dict[str, Any]):
    with pytest.raises(writer.AgentError) as caught:
        writer.DraftCall(request_body)
    assert caught.value.code == "invalid_argument"


def test_stream_error_hook_fails_mid_stream():
    call = writer.DraftCall({"topic": "__stream_error__", "facts": ["a", "b", "c"], "chunk_delay_ms": 0})
    chunks = call.chunks("m")
    assert [next(chunks)["index"], next(chunks)["index"]] == [0, 1]
    with pytest.raises(writer.AgentError, match="mid-stream"):
        next(chunks)


class _FakeEgress(planner.Egress):
    def __init__(self, fail: str = "") -> None:
        super().__init__("http://egress.invalid", {}, None)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = fail

    def call(self, agent: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((agent, method, request))
        if agent == self.fail:
            raise planner.AgentError(503, "unavailable", f"{agent} down")
        if agent == "researcher":
            return researcher.search(request, version="v1", model="r")
        return writer.DraftCall(request).response("w")


def test_plan_researches_each_section_then_drafts():
    egress = _FakeEgress()
    result = planner.plan({"topic": "tidal energy", "max_sections": 2}, egress, model="p")
    assert [c[:2] for c in egress.calls] == [
        ("researcher", "research.v1.Researcher/Search"),
        ("researcher", "research.v1.Researcher/Search"),
        ("writer", "writing.v1.Writer/Draft"),
    ]
    assert [s["title"] for s in result["sections"]] == ["Background of tidal energy", "Current state of tidal energy"]
    assert all(len(s["sources"]) == planner.FINDINGS_PER_SECTION for s in result["sections"])
    assert egress.calls[-1][2]["facts"] == [s["research_summary"] for s in result["sections"]]
    assert result["draft"].startswith("This draft looks at tidal energy.")
    assert result["usage"]["input_tokens"] > 40


def test_plan_keeps_search_queries_within_the_researcher_limit():
    egress = _FakeEgress()
    planner.plan({"topic": "t" * 200, "max_sections": 5}, egress, model="p")
    assert all(len(request["query"]) <= 200 for agent, _, request in egress.calls if agent == "researcher")


def test_plan_fails_with_the_downstream_error():
    with pytest.raises(planner.AgentError) as caught:
        planner.plan({"topic": "tidal energy"}, _FakeEgress(fail="writer"), model="p")
    assert (caught.value.status, caught.value.code) == (503, "unavailable")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            503,
            b'{"code": "unavailable", "message": "no healthy endpoint", "details": [{"type": "x"}]}',
            (503, "unavailable"),
        ),
        (403, b'{"code": "permission_denied", "message": "denied"}', (403, "permission_denied")),
        (400, b'{"code": "invalid_argument", "message": "query too short"}', (500, "internal")),
        (504, b"gateway timeout", (504, "deadline_exceeded")),
        (502, b"<html>", (502, "unavailable")),
    ],
)
def test_downstream_errors_map_to_the_planners_error(status: int, body: bytes, expected: tuple[int, str]):
    error = planner._downstream_error("researcher Search", status, body)
    assert (error.status, error.code) == expected
    assert error.message.startswith("researcher Search failed: ")


def test_summary_stays_within_the_word_budget_and_keeps_text_order():
    text = "Rivers carry water. Rivers carry sediment to the sea. Mountains are tall. Water shapes rivers and valleys."
    sentences = summarizer.select_sentences(text, 12)
    assert sum(len(s.split()) for s in sentences) <= 12
    assert sentences == sorted(sentences, key=text.index)
    assert summarizer.select_sentences(text, 12) == sentences


def test_summary_cuts_a_sentence_longer_than_the_budget():
    assert summarizer.select_sentences("one two three four five six", 3) == ["one two three ..."]
    assert summarizer.select_sentences("   ", 3) == []
