from __future__ import annotations

from pathlib import Path

from control_plane.registry import Registry
from control_plane.registry.journal import RegistryJournal


def test_instances_survive_a_restart_and_still_expire(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    now = [100.0]
    registry = Registry(ttl=10, clock=lambda: now[0])
    journal = RegistryJournal(db)
    registry.subscribe(lambda _change: journal.save(registry.instances()))
    registry.register(
        agent="researcher",
        version="v1",
        address="127.0.0.1:15206",
        services=["research.v1.Researcher"],
        manifest=b"manifest",
        admin_address="127.0.0.1:15200",
    )
    registry.register(agent="researcher", version="v2", address="127.0.0.1:15216", healthy=False)
    registry.deregister("127.0.0.1:15216")
    journal.close()

    restarted = Registry(ttl=10, clock=lambda: now[0])
    assert RegistryJournal(db).restore(restarted) == 1
    (instance,) = restarted.instances()
    assert (
        instance.agent,
        instance.version,
        instance.address,
        instance.services,
        instance.manifest,
        instance.admin_address,
    ) == ("researcher", "v1", "127.0.0.1:15206", ("research.v1.Researcher",), b"manifest", "127.0.0.1:15200")
    # Restored instances must re-register within the TTL, like any silent instance.
    now[0] += 11
    assert [i.address for i in restarted.expire()] == ["127.0.0.1:15206"]
