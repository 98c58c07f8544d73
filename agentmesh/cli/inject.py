"""`agentmesh inject`: add the sidecar to Kubernetes workloads read from files or stdin."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agentmesh.inject import (
    DEFAULT_IMAGE,
    Document,
    InjectError,
    SidecarOptions,
    dump_documents,
    inject,
    read_documents,
)

EXIT_INPUT = 2


@click.command("inject")
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    help="A YAML or JSON file with Kubernetes objects ('-' for stdin); repeatable.",
)
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option(
    "--config-map",
    metavar="NAME",
    help="The ConfigMap holding agent.yaml and the contract files. [default: <workload name>-agentmesh]",
)
@click.option("--image", default=DEFAULT_IMAGE, show_default=True, help="The sidecar image.")
@click.option(
    "--sidecar-mode",
    type=click.Choice(["native", "container"]),
    default="native",
    show_default=True,
    help="native: an init container with restartPolicy Always (Kubernetes 1.29+); container: a regular container.",
)
@click.option(
    "--join-token-secret",
    metavar="NAME",
    help="The Secret whose key `token` holds the sidecar's join token (`agentmesh token create`). "
    "[default: <workload name>-agentmesh-join-token]",
)
@click.option(
    "--identity/--no-identity",
    default=True,
    show_default=True,
    help="Wire the sidecar's workload identity (mutual TLS): the join token from the Secret and a memory-backed "
    "identity volume at /var/lib/agentmesh/identity. --no-identity: a plaintext sidecar, no Secret needed.",
)
def inject_command(
    files: tuple[str, ...],
    output: str,
    config_map: str | None,
    image: str,
    sidecar_mode: str,
    join_token_secret: str | None,
    identity: bool,
) -> None:
    """Add the AgentMesh sidecar to every workload in Kubernetes YAML.

    Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and
    Pods get an `agentmesh-sidecar` container running `agentmesh sidecar -c
    /etc/agentmesh/agent.yaml` from the ConfigMap, with its ports, probes and
    Prometheus annotations, and its join token from a Secret the pod waits
    for. Other objects pass through unchanged; already injected workloads are
    left as they are. The result goes to stdout, a line per object to stderr:

        kubectl kustomize DIR | agentmesh inject -f - | kubectl apply -f -

    \b
    The Secret, made by an admin (--uses: how many pods may enroll with it):
        agentmesh token create --agent NAME --team TEAM --uses 10 --ttl 24h \\
          | kubectl -n NS create secret generic NAME-agentmesh-join-token \\
              --from-file=token=/dev/stdin

    Exit codes: 0 done, 2 unreadable or malformed input (the message names
    the file, document and field).
    """
    options = SidecarOptions(
        image=image,
        config_map=config_map,
        mode="native" if sidecar_mode == "native" else "container",
        identity=identity,
        join_token_secret=join_token_secret,
    )
    try:
        documents: list[Document] = []
        for name in files:
            documents += read_documents(_read(name), "<stdin>" if name == "-" else name)
        result = inject(documents, options)
    except InjectError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    for report in result.reports:
        click.echo(str(report), err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.bodies:
        click.echo(dump_documents(result.bodies, "json" if output == "json" else "yaml"), nl=False)


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InjectError(name, f"cannot read: {exc}") from exc
