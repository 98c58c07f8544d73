"""The versioned store: versions, diffs, history, rollback, no-op apply, delete, dry runs, persistence."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentmesh.config import ConfigError
from control_plane.policy.model import AccessPolicy, AgentConfig, PolicyRef, TrafficPolicy
from control_plane.policy.store import PolicyStore, PolicyStoreError
from control_plane.policy.validate import load_documents

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "policies"


def canary(v2: int, name: str = "canary", target: str = "researcher") -> TrafficPolicy:
    split = [{"version": "v1", "weight": 100 - v2}, {"version": "v2", "weight": v2}]
    return TrafficPolicy.model_validate({"metadata": {"name": name}, "spec": {"target": target, "split": split}})


def config(name: str, target: str, **values: str) -> AgentConfig:
    return AgentConfig.model_validate({"metadata": {"name": name}, "spec": {"target": target, "values": values}})


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def store():
    with PolicyStore(clock=Clock()) as opened:
        yield opened


def test_empty_store_is_version_zero(store: PolicyStore) -> None:
    assert store.current_version() == 0
    assert store.get() == []
    assert store.history() == []
    assert store.current().policies == ()


def test_apply_creates_versions_with_diffs(store: PolicyStore) -> None:
    first = store.apply([canary(10), config("cfg", "researcher", model="small")], author="ana", message="canary")
    assert (first.version, first.created) == (1, True)
    assert first.added == (PolicyRef("AgentConfig", "cfg"), PolicyRef("TrafficPolicy", "canary"))
    assert first.changed == first.removed == first.unchanged == ()
    assert "+++ b/TrafficPolicy/canary" in first.diff and "--- /dev/null" in first.diff

    second = store.apply([canary(50), config("cfg", "researcher", model="small")], author="bo")
    assert second.version == 2
    assert second.changed == (PolicyRef("TrafficPolicy", "canary"),)
    assert second.unchanged == (PolicyRef("AgentConfig", "cfg"),)
    assert second.diff == (
        "--- a/TrafficPolicy/canary\n"
        "+++ b/TrafficPolicy/canary\n"
        "@@ -6,6 +6,6 @@\n"
        "   target: researcher\n"
        "   split:\n"
        "   - version: v1\n"
        "-    weight: 90\n"
        "+    weight: 50\n"
        "   - version: v2\n"
        "-    weight: 10\n"
        "+    weight: 50\n"
    )
    assert store.current_version() == 2
    assert store.get("TrafficPolicy", "canary") == [canary(50)]
    assert store.get("TrafficPolicy", "canary", version=1) == [canary(10)]
    assert store.get(version=0) == []


def test_identical_apply_creates_no_version(store: PolicyStore) -> None:
    store.apply([canary(10)], author="ana")
    again = store.apply([canary(10)], author="ana")
    assert (again.version, again.created, again.is_noop) == (1, False, True)
    assert again.unchanged == (PolicyRef("TrafficPolicy", "canary"),)
    assert again.diff == ""
    assert store.current_version() == 1
    assert len(store.history()) == 1


def test_dry_run_reports_and_stores_nothing(store: PolicyStore) -> None:
    store.apply([canary(10)], author="ana")
    preview = store.apply([canary(30)], author="ana", dry_run=True)
    assert (preview.version, preview.dry_run, preview.created) == (2, True, False)
    assert preview.changed == (PolicyRef("TrafficPolicy", "canary"),)
    assert "+    weight: 30" in preview.diff
    assert store.current_version() == 1
    assert store.get() == [canary(10)]
    assert store.delete("TrafficPolicy", "canary", author="ana", dry_run=True).removed == (
        PolicyRef("TrafficPolicy", "canary"),
    )
    assert store.current_version() == 1


def test_apply_keeps_other_documents_unless_pruned(store: PolicyStore) -> None:
    store.apply([canary(10), config("cfg", "researcher", model="small")], author="ana")
    kept = store.apply([config("other", "writer", tone="dry")], author="ana")
    assert {str(p.ref) for p in store.get()} == {"AgentConfig/cfg", "AgentConfig/other", "TrafficPolicy/canary"}
    assert kept.added == (PolicyRef("AgentConfig", "other"),)
    pruned = store.apply([config("other", "writer", tone="dry")], author="ana", prune=True)
    assert pruned.removed == (PolicyRef("AgentConfig", "cfg"), PolicyRef("TrafficPolicy", "canary"))
    assert "+++ /dev/null" in pruned.diff
    assert [str(p.ref) for p in store.get()] == ["AgentConfig/other"]


def test_delete(store: PolicyStore) -> None:
    store.apply([canary(10), config("cfg", "researcher", model="small")], author="ana")
    result = store.delete("AgentConfig", "cfg", author="bo")
    assert (result.version, result.removed) == (2, (PolicyRef("AgentConfig", "cfg"),))
    assert store.get("AgentConfig") == []
    assert store.history(limit=1)[0].message == "delete AgentConfig/cfg"
    with pytest.raises(PolicyStoreError, match="AgentConfig/cfg is not stored"):
        store.delete("AgentConfig", "cfg", author="bo")
    assert store.current_version() == 2


def test_history_newest_first(store: PolicyStore) -> None:
    store.apply([canary(10)], author="ana", message="start the canary")
    store.apply([canary(50)], author="bo", message="half")
    store.delete("TrafficPolicy", "canary", author="cy")
    history = store.history()
    assert [(h.version, h.author, h.message) for h in history] == [
        (3, "cy", "delete TrafficPolicy/canary"),
        (2, "bo", "half"),
        (1, "ana", "start the canary"),
    ]
    assert history[0].created_at > history[1].created_at > history[2].created_at
    assert history[0].removed == (PolicyRef("TrafficPolicy", "canary"),)
    assert history[1].changed == (PolicyRef("TrafficPolicy", "canary"),)
    assert "-    weight: 10" in history[1].diff
    assert [h.version for h in store.history(limit=2)] == [3, 2]
    assert len(store.history(limit=None)) == 3


def test_rollback_creates_a_new_version_equal_to_the_old_one(store: PolicyStore) -> None:
    store.apply([canary(10)], author="ana")
    store.apply([canary(50), config("cfg", "researcher", model="large")], author="ana")
    result = store.rollback(1, author="bo")
    assert result.version == 3
    assert result.changed == (PolicyRef("TrafficPolicy", "canary"),)
    assert result.removed == (PolicyRef("AgentConfig", "cfg"),)
    assert store.get() == store.get(version=1) == [canary(10)]
    assert store.history(limit=1)[0].message == "rollback to version 1"
    again = store.rollback(1, author="bo")
    assert again.is_noop and store.current_version() == 3
    assert store.rollback(0, author="bo").removed == (PolicyRef("TrafficPolicy", "canary"),)
    with pytest.raises(PolicyStoreError, match=r"no version 9 \(current: 4\)"):
        store.rollback(9, author="bo")
    with pytest.raises(PolicyStoreError, match="no version 9"):
        store.get(version=9)


def test_refused_changes_store_nothing(store: PolicyStore) -> None:
    store.apply([canary(10)], author="ana")
    with pytest.raises(ConfigError, match="researcher already has TrafficPolicy/canary"):
        store.apply([canary(20, name="second")], author="ana")
    with pytest.raises(PolicyStoreError, match="given twice"):
        store.apply([canary(20), canary(30)], author="ana")
    with pytest.raises(PolicyStoreError, match="author"):
        store.apply([canary(20)], author="")
    with pytest.raises(PolicyStoreError, match="unknown kind"):
        store.get("Gateway")
    assert store.current_version() == 1
    assert store.get() == [canary(10)]


def test_every_example_round_trips(store: PolicyStore) -> None:
    documents = [d.policy for d in load_documents([EXAMPLES])]
    store.apply(documents, author="ana")
    assert sorted(store.get(), key=lambda p: p.ref) == sorted(documents, key=lambda p: p.ref)
    access = store.get("AccessPolicy")[0]
    assert isinstance(access, AccessPolicy)
    assert access.spec.rules[0].from_ is not None
    assert store.apply(documents, author="ana").is_noop


def test_file_store_persists_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "policy.db"
    with PolicyStore(path) as store:
        store.apply([canary(10)], author="ana")
        store.apply([canary(20)], author="ana")
    with PolicyStore(path) as reopened:
        assert reopened.current_version() == 2
        assert reopened.get(version=1) == [canary(10)]
        assert repr(reopened) == f"PolicyStore({str(path)!r})"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Identical documents are stored once, whatever the number of versions holding them.
        assert raw.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 2


def test_concurrent_writers_get_distinct_versions(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policy.db")
    results: list[int] = []
    failures: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for round_ in range(5):
                results.append(
                    store.apply([config(f"cfg-{index}", f"agent-{index}", n=str(round_))], author="t").version
                )
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert failures == []
    assert sorted(results) == list(range(1, 21))
