"""The registry's data: one running instance of one agent version, as its sidecar registered it.

An `AgentInstance` is what the translator turns into an endpoint of the
cluster `agent/<name>/<version>` (health from `healthy`) and of every
capability cluster for the services it implements. Names that become parts of
cluster names are validated here, once, at registration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from agentmesh.v1 import manifest_pb2

log = logging.getLogger("agentmesh.control_plane.registry")

_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
_SERVICE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


class RegistryError(ValueError):
    """A registration or query was malformed (bad name, address or service)."""


class UnknownInstanceError(LookupError):
    """No instance is registered under this id (never registered, deregistered or expired)."""


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); raises RegistryError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise RegistryError(f"address {address!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise RegistryError(f"address {address!r} has a malformed IPv6 host")
        host = host[1:-1]
    elif ":" in host:
        raise RegistryError(f"address {address!r}: write IPv6 hosts in brackets, e.g. [::1]:8080")
    port = int(port_text)
    if not 0 < port < 65536:
        raise RegistryError(f"address {address!r}: port must be 1-65535")
    return host, port


def check_name(kind: str, value: str) -> str:
    """Validates an agent name or version (they become parts of cluster names)."""
    if not _NAME.match(value):
        raise RegistryError(
            f"{kind} {value!r} must be 1-64 letters, digits, '.', '_' or '-', starting and ending alphanumeric"
        )
    return value


def check_service(value: str) -> str:
    """Validates a fully qualified gRPC service name such as `agentmesh.examples.Researcher`."""
    if not _SERVICE.match(value):
        raise RegistryError(f"service {value!r} is not a fully qualified protobuf service name")
    return value


@dataclass(frozen=True)
class AgentInstance:
    """One registered instance. Times are in the registry clock's seconds."""

    instance_id: str
    agent: str
    version: str
    team: str
    address: str
    services: tuple[str, ...]
    healthy: bool
    last_heartbeat: float
    registered_at: float
    manifest: bytes | None = field(default=None, repr=False)
    # Locality zone (EDS locality); "" when the instance did not say.
    zone: str = ""
    # host:port of the sidecar's admin endpoint, for Prometheus discovery; "" when unknown.
    admin_address: str = ""
    # The inbound listener accepts mutual TLS; callers use TLS towards the version only when every instance does.
    mtls: bool = False
    # The SPIFFE ID of the sidecar's certificate as the sidecar reported it; "" when it holds none.
    spiffe_id: str = ""

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]

    def decoded_manifest(self) -> manifest_pb2.Manifest | None:
        """The manifest the instance registered with; None when it sent none or an unreadable one."""
        if self.manifest is None:
            return None
        try:
            return manifest_pb2.Manifest.FromString(self.manifest)
        except DecodeError:
            log.warning(
                "unreadable manifest ignored", extra={"instance_id": self.instance_id, "agent_name": self.agent}
            )
            return None

    def implements(self, service: str) -> bool:
        return service in self.services
