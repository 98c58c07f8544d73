"""`agentmesh call`: call one skill of an agent from the shell, with JSON in and JSON out.

It speaks `agentmesh.v1.Agent` to the agent's sidecar (inbound listener), so
no stubs are needed: `GetManifest` says which skills the agent has and which
stream, then `Invoke` (or `InvokeStream`, one JSON document per message)
carries the request as a `google.protobuf.Struct`. The request goes through
the same contract checks as a typed call; a rejected call prints its status,
message and each `google.rpc.BadRequest` field violation on its own line.

Sidecars with mutual TLS (strict) refuse plaintext callers. With `-f`, the
call is made over mTLS with the client identity of the `agentmesh up`
running in this folder (`.agentmesh/identity/cli`), or the identity folder
given with `--identity`; the server must prove the SPIFFE ID of AGENT (its
name and team in the mesh file's agent.yaml, the trust domain of the client
identity).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import grpc
import yaml
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.config import ConfigError, parse_duration
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, manifest_pb2

if TYPE_CHECKING:
    from agentmesh.identity.material import IdentityMaterial
    from sidecar.config.bootstrap import AgentIdentity

DEFAULT_ADDRESS = "127.0.0.1:15006"
DEFAULT_TIMEOUT = "10s"
EXIT_RPC = 1
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}
IDENTITY_ENV = "AGENTMESH_CALL_IDENTITY"


@click.command("call")
@click.argument("agent")
@click.argument("method")
@click.option(
    "--json",
    "payload",
    metavar="JSON",
    default="{}",
    show_default=True,
    help="The request message as JSON; @FILE reads it from a file, - from stdin.",
)
@click.option(
    "--address", metavar="HOST:PORT", help=f"The agent's sidecar inbound listener. [default: {DEFAULT_ADDRESS}]"
)
@click.option(
    "-f",
    "--file",
    "mesh_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A mesh file: the address is AGENT's sidecar inbound listener there.",
)
@click.option(
    "--timeout", metavar="DURATION", default=DEFAULT_TIMEOUT, show_default=True, help="Deadline of the whole call."
)
@click.option(
    "--identity",
    "identity_dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar=IDENTITY_ENV,
    help="A workload identity folder (key.pem, cert-chain.pem, root-cert.pem) to call with over mutual TLS; "
    "needs -f. Default with -f: the client identity of the `agentmesh up` running in this folder, if any.",
)
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json", show_default=True)
def call(
    agent: str,
    method: str,
    payload: str,
    address: str | None,
    mesh_path: Path | None,
    timeout: str,
    identity_dir: Path | None,
    output: str,
) -> None:
    """Call METHOD (package.Service/Method, or just Method) of AGENT and print the answer.

    \b
    agentmesh call researcher research.v1.Researcher/Search --json '{"query": "tides"}' -f examples/mesh.yaml
    agentmesh call writer StreamDraft --json '{"topic": "tides"}' --address 127.0.0.1:15306

    Exit codes: 0 OK, 1 the call failed (status, message and field violations
    on stderr), 2 usage error (bad JSON, unknown agent or skill).
    """
    try:
        deadline = parse_duration(timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timeout") from exc
    request = _request_json(payload)
    target, fronted = _address(agent, address, mesh_path)
    material = _client_identity(identity_dir, fronted)
    with _channel(target, material, fronted) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        try:
            manifest = stub.GetManifest(agent_pb2.GetManifestRequest(), timeout=deadline)
        except grpc.RpcError as exc:
            if material is None and isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                click.echo(
                    "hint: a sidecar with mTLS strict refuses plaintext callers: call with -f from the folder where "
                    "`agentmesh up` runs (its client identity), or give --identity",
                    err=True,
                )
            _fail(exc, f"cannot read the manifest of the sidecar at {target}")
        if manifest.name != agent:
            raise click.UsageError(f"the sidecar at {target} fronts agent {manifest.name!r}, not {agent!r}")
        skill = _skill(manifest, method)
        invoke = agent_pb2.InvokeRequest(skill=skill.method, json=request)
        try:
            if skill.server_streaming:
                for reply in stub.InvokeStream(invoke, timeout=deadline):
                    _print(reply, output, streaming=True)
            else:
                _print(stub.Invoke(invoke, timeout=deadline), output, streaming=False)
        except grpc.RpcError as exc:
            _fail(exc, f"{skill.method.lstrip('/')} on {agent} failed")


def _request_json(payload: str) -> struct_pb2.Struct:
    if payload == "-":
        text = sys.stdin.read()
    elif payload.startswith("@"):
        try:
            text = Path(payload[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {payload[1:]}: {exc}", param_hint="--json") from exc
    else:
        text = payload
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from exc
    if not isinstance(value, dict):
        raise click.BadParameter("expected a JSON object (the request message)", param_hint="--json")
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _client_identity(identity_dir: Path | None, fronted: AgentIdentity | None) -> IdentityMaterial | None:
    """The identity to call with: --identity, else up's client identity here; None for plaintext."""
    from agentmesh.identity.files import MaterialFileError, read_material
    from agentmesh.local.state import CLIENT_IDENTITY_DIR

    given = identity_dir is not None
    directory = identity_dir if identity_dir is not None else CLIENT_IDENTITY_DIR
    if given and fronted is None:
        raise click.UsageError("--identity needs -f: the mesh file says which agent and team the server must prove")
    if fronted is None:
        return None
    try:
        material = read_material(directory)
    except MaterialFileError as exc:
        if given:
            raise click.BadParameter(str(exc), param_hint="--identity") from exc
        click.echo(f"note: ignoring the client identity: {exc}; calling in plaintext", err=True)
        return None
    if material is None:
        if given:
            raise click.BadParameter(f"no identity in {directory}", param_hint="--identity")
        return None
    if material.not_after <= datetime.now(UTC):
        expired = f"the client identity in {directory} expired at {material.not_after.isoformat()}"
        if given:
            raise click.BadParameter(expired, param_hint="--identity")
        click.echo(f"note: {expired} (is `agentmesh up` still running?); calling in plaintext", err=True)
        return None
    return material


def _channel(target: str, material: IdentityMaterial | None, fronted: AgentIdentity | None) -> grpc.Channel:
    if material is None or fronted is None:
        return grpc.insecure_channel(target)
    from agentmesh.identity.spiffe import SpiffeId

    expected = SpiffeId(material.spiffe_id.trust_domain, fronted.team, fronted.name)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.trust_bundle_pem,
        private_key=material.private_key_pem,
        certificate_chain=material.certificate_chain_pem,
    )
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", expected.dns_name)])


def _address(agent: str, address: str | None, mesh_path: Path | None) -> tuple[str, AgentIdentity | None]:
    """The sidecar's inbound address and, with -f, the agent it fronts (None when its entry runs `mtls: off`)."""
    if address and mesh_path:
        raise click.UsageError("give --address or -f, not both")
    if mesh_path is None:
        return address or DEFAULT_ADDRESS, None
    from agentmesh.local.meshfile import MeshFile
    from sidecar.config.bootstrap import Bootstrap

    try:
        mesh = MeshFile.load(mesh_path)
        configs = {entry.name: Bootstrap.load(entry.sidecar) for entry in mesh.agents}
    except ConfigError as exc:
        raise click.UsageError(f"invalid mesh:\n{exc}") from exc
    # An entry's own name first (it tells versions apart), then the agent name in its sidecar config.
    matches = [name for name in configs if name == agent] or [
        name for name, config in configs.items() if config.agent.name == agent
    ]
    if not matches:
        known = ", ".join(sorted(configs))
        raise click.UsageError(f"no agent {agent!r} in {mesh_path} (entries: {known})")
    if len(matches) > 1:
        raise click.UsageError(f"{agent!r} names several entries of {mesh_path}: {', '.join(matches)}; pick one")
    config = configs[matches[0]]
    entry = next(e for e in mesh.agents if e.name == matches[0])
    host, _, port = config.listen.inbound.rpartition(":")
    # A sidecar listening on every interface is reached on loopback.
    return f"{_LOOPBACK.get(host, host)}:{port}", None if entry.mtls == "off" else config.agent


def _skill(manifest: manifest_pb2.Manifest, method: str) -> manifest_pb2.Skill:
    wanted = method.lstrip("/")
    if "/" not in wanted and wanted.count(".") >= 2:  # package.Service.Method
        service, _, name = wanted.rpartition(".")
        wanted = f"{service}/{name}"
    skills = list(manifest.skills)
    found = [s for s in skills if s.method.lstrip("/") == wanted]
    if not found and "/" not in wanted:
        found = [s for s in skills if s.method.rpartition("/")[2] == wanted]
    if len(found) == 1:
        return found[0]
    names = ", ".join(s.method.lstrip("/") for s in skills) or "none"
    if found:
        raise click.UsageError(f"{method!r} is ambiguous on {manifest.name}: {names}")
    raise click.UsageError(f"agent {manifest.name} has no skill {method!r}; its skills: {names}")


def _print(reply: agent_pb2.InvokeResponse, output: str, *, streaming: bool) -> None:
    if reply.WhichOneof("payload") == "any":
        value: Any = json_format.MessageToDict(reply.any)
    else:
        value = _integral(json_format.MessageToDict(reply.json))
    if output == "yaml":
        click.echo(
            ("---\n" if streaming else "") + yaml.safe_dump(value, sort_keys=False, allow_unicode=True), nl=False
        )
    elif streaming:
        click.echo(json.dumps(value, ensure_ascii=False))
    else:
        click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _integral(value: Any) -> Any:
    """Struct holds every number as a double; print 3.0 as 3."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _fail(error: grpc.RpcError, context: str) -> NoReturn:
    click.echo(f"error: {context}", err=True)
    for line in describe_error(error):
        click.echo(line, err=True)
    sys.exit(EXIT_RPC)


def describe_error(error: grpc.RpcError) -> Iterator[str]:
    """The status code and message, then one line per field violation: `  query: must be ...`."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    status: status_pb2.Status | None = None
    if isinstance(error, grpc.Call):
        try:
            status = rpc_status.from_call(error)
        except ValueError:
            status = None
    reason = ""
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    yield f"{code.name}{f' ({reason})' if reason else ''}: {details}"
    for field, description in violations:
        yield f"  {field or '(message)'}: {description}"
