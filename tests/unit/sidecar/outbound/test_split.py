"""Weighted backend choice: Envoy's weighted_clusters, and sticky hashing on a header."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sidecar.config.snapshot import RouteAction, WeightedCluster
from sidecar.errors import NoRoute
from sidecar.outbound.split import pick_cluster, stable_hash
from tests.unit.sidecar.outbound.fakes import Draws


def split(*weights: tuple[str, int], hash_header: str | None = None) -> RouteAction:
    return RouteAction(
        clusters=tuple(WeightedCluster(name, weight) for name, weight in weights),
        timeout=None,
        retry=None,
        hash_header=hash_header,
    )


def never() -> float:
    raise AssertionError("no random draw expected")


def test_single_cluster_needs_no_draw() -> None:
    assert pick_cluster(split(("agent/researcher/v1", 1)), {}, rand=never) == "agent/researcher/v1"


def test_draw_maps_onto_running_sums() -> None:
    action = split(("v1", 9), ("v2", 1))
    assert pick_cluster(action, {}, rand=Draws([0.0])) == "v1"
    assert pick_cluster(action, {}, rand=Draws([0.89])) == "v1"
    assert pick_cluster(action, {}, rand=Draws([0.9])) == "v2"
    assert pick_cluster(action, {}, rand=Draws([0.9999999])) == "v2"
    # A random source returning 1.0 (out of contract) still picks the last entry.
    assert pick_cluster(action, {}, rand=Draws([1.0])) == "v2"


def test_zero_weight_is_never_picked() -> None:
    action = split(("a", 0), ("b", 5), ("c", 0))
    for value in (0.0, 0.2, 0.5, 0.99999):
        assert pick_cluster(action, {}, rand=Draws([value])) == "b"


def test_weighted_proportions_within_tolerance() -> None:
    action = split(("v1", 90), ("v2", 10))
    rand = random.Random(20240611).random
    picks = Counter(pick_cluster(action, {}, rand=rand) for _ in range(20_000))
    # 3.5 standard deviations of a binomial(20000, 0.1) share: 0.0021 * 3.5.
    assert picks["v2"] / 20_000 == pytest.approx(0.10, abs=0.0075)
    assert picks["v1"] + picks["v2"] == 20_000


def test_three_way_split_proportions() -> None:
    action = split(("a", 50), ("b", 30), ("c", 20))
    rand = random.Random(7).random
    picks = Counter(pick_cluster(action, {}, rand=rand) for _ in range(20_000))
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert picks[name] / 20_000 == pytest.approx(share, abs=0.015)


def test_no_weight_at_all_is_no_route() -> None:
    with pytest.raises(NoRoute, match="no cluster of a, b has a weight"):
        pick_cluster(split(("a", 0), ("b", 0)), {}, rand=never)


def test_sticky_header_picks_the_same_cluster_every_time() -> None:
    action = split(("v1", 50), ("v2", 50), hash_header="x-session")
    for session in ("alice", "bob", "carol", "42"):
        first = pick_cluster(action, {"x-session": session}, rand=never)
        assert all(pick_cluster(action, {"x-session": session}, rand=never) == first for _ in range(20))


def test_sticky_hash_is_stable_across_processes() -> None:
    # Fixed values, the same in every process (Python's own hash() of a str is salted per process).
    assert stable_hash("alice") == 0x4DEAEC0CCE54DA89
    assert stable_hash("session-1") == 0xAE49BD2CD463E7AC
    action = split(("v1", 1), ("v2", 1), hash_header="x-session")
    assert pick_cluster(action, {"x-session": "alice"}, rand=never) == ("v1" if 0x4DEAEC0CCE54DA89 % 2 == 0 else "v2")


def test_sticky_hash_spreads_sessions_by_weight() -> None:
    action = split(("v1", 75), ("v2", 25), hash_header="x-session")
    picks = Counter(pick_cluster(action, {"x-session": f"session-{i}"}, rand=never) for i in range(8_000))
    assert picks["v2"] / 8_000 == pytest.approx(0.25, abs=0.02)


def test_sticky_hash_respects_zero_weights() -> None:
    action = split(("v1", 0), ("v2", 3), hash_header="x-session")
    assert {pick_cluster(action, {"x-session": f"s{i}"}, rand=never) for i in range(200)} == {"v2"}


def test_missing_sticky_header_falls_back_to_random() -> None:
    action = split(("v1", 1), ("v2", 1), hash_header="x-session")
    draws = Draws([0.75])
    assert pick_cluster(action, {"other": "x"}, rand=draws) == "v2"
    assert draws.used == 1


def test_sticky_header_name_is_case_insensitive() -> None:
    action = split(("v1", 1), ("v2", 1), hash_header="X-Session")
    expected = pick_cluster(split(("v1", 1), ("v2", 1), hash_header="x-session"), {"x-session": "bob"}, rand=never)
    assert pick_cluster(action, {"x-session": "bob"}, rand=never) == expected
