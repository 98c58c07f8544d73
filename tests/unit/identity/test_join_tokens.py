"""Join tokens: format, scope, expiry, use counting (also under concurrency), revocation."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from control_plane.identity.join_tokens import (
    EXPIRED,
    MALFORMED,
    REVOKED,
    UNKNOWN,
    USED_UP,
    JoinTokenNotFound,
    JoinTokenRefused,
    JoinTokenStore,
)
from tests.pki import NOW, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> JoinTokenStore:
    return JoinTokenStore(tmp_path / "cp.db", clock=clock)


def _refusal(store: JoinTokenStore, text: str) -> JoinTokenRefused:
    with pytest.raises(JoinTokenRefused) as caught:
        store.consume(text)
    return caught.value


def test_create_and_consume(store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice", description="ci")
    prefix, token_id, secret = created.secret.split(".")
    assert (prefix, token_id) == ("amjt", created.token.id)
    assert len(secret) >= 40
    token = store.consume(created.secret)
    assert (token.agent, token.team, token.uses, token.max_uses) == ("researcher", "research", 1, 1)
    assert token.spiffe_id("agentmesh.local").uri == "spiffe://agentmesh.local/team/research/agent/researcher"
    assert token.created_by == "alice" and token.description == "ci"
    assert token.expires_at == NOW + dt.timedelta(hours=1)


def test_only_a_hash_of_the_secret_is_stored(tmp_path: Path, store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice")
    secret = created.secret.rsplit(".", 1)[1]
    store.close()
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes()


def test_replay_is_refused(store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice")
    store.consume(created.secret)
    refused = _refusal(store, created.secret)
    assert refused.reason == USED_UP
    assert "already used 1 of 1" in refused.message


def test_max_uses(store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice", max_uses=3)
    assert [store.consume(created.secret).uses for _ in range(3)] == [1, 2, 3]
    assert _refusal(store, created.secret).reason == USED_UP


def test_expiry(store: JoinTokenStore, clock: Clock) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice", ttl=dt.timedelta(minutes=5))
    store.check(created.secret)
    clock.advance(dt.timedelta(minutes=5))
    refused = _refusal(store, created.secret)
    assert refused.reason == EXPIRED and "expired at" in refused.message


def test_revoke(store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice", max_uses=2)
    revoked = store.revoke(created.token.id)
    assert revoked.revoked_at == NOW
    assert store.revoke(created.token.id) == revoked  # again: no change
    assert _refusal(store, created.secret).reason == REVOKED
    with pytest.raises(JoinTokenNotFound):
        store.revoke("0" * 16)


@pytest.mark.parametrize("text", ["", "amjt", "amjt.abc.def", "xyz.0123456789abcdef.secretsecretsecretsecret", "a b"])
def test_malformed(store: JoinTokenStore, text: str) -> None:
    refused = _refusal(store, text)
    assert refused.reason == MALFORMED and "amjt.<id>.<secret>" in refused.message


def test_unknown_id_or_wrong_secret(store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice")
    wrong_secret = created.secret[:-4] + ("AAAA" if not created.secret.endswith("AAAA") else "BBBB")
    assert _refusal(store, wrong_secret).reason == UNKNOWN
    assert _refusal(store, f"amjt.{'0' * 16}.{'x' * 43}").reason == UNKNOWN
    # A wrong guess does not use the token up.
    assert store.consume(created.secret).uses == 1


def test_check_does_not_use(store: JoinTokenStore) -> None:
    created = store.create(agent="researcher", team="research", created_by="alice")
    for _ in range(3):
        assert store.check(created.secret).uses == 0
    store.consume(created.secret)
    with pytest.raises(JoinTokenRefused, match="already used"):
        store.check(created.secret)


def test_listing(store: JoinTokenStore, clock: Clock) -> None:
    used = store.create(agent="a", team="t", created_by="x")
    store.consume(used.secret)
    clock.advance(dt.timedelta(seconds=1))
    revoked = store.create(agent="b", team="t", created_by="x")
    store.revoke(revoked.token.id)
    clock.advance(dt.timedelta(seconds=1))
    expiring = store.create(agent="c", team="t", created_by="x", ttl=dt.timedelta(seconds=10))
    clock.advance(dt.timedelta(seconds=1))
    active = store.create(agent="d", team="t", created_by="x")
    assert [t.agent for t in store.list_tokens()] == ["d", "c"]
    clock.advance(dt.timedelta(seconds=10))
    assert [t.id for t in store.list_tokens()] == [active.token.id]
    every = store.list_tokens(include_inactive=True)
    assert [t.agent for t in every] == ["d", "c", "b", "a"]
    assert [t.state(clock()) for t in every] == ["active", EXPIRED, REVOKED, USED_UP]
    assert expiring.token.id in {t.id for t in every}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"agent": "Researcher"}, "not a valid agent name"),
        ({"team": "research team"}, "not a valid team name"),
        ({"ttl": dt.timedelta(0)}, "ttl must be positive"),
        ({"max_uses": 0}, "max_uses must be at least 1"),
    ],
)
def test_invalid_fields(store: JoinTokenStore, fields: dict[str, object], expected: str) -> None:
    arguments: dict[str, object] = {"agent": "researcher", "team": "research", "created_by": "x", **fields}
    with pytest.raises(ValueError, match=expected):
        store.create(**arguments)  # type: ignore[arg-type]


def test_concurrent_consumption_counts_every_use_once(tmp_path: Path) -> None:
    """Threads on two connections to one file (as two processes would) race for 5 uses: exactly 5 win."""
    stores = [JoinTokenStore(tmp_path / "cp.db"), JoinTokenStore(tmp_path / "cp.db")]
    created = stores[0].create(agent="researcher", team="research", created_by="x", max_uses=5)
    start = threading.Barrier(16)
    outcomes: list[str] = []
    lock = threading.Lock()

    def enroll(store: JoinTokenStore) -> None:
        start.wait()
        try:
            store.consume(created.secret)
            outcome = "ok"
        except JoinTokenRefused as refused:
            outcome = refused.reason
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=enroll, args=(stores[i % 2],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["ok"] * 5 + [USED_UP] * 11
    assert stores[1].get(created.token.id).uses == 5
    for store in stores:
        store.close()
