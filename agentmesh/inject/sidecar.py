"""What `agentmesh inject` adds to a pod: the sidecar container, its volumes and annotations.

The sidecar runs `agentmesh sidecar -c /etc/agentmesh/agent.yaml` from a
ConfigMap that holds the agent's agent.yaml and contract files. It declares
the sidecar's four listeners as named ports, probes the admin endpoint
(/healthz for liveness and start-up, /readyz, which follows the agent's
health, for readiness) and runs as the image's non-root user with a
read-only root filesystem.

By default it is a native sidecar (an init container with
`restartPolicy: Always`, Kubernetes 1.29+): it starts, and passes its
start-up probe, before the agent, so the agent's first egress call finds it,
and it does not keep a Job from completing. `mode="container"` appends it to
the pod's containers instead, for older clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agentmesh import __version__

SidecarMode = Literal["native", "container"]

CONTAINER_NAME = "agentmesh-sidecar"
CONFIG_VOLUME = "agentmesh-config"
TMP_VOLUME = "agentmesh-tmp"
CONFIG_DIR = "/etc/agentmesh"
CONFIG_PATH = f"{CONFIG_DIR}/agent.yaml"
DEFAULT_IMAGE = f"agentmesh/agentmesh:{__version__}"
DEFAULT_MODE: SidecarMode = "native"
# The image's user (deploy/Dockerfile).
RUN_AS = 10001

INBOUND_PORT = 15006
EGRESS_GRPC_PORT = 15001
EGRESS_HTTP_PORT = 15080
ADMIN_PORT = 15000
# name -> port; names are IANA service names (at most 15 characters).
PORTS: dict[str, int] = {
    "grpc-inbound": INBOUND_PORT,
    "grpc-egress": EGRESS_GRPC_PORT,
    "http-egress": EGRESS_HTTP_PORT,
    "http-admin": ADMIN_PORT,
}

INJECT_ANNOTATION = "agentmesh.io/inject"
VERSION_ANNOTATION = "agentmesh.io/sidecar-version"
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(ADMIN_PORT),
    "prometheus.io/path": "/metrics",
}


@dataclass(frozen=True, kw_only=True)
class SidecarOptions:
    """What to inject: the image, the ConfigMap (default `<workload>-agentmesh`) and the mode."""

    image: str = DEFAULT_IMAGE
    config_map: str | None = None
    mode: SidecarMode = DEFAULT_MODE
    image_pull_policy: str = "IfNotPresent"

    def config_map_for(self, workload: str) -> str:
        return self.config_map or f"{workload}-agentmesh"


def sidecar_container(options: SidecarOptions) -> dict[str, Any]:
    """The sidecar container spec."""
    admin = {"port": "http-admin"}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "args": ["sidecar", "-c", CONFIG_PATH],
    }
    if options.mode == "native":
        container["restartPolicy"] = "Always"
    container |= {
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "OTEL_RESOURCE_ATTRIBUTES",
                "value": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)",
            },
        ],
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS.items()],
        # Up once the admin endpoint answers: the contract compiled, the listeners bound.
        "startupProbe": {"httpGet": {"path": "/healthz", **admin}, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": {"path": "/readyz", **admin}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **admin},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    return container


def sidecar_volumes(config_map: str) -> list[dict[str, Any]]:
    """The ConfigMap with agent.yaml and the contract, and a small scratch folder."""
    return [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]


def sidecar_annotations() -> dict[str, str]:
    """Pod annotations: injected (and by which version), and where Prometheus scrapes the sidecar."""
    return {INJECT_ANNOTATION: "enabled", VERSION_ANNOTATION: __version__, **SCRAPE_ANNOTATIONS}
