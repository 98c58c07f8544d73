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

Workload identity (mutual TLS, docs/identity.md): the sidecar enrolls with
the control plane's CA using a join token it reads from a Secret
(`AGENTMESH_JOIN_TOKEN`, key `token`; not optional, so a pod without its
token waits instead of running in plaintext) and keeps its key and
certificates in a memory-backed `emptyDir`. The volume lives as long as the
pod: a restarted sidecar container renews the identity it holds, a new pod
enrolls with the token again. `identity=False` injects neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from agentmesh import __version__

SidecarMode = Literal["native", "container"]

CONTAINER_NAME = "agentmesh-sidecar"
CONFIG_VOLUME = "agentmesh-config"
TMP_VOLUME = "agentmesh-tmp"
IDENTITY_VOLUME = "agentmesh-identity"
# agent.yaml's identity.dir must name this folder (the image's writable /var/lib/agentmesh).
IDENTITY_DIR = "/var/lib/agentmesh/identity"
# The sidecar reads its join token from this variable when agent.yaml names none (sidecar/identity.py).
JOIN_TOKEN_ENV = "AGENTMESH_JOIN_TOKEN"
JOIN_TOKEN_KEY = "token"
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
    """What to inject: the image, the ConfigMap (default `<workload>-agentmesh`), the mode and the identity.

    With `identity` (the default) the sidecar gets its join token from the
    Secret `join_token_secret` (default `<workload>-agentmesh-join-token`) and
    an identity volume.
    """

    image: str = DEFAULT_IMAGE
    config_map: str | None = None
    mode: SidecarMode = DEFAULT_MODE
    image_pull_policy: str = "IfNotPresent"
    identity: bool = True
    join_token_secret: str | None = None

    def config_map_for(self, workload: str) -> str:
        return self.config_map or f"{workload}-agentmesh"

    def join_token_secret_for(self, workload: str) -> str:
        return self.join_token_secret or f"{workload}-agentmesh-join-token"


def sidecar_container(options: SidecarOptions, *, join_token_secret: str | None = None) -> dict[str, Any]:
    """The sidecar container spec; with `join_token_secret`, its join token and identity folder too."""
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
    if join_token_secret is not None:
        container["env"].append(
            {
                "name": JOIN_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": join_token_secret, "key": JOIN_TOKEN_KEY}},
            }
        )
        container["volumeMounts"].append({"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR})
    return container


def sidecar_volumes(config_map: str, *, identity: bool = True) -> list[dict[str, Any]]:
    """The ConfigMap with agent.yaml and the contract, a small scratch folder and the identity folder.

    The identity folder is memory-backed, so the private key is not written to the node's disk.
    """
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if identity:
        volumes.append({"name": IDENTITY_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    return volumes


def sidecar_annotations() -> dict[str, str]:
    """Pod annotations: injected (and by which version), and where Prometheus scrapes the sidecar."""
    return {INJECT_ANNOTATION: "enabled", VERSION_ANNOTATION: __version__, **SCRAPE_ANNOTATIONS}
