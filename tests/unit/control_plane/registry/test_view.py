from __future__ import annotations

import pytest

from agentmesh.v1 import manifest_pb2
from control_plane.registry import Registry
from control_plane.registry.view import mesh_view
from control_plane.translate.view import InstanceView


def manifest(*skills: tuple[str, bool]) -> bytes:
    message = manifest_pb2.Manifest(name="researcher")
    for method, idempotent in skills:
        message.skills.add(method=method, idempotent=idempotent)
    return message.SerializeToString()


def test_instances_become_agents_with_versions_services_and_methods():
    registry = Registry(clock=lambda: 0.0)
    v1 = manifest(("/demo.Research/Search", True), ("/demo.Research/Summarize", True))
    v2 = manifest(("/demo.Research/Search", True), ("/demo.Research/Summarize", False), ("/demo.Research/Cite", True))
    registry.register(
        agent="researcher", version="v1", team="search", address="10.0.0.1:1", services=["demo.Research"], manifest=v1
    )
    registry.register(
        agent="researcher", version="v1", address="10.0.0.2:1", healthy=False, zone="eu-1", manifest=b"\xff"
    )
    registry.register(agent="researcher", version="v2", address="10.0.0.3:1", services=["demo.Research"], manifest=v2)
    registry.register(agent="writer", version="v1", address="10.0.0.4:1", services=["demo.Write"])

    view = mesh_view(registry)

    assert list(view.agents) == ["researcher", "writer"]
    researcher = view.agents["researcher"]
    assert researcher.team == "search"
    assert researcher.versions["v1"] == (
        InstanceView(address="10.0.0.1:1", healthy=True, zone=""),
        InstanceView(address="10.0.0.2:1", healthy=False, zone="eu-1"),
    )
    assert researcher.live_versions == ("v1", "v2")
    assert researcher.services == ("demo.Research",)
    assert researcher.methods == ("demo.Research/Cite", "demo.Research/Search", "demo.Research/Summarize")
    # Summarize is not idempotent in v2, so it is not idempotent for the agent.
    assert researcher.idempotent_methods == frozenset({"demo.Research/Cite", "demo.Research/Search"})
    writer = view.agents["writer"]
    assert (writer.team, writer.methods, writer.idempotent_methods) == ("default", (), frozenset())
    assert view.implementers("demo.Research") == (researcher,)


def test_an_unreadable_manifest_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture):
    registry = Registry(clock=lambda: 0.0)
    registry.register(agent="a", version="v1", address="10.0.0.1:1", manifest=b"\xff\xff")

    view = mesh_view(registry)

    assert view.agents["a"].methods == ()
    assert "unreadable manifest" in caplog.text


def test_an_empty_registry_is_an_empty_view():
    assert dict(mesh_view(Registry()).agents) == {}


def test_mtls_and_the_reported_spiffe_id_reach_the_view_and_survive_the_journal(tmp_path):
    from control_plane.registry.journal import RegistryJournal

    uri = "spiffe://agentmesh.local/team/search/agent/researcher"
    registry = Registry(clock=lambda: 0.0)
    registry.register(agent="researcher", version="v1", address="10.0.0.1:1", mtls=True, spiffe_id=uri)
    registry.register(agent="researcher", version="v1", address="10.0.0.2:1")
    journal = RegistryJournal(tmp_path / "cp.db")
    journal.save(registry.instances())
    restored = Registry(clock=lambda: 0.0)
    journal.restore(restored)
    journal.close()

    for view in (mesh_view(registry), mesh_view(restored)):
        assert view.agents["researcher"].versions["v1"] == (
            InstanceView(address="10.0.0.1:1", mtls=True, spiffe_id=uri),
            InstanceView(address="10.0.0.2:1"),
        )
