"""agent.yaml's `control_plane.ca_file` and `server_name`: TLS to the control plane's secure port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agentmesh.config import ConfigError
from agentmesh.identity.control_plane_tls import ControlPlaneTarget
from control_plane.identity.ca import CertificateAuthority
from sidecar.config.bootstrap import Bootstrap
from sidecar.identity import open_identity_source, plan_identity

PROTO = 'syntax = "proto3";\npackage t.v1;\nmessage M {}\nservice S { rpc Do(M) returns (M); }\n'


def _write(tmp_path: Path, link: dict[str, Any]) -> Path:
    (tmp_path / "t.proto").write_text(PROTO)
    config = {
        "agent": {"name": "researcher", "team": "research"},
        "upstream": {"url": "http://127.0.0.1:8201"},
        "contract": {"protos": ["t.proto"]},
        "control_plane": link,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "pki" / "ca.pem"
    path.parent.mkdir()
    path.write_bytes(CertificateAuthority.in_memory(trust_domain="example.org").trust_bundle_pem)
    return path


def test_without_ca_file_the_link_is_plaintext(tmp_path: Path) -> None:
    link = Bootstrap.load(_write(tmp_path, {"address": "127.0.0.1:15010"})).control_plane
    assert link is not None and link.ca_file is None
    assert link.target() == ControlPlaneTarget("127.0.0.1:15010")


def test_ca_file_is_relative_to_agent_yaml_and_names_the_server(tmp_path: Path, bundle: Path) -> None:
    link = Bootstrap.load(_write(tmp_path, {"address": "127.0.0.1:15012", "ca_file": "pki/ca.pem"})).control_plane
    assert link is not None and link.ca_file == bundle
    target = link.target()
    assert target.tls is not None and target.tls.server_name == "control-plane.example.org"
    assert target.tls.ca_file == bundle


def test_server_name_override(tmp_path: Path, bundle: Path) -> None:
    path = _write(tmp_path, {"address": "10.0.0.7:15012", "ca_file": str(bundle), "server_name": "10.0.0.7"})
    link = Bootstrap.load(path).control_plane
    assert link is not None
    tls = link.target().tls
    assert tls is not None and tls.server_name == "10.0.0.7"


def test_the_rotator_dials_with_the_links_tls(tmp_path: Path, bundle: Path) -> None:
    bootstrap = Bootstrap.load(_write(tmp_path, {"address": "127.0.0.1:15012", "ca_file": str(bundle)}))
    plan = plan_identity(bootstrap, environ={"AGENTMESH_JOIN_TOKEN": "amjt.x.y"}, persisted=lambda _: False)
    rotator = open_identity_source(plan, bootstrap, registry=CollectorRegistry())
    assert "TLS, server name control-plane.example.org" in repr(rotator)


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ({"ca_file": "missing.pem"}, "control_plane.ca_file: not found:"),
        ({"ca_file": "agent.yaml"}, "no PEM certificate in it"),
        ({"server_name": "cp.example.org"}, "server_name needs ca_file"),
        ({"ca_file": "pki/ca.pem", "server_name": "not a name"}, "is neither an IP address nor a DNS name"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, bundle: Path, link: dict[str, str], message: str) -> None:
    path = _write(tmp_path, {"address": "127.0.0.1:15012", **link})
    with pytest.raises(ConfigError) as error:
        Bootstrap.load(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("control_plane:"))
    assert str(error.value).startswith(f"{path}:")
    assert message in str(error.value)
    assert all(issue.line is not None and issue.line >= line for issue in error.value.issues)
