"""What the benchmark asks of the processes it starts: agent.yaml, AccessPolicies, identities (nothing is started)."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.topology import BENCH_TEAM, CLIENT_AGENT, allow_bench_calls, bench_identity, sidecar_config
from sidecar.config.bootstrap import Bootstrap
from tests.integration.mesh import SidecarPorts


def config(tmp_path: Path, identity_dir: Path | None = None) -> Path:
    ports = SidecarPorts()
    upstream, control_plane = "127.0.0.1:1", "127.0.0.1:2"
    return sidecar_config(
        tmp_path, "echo-mtls", upstream=upstream, ports=ports, control_plane=control_plane, identity_dir=identity_dir
    )


def test_an_identity_folder_makes_a_strict_mtls_sidecar(tmp_path: Path):
    loaded = Bootstrap.load(config(tmp_path, identity_dir=tmp_path / "echo-mtls.identity"))

    assert loaded.identity.mode == "strict" and loaded.identity.dir == tmp_path / "echo-mtls.identity"
    assert loaded.identity.join_token is None, "the token travels in the environment, never in agent.yaml"
    assert loaded.agent.team == BENCH_TEAM and loaded.control_plane is not None


def test_without_an_identity_folder_the_sidecar_has_no_identity_section(tmp_path: Path):
    assert "identity" not in yaml.safe_load(config(tmp_path).read_text())


def test_access_policy_allows_anyone_unless_callers_are_named():
    anyone = allow_bench_calls("echo")["spec"]["rules"][0]
    named = allow_bench_calls("echo-mtls", callers=(CLIENT_AGENT,))["spec"]["rules"][0]

    assert anyone["from"] == {"agents": ["*"]}
    assert named["from"] == {"agents": [CLIENT_AGENT]}
    assert named["to"] == anyone["to"] == {"methods": ["bench.v1.Echo/Echo", "bench.v1.Echo/Ticks"]}


def test_the_client_expects_the_sidecar_by_its_dns_name():
    identity = bench_identity("echo-mtls")

    assert identity.uri == "spiffe://agentmesh.local/team/bench/agent/echo-mtls"
    assert identity.dns_name == "echo-mtls.bench.agentmesh.local"
