"""Finding pod templates in Kubernetes objects and adding the sidecar to them.

Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers,
Jobs, CronJobs and bare Pods get the sidecar (`sidecar.py`); every other kind
passes through untouched, and `List` objects (`kubectl get -o yaml`) are
walked item by item. Injection is idempotent: a pod template that already has
the sidecar is left as it is. A pod template annotated
`agentmesh.io/inject: disabled` and host-network pods are skipped. A pod that
cannot take the sidecar (one of its ports or volume names is taken) and
malformed objects are refused with the document and field path.

When the input also holds the ConfigMap an injected pod mounts, its
agent.yaml is checked for listeners the kubelet and other pods can reach, an
advertised address other pods can reach, and (with the identity wiring) a
control-plane link to enroll with and `identity.dir` on the identity volume.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from agentmesh.inject.documents import Document
from agentmesh.inject.sidecar import (
    ADMIN_PORT,
    CONTAINER_NAME,
    DEFAULT_CONTAINER_ANNOTATION,
    IDENTITY_DIR,
    INBOUND_PORT,
    INJECT_ANNOTATION,
    JOIN_TOKEN_ENV,
    PORTS,
    SCRAPE_ANNOTATIONS,
    SidecarOptions,
    sidecar_annotations,
    sidecar_container,
    sidecar_volumes,
)

# Where each workload kind keeps its pod template (() : the object is the pod).
POD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


@dataclass(frozen=True)
class Report:
    """What happened to one object: injected, already injected, or skipped and why."""

    kind: str
    name: str
    outcome: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.kind.lower()}/{self.name} {self.outcome}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass
class InjectResult:
    """The documents to print (in input order), a report per object and warnings."""

    bodies: list[Any] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def injected(self) -> int:
        return sum(1 for r in self.reports if r.outcome == "injected")


@dataclass(frozen=True)
class _Injected:
    namespace: str | None
    config_map: str
    identity: bool


def inject(documents: Sequence[Document], options: SidecarOptions) -> InjectResult:
    """Adds the sidecar to every pod template in `documents`; the inputs are not modified.

    Raises InjectError for malformed objects and pods that cannot take the sidecar.
    """
    result = InjectResult()
    injected: list[_Injected] = []
    config_maps: dict[tuple[str | None, str], Any] = {}
    for document in documents:
        body = copy.deepcopy(document.body)
        _visit(document, body, "", options, result, injected, config_maps)
        result.bodies.append(body)
    for target in injected:
        result.warnings += _check_config_map(target, config_maps)
    return result


def _visit(
    doc: Document,
    obj: Any,
    prefix: str,
    options: SidecarOptions,
    result: InjectResult,
    injected: list[_Injected],
    config_maps: dict[tuple[str | None, str], Any],
) -> None:
    if not isinstance(obj, dict):
        raise doc.error(prefix or "(document)", f"expected a Kubernetes object (a mapping), got {_type(obj)}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise doc.error(_join(prefix, "kind"), "missing: a Kubernetes object names its kind")
    metadata = _mapping(doc, obj, "metadata", prefix, required=False)
    name = metadata.get("name") if metadata is not None else None
    namespace = metadata.get("namespace") if metadata is not None else None
    label = name if isinstance(name, str) and name else "(unnamed)"
    if kind.endswith("List") and "items" in obj:
        items = obj["items"]
        if not isinstance(items, list):
            raise doc.error(_join(prefix, "items"), f"expected a list, got {_type(items)}")
        for i, item in enumerate(items):
            _visit(doc, item, _join(prefix, f"items[{i}]"), options, result, injected, config_maps)
        return
    if kind == "ConfigMap" and isinstance(name, str):
        config_maps[(namespace if isinstance(namespace, str) else None, name)] = obj.get("data")
    path = POD_TEMPLATES.get(kind)
    if path is None:
        result.reports.append(Report(kind, label, "skipped", "not a workload"))
        return
    template, template_path = obj, prefix
    for key in path:
        template = _mapping(doc, template, key, template_path, required=True)
        template_path = _join(template_path, key)
    workload_annotations = _annotations(doc, metadata, _join(prefix, "metadata"))
    template_metadata = _mapping(doc, template, "metadata", template_path, required=False)
    annotations = _annotations(doc, template_metadata, _join(template_path, "metadata"))
    if "disabled" in (workload_annotations.get(INJECT_ANNOTATION), annotations.get(INJECT_ANNOTATION)):
        result.reports.append(Report(kind, label, "skipped", f"{INJECT_ANNOTATION}: disabled"))
        return
    spec_path = _join(template_path, "spec")
    spec = _mapping(doc, template, "spec", template_path, required=True)
    containers = _containers(doc, spec, "containers", spec_path, required=True)
    init_containers = _containers(doc, spec, "initContainers", spec_path, required=False)
    if any(c.get("name") == CONTAINER_NAME for c in (*containers, *init_containers)):
        result.reports.append(Report(kind, label, "already injected", "unchanged"))
        return
    if spec.get("hostNetwork") is True:
        result.reports.append(Report(kind, label, "skipped", "hostNetwork pods share the node's ports"))
        return
    if not (isinstance(name, str) and name):
        if options.config_map is None:
            raise doc.error(_join(prefix, "metadata.name"), "missing: name the workload or pass --config-map")
        if options.identity and options.join_token_secret is None:
            raise doc.error(_join(prefix, "metadata.name"), "missing: name the workload or pass --join-token-secret")
    config_map = options.config_map_for(str(name))
    secret = options.join_token_secret_for(str(name)) if options.identity else None
    _check_free(doc, spec, spec_path, containers, init_containers)

    sidecar = sidecar_container(options, join_token_secret=secret)
    if options.mode == "native":
        spec["initContainers"] = [sidecar, *init_containers]
    else:
        spec["containers"] = [*containers, sidecar]
    spec["volumes"] = [*(spec.get("volumes") or []), *sidecar_volumes(config_map, identity=secret is not None)]
    if template_metadata is None:
        template_metadata = template["metadata"] = {}
    merged = template_metadata.get("annotations") or {}
    template_metadata["annotations"] = merged
    notes = []
    for key, value in sidecar_annotations().items():
        if key in SCRAPE_ANNOTATIONS and key in merged and merged[key] != value:
            notes.append(f"kept {key}={merged[key]!r}: the sidecar's metrics are on :{ADMIN_PORT}/metrics")
            continue
        merged[key] = value
    merged.setdefault(DEFAULT_CONTAINER_ANNOTATION, containers[0]["name"])
    injected.append(_Injected(namespace if isinstance(namespace, str) else None, config_map, identity=options.identity))
    result.reports.append(Report(kind, label, "injected", "; ".join(notes)))


def _check_free(
    doc: Document, spec: dict[str, Any], spec_path: str, containers: list[Any], init_containers: list[Any]
) -> None:
    """Refuses a pod whose containers already use the sidecar's ports or volume names."""
    taken = {port: name for name, port in PORTS.items()}
    for field_name, group in (("containers", containers), ("initContainers", init_containers)):
        for i, container in enumerate(group):
            ports = container.get("ports") or []
            if not isinstance(ports, list):
                raise doc.error(f"{spec_path}.{field_name}[{i}].ports", f"expected a list, got {_type(ports)}")
            for j, port in enumerate(ports):
                number = port.get("containerPort") if isinstance(port, dict) else None
                if number in taken:
                    raise doc.error(
                        f"{spec_path}.{field_name}[{i}].ports[{j}].containerPort",
                        f"{number} is the sidecar's {taken[number]} port; the sidecar needs "
                        f"{', '.join(str(p) for p in PORTS.values())} free",
                    )
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list):
        raise doc.error(f"{spec_path}.volumes", f"expected a list, got {_type(volumes)}")
    reserved = {v["name"] for v in sidecar_volumes("-")}
    for i, volume in enumerate(volumes):
        if isinstance(volume, dict) and volume.get("name") in reserved:
            raise doc.error(f"{spec_path}.volumes[{i}].name", f"{volume['name']!r} is reserved for the sidecar")


def _check_config_map(target: _Injected, config_maps: dict[tuple[str | None, str], Any]) -> list[str]:
    """Warnings about an injected pod's ConfigMap, when the input holds it."""
    key = (target.namespace, target.config_map)
    if key not in config_maps:
        return []
    where = f"configmap/{target.config_map}"
    data = config_maps[key]
    text = data.get("agent.yaml") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return [f"{where}: has no agent.yaml key; the sidecar reads /etc/agentmesh/agent.yaml"]
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"{where}: agent.yaml is not valid YAML: {exc}"]
    config = config if isinstance(config, dict) else {}
    listen = _section(config, "listen")
    warnings = []
    for key_name, port, who in (("inbound", INBOUND_PORT, "other pods"), ("admin", ADMIN_PORT, "the kubelet")):
        default = f"127.0.0.1:{port}"
        address = str(listen.get(key_name, default))
        host, _, number = address.rpartition(":")
        if number != str(port) or host.startswith(_LOOPBACK):
            warnings.append(
                f"{where}: agent.yaml listen.{key_name} is {address}: {who} reach the sidecar on the pod IP "
                f"at port {port}; listen on 0.0.0.0:{port}"
            )
    return warnings + _check_identity(where, config, identity=target.identity)


def _check_identity(where: str, config: dict[str, Any], *, identity: bool) -> list[str]:
    """Warnings about the control-plane link and identity section of an injected pod's agent.yaml."""
    link = config.get("control_plane")
    section = _section(config, "identity")
    warnings = []
    if isinstance(link, dict):
        advertised = str(link.get("advertise_address") or "")
        if not advertised or advertised.startswith(_LOOPBACK):
            warnings.append(
                f"{where}: agent.yaml control_plane.advertise_address is {advertised or 'not set'}: the sidecar "
                f"registers an address other pods cannot reach; set it to ${{POD_IP}}:{INBOUND_PORT}"
            )
    elif identity:
        warnings.append(
            f"{where}: agent.yaml has no control_plane: the sidecar cannot enroll and runs in plaintext; "
            f"link the control plane (e.g. address: agentmesh-control-plane.agentmesh.svc:15010)"
        )
    if section.get("join_token") is not None:
        warnings.append(
            f"{where}: agent.yaml identity.join_token puts a secret in a ConfigMap; remove it: the sidecar reads "
            f"{JOIN_TOKEN_ENV} from the join-token Secret"
        )
    if identity and section.get("dir") != IDENTITY_DIR:
        found = section.get("dir") or "not set (a folder in /tmp)"
        warnings.append(
            f"{where}: agent.yaml identity.dir is {found}: the sidecar's identity volume is mounted at "
            f"{IDENTITY_DIR}; set identity.dir to it"
        )
    return warnings


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _mapping(doc: Document, obj: dict[str, Any], key: str, prefix: str, *, required: bool) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise doc.error(_join(prefix, key), "missing")
        return None
    if not isinstance(value, dict):
        raise doc.error(_join(prefix, key), f"expected a mapping, got {_type(value)}")
    return value


def _annotations(doc: Document, metadata: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    if metadata is None:
        return {}
    annotations = _mapping(doc, metadata, "annotations", prefix, required=False) or {}
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise doc.error(f"{prefix}.annotations.{key}", f"expected a string, got {_type(value)}")
    return dict(annotations)


def _containers(doc: Document, spec: dict[str, Any], key: str, prefix: str, *, required: bool) -> list[Any]:
    path = _join(prefix, key)
    value = spec.get(key)
    if value is None:
        if required:
            raise doc.error(path, "missing")
        return []
    if not isinstance(value, list) or (required and not value):
        raise doc.error(path, f"expected a non-empty list of containers, got {_type(value)}")
    for i, container in enumerate(value):
        if not isinstance(container, dict):
            raise doc.error(f"{path}[{i}]", f"expected a container (a mapping), got {_type(container)}")
        if not isinstance(container.get("name"), str) or not container["name"]:
            raise doc.error(f"{path}[{i}].name", "missing")
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"
