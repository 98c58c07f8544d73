"""Translation of one policy version plus the registry into xDS v3 resources (pure).

`translate(policies, mesh) -> Resources` is the whole surface: the xDS server
(control_plane.xds) serves what it returns. Modules follow the xDS types:
listeners.py (proxyless and inbound), routes.py, clusters.py, endpoints.py,
rbac.py (access), tls.py (mTLS on clusters and the gateway listener),
snapshot.py (the assembly). `translate_gateway` (gateway.py)
builds what an Envoy gateway at the mesh edge gets from the same inputs. Nothing here imports grpc or
sqlite; tests drive it with plain data (view.py).
"""

from control_plane.translate._xds import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    agent_cluster_name,
    agent_route_name,
    inbound_listener_name,
    service_cluster_name,
    service_route_name,
)
from control_plane.translate.gateway import DEFAULT_GATEWAY_PORT, GATEWAY_NODE_PREFIX, translate_gateway
from control_plane.translate.snapshot import TYPE_ORDER, Resources, translate
from control_plane.translate.view import AgentView, InstanceView, MeshView

__all__ = [
    "CLUSTER_TYPE",
    "DEFAULT_GATEWAY_PORT",
    "ENDPOINT_TYPE",
    "GATEWAY_NODE_PREFIX",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "TYPE_ORDER",
    "AgentView",
    "InstanceView",
    "MeshView",
    "Resources",
    "agent_cluster_name",
    "agent_route_name",
    "inbound_listener_name",
    "service_cluster_name",
    "service_route_name",
    "translate",
    "translate_gateway",
]
