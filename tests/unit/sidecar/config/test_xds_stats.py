"""The xDS families of SidecarStats: connected, rejected by type, config from disk."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.stats import SidecarStats


def test_xds_metrics() -> None:
    stats = SidecarStats(agent="researcher", version="v1", team="research")

    def value(name: str, **labels: str) -> float | None:
        return stats.registry.get_sample_value(name, labels)

    # Exposed from the start, so dashboards and alerts see zeros rather than gaps.
    assert value("agentmesh_xds_connected") == 0
    assert value("agentmesh_xds_config_from_disk") == 0
    assert all(value("agentmesh_xds_rejected_total", type=t) == 0 for t in ("lds", "rds", "cds", "eds"))

    stats.set_xds_connected(True)
    stats.set_xds_config_from_disk(True)
    stats.xds_rejected("rds")
    stats.xds_rejected("rds")
    stats.xds_rejected("made-up")
    assert value("agentmesh_xds_connected") == 1
    assert value("agentmesh_xds_config_from_disk") == 1
    assert value("agentmesh_xds_rejected_total", type="rds") == 2
    assert value("agentmesh_xds_rejected_total", type="other") == 1
    stats.set_xds_connected(False)
    assert value("agentmesh_xds_connected") == 0

    body, _ = stats.exposition("")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert families["agentmesh_xds_connected"] == "gauge"
    assert families["agentmesh_xds_rejected"] == "counter"
    assert families["agentmesh_xds_config_from_disk"] == "gauge"
