"""How certificates reach the two consumers that are not our sidecars: the names both ends must agree on.

- **Envoy** fetches its certificate over SDS (`envoy.service.secret.v3`) from
  `agentmesh identity-agent` (agentmesh/identity/sds.py), through a static
  cluster of its bootstrap named SDS_CLUSTER: secret IDENTITY_SECRET holds the
  key and chain, secret ROOT_SECRET the trust bundle (Istio's names).
- **Proxyless gRPC clients** read the same files the identity agent writes,
  through the `file_watcher` certificate provider of their xDS bootstrap
  (gRFC A29), under the instance name CERTIFICATE_PROVIDER_INSTANCE.

The control plane's translation (control_plane/translate/tls.py) refers to
these names in the clusters it serves, so they live here, in a module with no
grpc import, and the bootstrap builders below use the same constants.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

# Envoy bootstrap: the static cluster that reaches the identity agent's SDS server.
SDS_CLUSTER = "sds-grpc"
# SDS secret names: the workload's key and certificate chain, and the roots to verify peers with.
IDENTITY_SECRET = "default"
ROOT_SECRET = "ROOTCA"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# gRPC xDS bootstrap: the certificate provider instance clusters name (identity and roots alike).
CERTIFICATE_PROVIDER_INSTANCE = "default"
FILE_WATCHER_PLUGIN = "file_watcher"
DEFAULT_REFRESH_INTERVAL = 10.0
UNIX_PREFIX = "unix:"


class ListenAddressError(ValueError):
    """An SDS address that is neither `unix:<path>` nor a loopback `host:port`."""


def check_sds_address(address: str) -> str:
    """`unix:/path` or a loopback `host:port`; raises ListenAddressError saying why not.

    SDS hands out the private key to whoever connects, so it never listens
    beyond this machine: a unix socket (readable by its owner only) or loopback.
    """
    if address.startswith(UNIX_PREFIX):
        if not address[len(UNIX_PREFIX) :]:
            raise ListenAddressError(f"SDS address {address!r}: the unix socket path is empty")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ListenAddressError(f"SDS address {address!r}: expected unix:<path> or <loopback ip>:<port>")
    host = host.removeprefix("[").removesuffix("]")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ListenAddressError(
                f"SDS address {address!r}: SDS serves the private key, so it listens only on a unix socket "
                "or a loopback address (127.0.0.1, [::1])"
            )
    return address


def envoy_sds_cluster(address: str) -> dict[str, Any]:
    """The static Envoy cluster SDS_CLUSTER (bootstrap JSON) reaching an identity agent's `--sds-listen` address."""
    check_sds_address(address)
    if address.startswith(UNIX_PREFIX):
        endpoint_address: dict[str, Any] = {"pipe": {"path": address[len(UNIX_PREFIX) :]}}
    else:
        host, _, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        host = "127.0.0.1" if host == "localhost" else host
        endpoint_address = {"socket_address": {"address": host, "port_value": int(port)}}
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": endpoint_address}}]}],
        },
    }


def file_watcher_provider(
    *,
    certificate_file: Path,
    private_key_file: Path,
    ca_certificate_file: Path,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
) -> dict[str, Any]:
    """A gRPC `certificate_providers` entry: the `file_watcher` plugin over the identity agent's files."""
    return {
        "plugin_name": FILE_WATCHER_PLUGIN,
        "config": {
            "certificate_file": str(certificate_file),
            "private_key_file": str(private_key_file),
            "ca_certificate_file": str(ca_certificate_file),
            "refresh_interval": f"{refresh_interval:g}s",
        },
    }


def grpc_xds_bootstrap(
    *,
    control_plane: str,
    node_id: str,
    certificate_file: Path,
    private_key_file: Path,
    ca_certificate_file: Path,
    cluster: str = "proxyless",
    zone: str = "",
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    control_plane_ca_file: Path | None = None,
) -> dict[str, Any]:
    """The xDS bootstrap (GRPC_XDS_BOOTSTRAP) of a proxyless gRPC client that does mTLS with mesh certificates.

    With `control_plane_ca_file` (the trust bundle) the client reaches the control plane's secure port over
    TLS (gRFC A65 `tls` channel credentials); gRPC checks the certificate against the host of `control_plane`,
    which must be among the control plane's `--secure-san` names.

    The client dials `xds:///<agent>` with `grpc.xds_channel_credentials(...)`;
    clusters whose instances all accept mTLS name CERTIFICATE_PROVIDER_INSTANCE,
    which reads the key, chain and roots from the files (re-read every
    `refresh_interval` seconds, so rotations are picked up).
    """
    if node_id.startswith("gateway~"):
        raise ValueError(f"node id {node_id!r}: ids starting with 'gateway~' get the Envoy gateway's snapshot")
    node: dict[str, Any] = {"id": node_id, "cluster": cluster}
    if zone:
        node["locality"] = {"zone": zone}
    channel_creds: dict[str, Any] = {"type": "insecure"}
    if control_plane_ca_file is not None:
        channel_creds = {"type": "tls", "config": {"ca_certificate_file": str(control_plane_ca_file)}}
    return {
        "xds_servers": [{"server_uri": control_plane, "channel_creds": [channel_creds], "server_features": ["xds_v3"]}],
        "node": node,
        "certificate_providers": {
            CERTIFICATE_PROVIDER_INSTANCE: file_watcher_provider(
                certificate_file=certificate_file,
                private_key_file=private_key_file,
                ca_certificate_file=ca_certificate_file,
                refresh_interval=refresh_interval,
            )
        },
    }
