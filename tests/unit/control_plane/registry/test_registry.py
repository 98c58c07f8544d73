from __future__ import annotations

import asyncio

import pytest

from control_plane.registry import (
    AgentInstance,
    ChangeKind,
    Registry,
    RegistryChange,
    RegistryError,
    UnknownInstanceError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def registry(ttl: float = 30.0) -> tuple[Registry, FakeClock, list[RegistryChange]]:
    clock = FakeClock()
    reg = Registry(ttl=ttl, clock=clock)
    changes: list[RegistryChange] = []
    reg.subscribe(changes.append)
    return reg, clock, changes


def populate(reg: Registry) -> None:
    reg.register(agent="researcher", version="v1", team="search", address="10.0.0.1:15006", services=["demo.Research"])
    reg.register(agent="researcher", version="v1", team="search", address="10.0.0.2:15006", services=["demo.Research"])
    reg.register(agent="researcher", version="v2", team="search", address="10.0.0.3:15006", services=["demo.Research"])
    reg.register(
        agent="writer", version="v1", team="content", address="10.0.0.4:15006", services=["demo.Write", "demo.Research"]
    )


def test_register_and_query():
    reg, _, _ = registry()
    populate(reg)

    assert reg.agents() == ["researcher", "writer"]
    assert reg.versions("researcher") == ["v1", "v2"]
    assert [i.address for i in reg.instances("researcher", "v1")] == ["10.0.0.1:15006", "10.0.0.2:15006"]
    assert len(reg.instances("researcher")) == 3
    assert len(reg.instances()) == 4
    assert [i.agent for i in reg.implementations("demo.Research")] == ["researcher"] * 3 + ["writer"]
    assert [i.agent for i in reg.implementations("demo.Write")] == ["writer"]
    assert reg.implementations("demo.Nothing") == []
    assert reg.services() == ["demo.Research", "demo.Write"]


def test_an_instance_carries_its_registration():
    reg, clock, _ = registry()
    clock.now = 5.0

    instance = reg.register(
        agent="planner",
        version="1.2.0",
        team="core",
        address="[::1]:15006",
        services=["demo.Plan", "demo.Plan"],
        manifest=b"\x0a\x07planner",
        healthy=False,
        instance_id="planner-0",
    )

    assert isinstance(instance, AgentInstance)
    assert reg.get("planner-0") == instance
    assert (instance.host, instance.port) == ("::1", 15006)
    assert instance.services == ("demo.Plan",)
    assert instance.manifest == b"\x0a\x07planner"
    assert (instance.healthy, instance.last_heartbeat, instance.registered_at) == (False, 5.0, 5.0)
    assert "manifest" not in repr(instance)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("agent", "", "agent"),
        ("agent", "has space", "agent"),
        ("agent", "-leading", "agent"),
        ("version", "v1/2", "version"),
        ("address", "nohost", "host:port"),
        ("address", "host:0", "port must be"),
        ("address", "host:http", "host:port"),
        ("address", "::1:80", "brackets"),
        ("address", "[::1:80", "host:port|IPv6"),
        ("services", ["not a service"], "service"),
    ],
)
def test_malformed_registrations_are_refused(field: str, value: object, message: str):
    reg, _, changes = registry()
    fields: dict[str, object] = {"agent": "a", "version": "v1", "address": "127.0.0.1:1", "services": []}
    fields[field] = value

    with pytest.raises(RegistryError, match=message):
        reg.register(**fields)  # type: ignore[arg-type]
    assert reg.instances() == []
    assert changes == []


def test_heartbeats_notify_only_on_health_changes():
    reg, clock, changes = registry()
    reg.register(agent="a", version="v1", address="127.0.0.1:1")
    assert [c.kind for c in changes] == [ChangeKind.REGISTERED]

    clock.now = 10.0
    same = reg.heartbeat("127.0.0.1:1", True)
    assert same.last_heartbeat == 10.0
    assert len(changes) == 1

    down = reg.heartbeat("127.0.0.1:1", False)
    assert not down.healthy
    assert [c.kind for c in changes] == [ChangeKind.REGISTERED, ChangeKind.UPDATED]
    assert changes[-1].instance == down
    assert changes[-1].revision == reg.revision == 2

    with pytest.raises(UnknownInstanceError):
        reg.heartbeat("nobody", True)


def test_reregistering_unchanged_refreshes_silently_and_changed_notifies():
    reg, clock, changes = registry()
    reg.register(agent="a", version="v1", address="127.0.0.1:1", services=["x.Y"])
    clock.now = 3.0

    again = reg.register(agent="a", version="v1", address="127.0.0.1:1", services=["x.Y"])
    assert (again.last_heartbeat, again.registered_at) == (3.0, 0.0)
    assert len(changes) == 1

    reg.register(agent="a", version="v2", address="127.0.0.1:1", services=["x.Y"])
    assert changes[-1].kind is ChangeKind.UPDATED
    assert reg.versions("a") == ["v2"]


def test_an_address_belongs_to_one_instance():
    reg, _, changes = registry()
    reg.register(agent="a", version="v1", address="127.0.0.1:1", instance_id="old")

    reg.register(agent="b", version="v1", address="127.0.0.1:1", instance_id="new")

    assert [i.instance_id for i in reg.instances()] == ["new"]
    assert [(c.kind, c.instance.instance_id) for c in changes] == [
        (ChangeKind.REGISTERED, "old"),
        (ChangeKind.DEREGISTERED, "old"),
        (ChangeKind.REGISTERED, "new"),
    ]


def test_deregister():
    reg, _, changes = registry()
    populate(reg)

    gone = reg.deregister("10.0.0.4:15006")

    assert gone is not None and gone.agent == "writer"
    assert reg.agents() == ["researcher"]
    assert changes[-1].kind is ChangeKind.DEREGISTERED
    assert reg.deregister("10.0.0.4:15006") is None
    assert changes[-1].kind is ChangeKind.DEREGISTERED and len(changes) == 5


def test_expire_drops_instances_whose_heartbeats_stopped(caplog: pytest.LogCaptureFixture):
    reg, clock, changes = registry(ttl=30)
    reg.register(agent="a", version="v1", address="127.0.0.1:1")
    reg.register(agent="a", version="v1", address="127.0.0.1:2")
    clock.now = 20.0
    reg.heartbeat("127.0.0.1:2", True)

    assert reg.expire(30.0) == []  # exactly the TTL is still alive
    expired = reg.expire(31.0)

    assert [i.address for i in expired] == ["127.0.0.1:1"]
    assert [i.address for i in reg.instances()] == ["127.0.0.1:2"]
    assert changes[-1].kind is ChangeKind.EXPIRED
    assert "expired" in caplog.text
    clock.now = 51.0
    assert [i.address for i in reg.expire()] == ["127.0.0.1:2"]


def test_ttl_must_be_positive():
    with pytest.raises(ValueError, match="ttl"):
        Registry(ttl=0)


def test_unsubscribe_and_failing_listeners(caplog: pytest.LogCaptureFixture):
    reg = Registry(clock=FakeClock())
    seen: list[ChangeKind] = []

    def broken(change: RegistryChange) -> None:
        raise RuntimeError("boom")

    reg.subscribe(broken)
    unsubscribe = reg.subscribe(lambda c: seen.append(c.kind))
    reg.register(agent="a", version="v1", address="127.0.0.1:1")
    unsubscribe()
    unsubscribe()
    reg.deregister("127.0.0.1:1")

    assert seen == [ChangeKind.REGISTERED]
    assert "registry listener failed" in caplog.text


async def test_wait_for_change_returns_the_new_revision():
    reg = Registry(clock=FakeClock())
    since = reg.revision

    waiter = asyncio.create_task(reg.wait_for_change(since))
    await asyncio.sleep(0)
    assert not waiter.done()
    reg.register(agent="a", version="v1", address="127.0.0.1:1")

    assert await asyncio.wait_for(waiter, 5) == since + 1
    assert await reg.wait_for_change(since) == since + 1  # already past: returns at once


async def test_a_cancelled_wait_leaves_no_waiter_behind():
    reg = Registry(clock=FakeClock())
    waiter = asyncio.create_task(reg.wait_for_change(reg.revision))
    await asyncio.sleep(0)

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not reg._waiters
    reg.register(agent="a", version="v1", address="127.0.0.1:1")

    assert reg.revision == 1
