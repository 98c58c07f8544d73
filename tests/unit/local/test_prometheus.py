"""The Prometheus config `agentmesh up` generates: the repository's, with only local addresses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agentmesh.local import prometheus

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = yaml.safe_load((ROOT / "collectors" / "prometheus" / "prometheus.yml").read_text())


def jobs(config: dict) -> dict[str, dict]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_addresses_point_at_the_embedded_control_plane() -> None:
    config = prometheus.local_config("127.0.0.1:28080")
    local = jobs(config)
    assert local["agentmesh-sidecars"]["http_sd_configs"][0]["url"] == "http://127.0.0.1:28080/sd/prometheus"
    assert local["agentmesh-control-plane"]["static_configs"] == [{"targets": ["127.0.0.1:28080"]}]


def test_everything_but_addresses_is_the_repositorys() -> None:
    config = prometheus.local_config("127.0.0.1:28080")
    template = jobs(TEMPLATE)
    local = jobs(config)
    assert config["global"] == TEMPLATE["global"]
    sidecars, original = local["agentmesh-sidecars"], template["agentmesh-sidecars"]
    assert sidecars["relabel_configs"] == original["relabel_configs"]
    assert sidecars["honor_labels"] is original["honor_labels"] is True
    assert sidecars["http_sd_configs"][0]["refresh_interval"] == original["http_sd_configs"][0]["refresh_interval"]
    # Rules by absolute path, every one of them.
    assert config["rule_files"] == [str(ROOT / "collectors" / "prometheus" / p) for p in TEMPLATE["rule_files"]]
    # Nothing local answers for Alertmanager or the collector.
    assert "alerting" not in config
    assert set(local) == {"agentmesh-sidecars", "agentmesh-control-plane"}


def test_command_line_keeps_storage_local_and_exemplars(tmp_path: Path) -> None:
    argv = prometheus.argv(
        "/usr/bin/prometheus", config=tmp_path / "p.yml", storage=tmp_path / "data", listen="127.0.0.1:9999"
    )
    assert argv == [
        "/usr/bin/prometheus",
        f"--config.file={tmp_path / 'p.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        "--web.listen-address=127.0.0.1:9999",
        "--enable-feature=exemplar-storage",
    ]


def test_absent_binary_is_none(tmp_path: Path) -> None:
    assert prometheus.find_prometheus(path=str(tmp_path)) is None
    fake = tmp_path / "prometheus"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert prometheus.find_prometheus(path=str(tmp_path)) == str(fake)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_generated_config(tmp_path: Path) -> None:
    path = prometheus.write_config(tmp_path / "prometheus.yml", "127.0.0.1:28080")
    checked = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
