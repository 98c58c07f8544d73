from __future__ import annotations

from control_plane.xds.ack_tracker import AckTracker, Nack, RequestKind, SyncStatus
from control_plane.xds.snapshot import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def tracker() -> AckTracker:
    return AckTracker(clock=FakeClock())


def test_nothing_sent_is_not_sent():
    t = tracker()

    assert t.status("n", CLUSTER_TYPE) is SyncStatus.NOT_SENT
    assert t.state("n", CLUSTER_TYPE).sent_version is None
    assert t.snapshot() == []


def test_sent_is_stale_until_acked_then_synced():
    t = tracker()
    t.record_sent("n", CLUSTER_TYPE, version="v1", nonce="1")
    assert t.status("n", CLUSTER_TYPE) is SyncStatus.STALE

    kind = t.record_request("n", CLUSTER_TYPE, response_nonce="1", version_info="v1")

    assert kind is RequestKind.ACK
    state = t.state("n", CLUSTER_TYPE)
    assert state.status is SyncStatus.SYNCED
    assert (state.sent_version, state.acked_version, state.acked_nonce) == ("v1", "v1", "1")
    assert state.acked_at is not None and state.sent_at is not None and state.acked_at > state.sent_at


def test_initial_requests_change_nothing():
    t = tracker()
    t.record_sent("n", CLUSTER_TYPE, version="v1", nonce="1")

    assert t.record_request("n", CLUSTER_TYPE, response_nonce="", version_info="v0") is RequestKind.INITIAL
    assert t.state("n", CLUSTER_TYPE).acked_version is None
    assert t.status("n", CLUSTER_TYPE) is SyncStatus.STALE


def test_stale_nonces_are_ignored_for_acks_and_nacks():
    t = tracker()
    t.record_sent("n", CLUSTER_TYPE, version="v1", nonce="1")
    t.record_sent("n", CLUSTER_TYPE, version="v2", nonce="2")

    assert t.record_request("n", CLUSTER_TYPE, response_nonce="1", version_info="v1") is RequestKind.STALE
    assert t.record_request("n", CLUSTER_TYPE, response_nonce="garbage", version_info="v1") is RequestKind.STALE
    assert (
        t.record_request("n", CLUSTER_TYPE, response_nonce="1", version_info="v0", error_code=3, error_message="bad")
        is RequestKind.STALE
    )
    state = t.state("n", CLUSTER_TYPE)
    assert state.acked_version is None
    assert state.last_nack is None
    assert state.status is SyncStatus.STALE


def test_a_nonce_for_a_type_never_sent_is_stale():
    t = tracker()

    assert t.record_request("n", ROUTE_TYPE, response_nonce="7", version_info="v1") is RequestKind.STALE
    assert t.status("n", ROUTE_TYPE) is SyncStatus.NOT_SENT


def test_nack_records_the_rejected_version_and_never_advances_the_ack():
    t = tracker()
    t.record_sent("n", ROUTE_TYPE, version="v1", nonce="1")
    t.record_request("n", ROUTE_TYPE, response_nonce="1", version_info="v1")
    t.record_sent("n", ROUTE_TYPE, version="v2", nonce="2")

    kind = t.record_request(
        "n", ROUTE_TYPE, response_nonce="2", version_info="v1", error_code=3, error_message="invalid regex"
    )

    assert kind is RequestKind.NACK
    state = t.state("n", ROUTE_TYPE)
    assert state.status is SyncStatus.NACKED
    assert state.acked_version == "v1"
    assert state.last_nack is not None
    assert (state.last_nack.nonce, state.last_nack.version, state.last_nack.code) == ("2", "v2", 3)
    assert state.last_nack.message == "invalid regex"


def test_an_empty_error_detail_is_still_a_nack():
    t = tracker()
    t.record_sent("n", ROUTE_TYPE, version="v1", nonce="1")

    assert t.record_request("n", ROUTE_TYPE, response_nonce="1", version_info="", error_code=0) is RequestKind.NACK
    assert t.status("n", ROUTE_TYPE) is SyncStatus.NACKED


def test_a_new_send_after_a_nack_is_stale_then_synced_and_keeps_the_last_nack():
    t = tracker()
    t.record_sent("n", ROUTE_TYPE, version="v2", nonce="2")
    t.record_request("n", ROUTE_TYPE, response_nonce="2", version_info="", error_code=13, error_message="no")

    t.record_sent("n", ROUTE_TYPE, version="v3", nonce="3")
    assert t.status("n", ROUTE_TYPE) is SyncStatus.STALE
    t.record_request("n", ROUTE_TYPE, response_nonce="3", version_info="v3")

    state = t.state("n", ROUTE_TYPE)
    assert state.status is SyncStatus.SYNCED
    assert state.acked_version == "v3"
    assert isinstance(state.last_nack, Nack) and state.last_nack.version == "v2"


def test_snapshot_lists_rows_sorted_and_forget_drops_a_node():
    t = tracker()
    t.record_sent("b", CLUSTER_TYPE, version="1", nonce="1")
    t.record_sent("a", LISTENER_TYPE, version="1", nonce="2")
    t.record_sent("a", CLUSTER_TYPE, version="1", nonce="3")

    rows = t.snapshot()

    assert [(r.node_id, r.type_url) for r in rows] == [("a", CLUSTER_TYPE), ("a", LISTENER_TYPE), ("b", CLUSTER_TYPE)]
    assert t.node_ids() == ["a", "b"]
    t.forget("a")
    assert t.node_ids() == ["b"]
    assert t.status("a", CLUSTER_TYPE) is SyncStatus.NOT_SENT
