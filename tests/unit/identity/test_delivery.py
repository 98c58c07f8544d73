"""The names and bootstrap pieces Envoy, proxyless gRPC and the translation agree on."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.identity.delivery import (
    CERTIFICATE_PROVIDER_INSTANCE,
    ListenAddressError,
    check_sds_address,
    grpc_xds_bootstrap,
)


@pytest.mark.parametrize("address", ["unix:/run/agentmesh/sds.sock", "127.0.0.1:15012", "[::1]:15012", "localhost:1"])
def test_sds_listens_on_a_unix_socket_or_loopback(address: str) -> None:
    assert check_sds_address(address) == address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0:15012", "listens only on a unix socket or a loopback address"),
        ("10.0.0.7:15012", "listens only on a unix socket or a loopback address"),
        ("sds.internal:15012", "listens only on a unix socket or a loopback address"),
        ("unix:", "the unix socket path is empty"),
        ("127.0.0.1", "expected unix:<path> or <loopback ip>:<port>"),
        ("127.0.0.1:0", "expected unix:<path> or <loopback ip>:<port>"),
    ],
)
def test_other_sds_addresses_are_refused_with_the_reason(address: str, reason: str) -> None:
    with pytest.raises(ListenAddressError, match=reason):
        check_sds_address(address)


def test_the_grpc_bootstrap_names_the_files_under_the_translations_instance(tmp_path: Path) -> None:
    bootstrap = grpc_xds_bootstrap(
        control_plane="127.0.0.1:15010",
        node_id="proxyless~planner",
        certificate_file=tmp_path / "cert-chain.pem",
        private_key_file=tmp_path / "key.pem",
        ca_certificate_file=tmp_path / "root-cert.pem",
        zone="eu-1",
        refresh_interval=2.5,
    )
    assert bootstrap["xds_servers"] == [
        {"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}
    ]
    assert bootstrap["node"] == {"id": "proxyless~planner", "cluster": "proxyless", "locality": {"zone": "eu-1"}}
    provider = bootstrap["certificate_providers"][CERTIFICATE_PROVIDER_INSTANCE]
    assert provider["plugin_name"] == "file_watcher"
    assert provider["config"]["refresh_interval"] == "2.5s"
    assert provider["config"]["private_key_file"] == str(tmp_path / "key.pem")


def test_a_gateway_node_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gateway~"):
        grpc_xds_bootstrap(
            control_plane="127.0.0.1:15010",
            node_id="gateway~edge",
            certificate_file=tmp_path / "c",
            private_key_file=tmp_path / "k",
            ca_certificate_file=tmp_path / "r",
        )
