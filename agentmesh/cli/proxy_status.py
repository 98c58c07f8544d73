"""`agentmesh proxy-status`: which xDS version every connected proxy ACKed or NACKed, like `istioctl proxy-status`."""

from __future__ import annotations

import click

from agentmesh.cli._client import AdminClient, connection_options
from agentmesh.cli._output import emit, message_data, note, output_option, table
from agentmesh.v1 import control_pb2

# Columns in the order istioctl shows them.
TYPES = ("lds", "rds", "cds", "eds")


def _cell(sync: control_pb2.ProxySync, type_label: str) -> str:
    for resource in sync.resources:
        if resource.type == type_label:
            return resource.status.replace("_", " ")
    return "NOT SENT"


def _nacks(proxies: list[control_pb2.ProxySync]) -> list[str]:
    return [
        f"  {sync.node_id} {resource.type.upper()} rejected version {resource.sent_version or '?'}: {resource.error}"
        for sync in proxies
        for resource in sync.resources
        if resource.status == "NACKED"
    ]


def _human(response: control_pb2.ProxyStatusResponse) -> str:
    proxies = list(response.proxies)
    rows = [(sync.node_id, sync.cluster, *(_cell(sync, t) for t in TYPES)) for sync in proxies]
    lines = [table(("node", "cluster", *TYPES), rows), "", f"control plane snapshot: {response.snapshot_version}"]
    nacks = _nacks(proxies)
    if nacks:
        lines += ["NACKs (the proxy keeps its previous config):", *nacks]
    return "\n".join(lines)


@click.command("proxy-status")
@output_option
@connection_options
def proxy_status(output: str) -> None:
    """Show the xDS sync state of every connected proxy.

    One row per sidecar, Envoy or proxyless gRPC client connected over ADS;
    per resource type (LDS listeners, RDS routes, CDS clusters, EDS
    endpoints):

    \b
      SYNCED    the proxy ACKed the last version sent
      STALE     a version was sent and not answered yet
      NACKED    the proxy rejected the last version (error below the table)
      NOT SENT  nothing of this type was sent to it

    \b
    Examples:
      agentmesh proxy-status
      agentmesh proxy-status -o json

    Exit codes: 0 shown (whatever the states), 1 refused, 3 control plane
    unreachable.
    """
    with AdminClient.from_context() as client:
        response = client.call("ProxyStatus", control_pb2.ProxyStatusRequest())
    if output == "table" and not response.proxies:
        note(f"No proxies connected (control plane snapshot: {response.snapshot_version or 'none'}).")
        return
    emit(output, message_data(response), lambda: _human(response))
