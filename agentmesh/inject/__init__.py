"""`agentmesh inject`: add the AgentMesh sidecar to Kubernetes workloads, like `linkerd inject`.

    kubectl kustomize deploy/kubernetes/examples | agentmesh inject -f - | kubectl apply -f -

Pure data in, data out: `read_documents` parses YAML streams, `inject` adds
the sidecar (`sidecar.py`) to every pod template (`workloads.py`), and
`dump_documents` prints the result. Nothing here talks to a cluster.
"""

from agentmesh.inject.documents import Document, InjectError, OutputFormat, dump_documents, read_documents
from agentmesh.inject.sidecar import CONTAINER_NAME, DEFAULT_IMAGE, SidecarMode, SidecarOptions
from agentmesh.inject.workloads import POD_TEMPLATES, InjectResult, Report, inject

__all__ = [
    "CONTAINER_NAME",
    "DEFAULT_IMAGE",
    "POD_TEMPLATES",
    "Document",
    "InjectError",
    "InjectResult",
    "OutputFormat",
    "Report",
    "SidecarMode",
    "SidecarOptions",
    "dump_documents",
    "inject",
    "read_documents",
]
