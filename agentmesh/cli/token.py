"""`agentmesh token`: join tokens, which let a sidecar enroll once as one agent.

A join token (`amjt.<id>.<secret>`) is scoped to one agent of one team,
expires (default 1h) and allows a number of enrollments (default 1). The
sidecar sends it with a CSR to get its first certificate; after that it
renews with its certificate. Creating, listing and revoking tokens needs role
admin. The token is printed once, by `create`; the control plane keeps only a
hash. See docs/identity.md.

Exit codes: 0 done; 1 the control plane refused or failed the call; 2
invalid input; 3 the control plane cannot be reached.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
from google.protobuf import duration_pb2

from agentmesh.cli._client import AdminClient, connection_options
from agentmesh.cli._options import LIFETIME
from agentmesh.cli._output import age, emit, emit_secret, message_data, note, output_option, table, utc_time, when
from agentmesh.v1 import control_pb2


def state(token: control_pb2.JoinToken, now: datetime) -> str:
    """active, revoked, expired or used up."""
    if token.revoked:
        return "revoked"
    expires = when(token.expires)
    if expires is not None and expires <= now:
        return "expired"
    if token.uses >= token.max_uses:
        return "used up"
    return "active"


def _expiry(token: control_pb2.JoinToken, now: datetime) -> str:
    expires = when(token.expires)
    if expires is None:
        return "never"
    if expires <= now:
        return f"{age(expires, now=now)} ago"
    return f"in {age(now, now=expires)}"


@click.group()
@connection_options
def token() -> None:
    """Create, list and revoke join tokens (role admin).

    A join token lets a sidecar (or identity agent) enroll once as one agent:
    it gets a certificate for spiffe://<trust-domain>/team/<team>/agent/<name>
    and renews it on its own from then on. Give the token to the sidecar with
    AGENTMESH_JOIN_TOKEN or agent.yaml's identity.join_token_file.

    \b
    Examples:
      agentmesh token create --agent researcher --team research
      agentmesh token create --agent writer --ttl 10m --uses 3 -o json
      agentmesh token list --all
      agentmesh token revoke 3f9c2a1b7d4e5f60

    Exit codes: 0 done, 1 refused or failed, 2 invalid input, 3 control plane
    unreachable.
    """


@token.command()
@click.option("--agent", required=True, help="The agent the token lets a sidecar enroll as.")
@click.option("--team", default="", help="The agent's team. Default: the team the agent registered with.")
@click.option("--ttl", type=LIFETIME, default="1h", show_default=True, help="How long the token may be used.")
@click.option("--uses", type=click.IntRange(min=1), default=1, show_default=True, help="Enrollments it allows.")
@click.option("--description", default="", help="A note kept with the token (who or what it is for).")
@output_option
@connection_options
def create(agent: str, team: str, ttl: timedelta, uses: int, description: str, output: str) -> None:
    """Create a join token and print it (shown only this once).

    With -o table the token alone goes to stdout (so it can be captured)
    and a summary to stderr; -o json or -o yaml print every field, the
    token as `secret`. Without --team the agent must be registered, so its
    team is known.

    \b
    Examples:
      agentmesh token create --agent researcher --team research
      export AGENTMESH_JOIN_TOKEN=$(agentmesh token create --agent researcher)

    Exit codes: 0 created, 1 refused (e.g. not an admin), 2 invalid agent,
    team or lifetime, or team unknown, 3 unreachable.
    """
    request = control_pb2.CreateJoinTokenRequest(
        agent=agent,
        team=team,
        ttl=duration_pb2.Duration(seconds=int(ttl.total_seconds())),
        max_uses=uses,
        description=description,
    )
    with AdminClient.from_context() as client:
        created: control_pb2.JoinToken = client.call("CreateJoinToken", request)
    summary = (
        f"jointoken/{created.id} created for {created.spiffe_id}: {created.max_uses} use(s), "
        f"expires {_expiry(created, datetime.now(UTC))} ({utc_time(when(created.expires))})\n"
        "The token below is shown only once; give it to the sidecar (AGENTMESH_JOIN_TOKEN)."
    )
    emit_secret(output, created, created.secret, summary)


@token.command(name="list")
@click.option("--all", "include_inactive", is_flag=True, help="Also list expired, used-up and revoked tokens.")
@output_option
@connection_options
def list_(include_inactive: bool, output: str) -> None:
    """List join tokens (never their secrets), newest first.

    \b
    Examples:
      agentmesh token list
      agentmesh token list --all -o json
    """
    with AdminClient.from_context() as client:
        response = client.call("ListJoinTokens", control_pb2.ListJoinTokensRequest(all=include_inactive))
    if output == "table" and not response.tokens:
        note("No join tokens." if include_inactive else "No active join tokens (--all lists every one).")
        return
    now = datetime.now(UTC)
    rows = [
        (
            t.id,
            t.agent,
            t.team,
            f"{t.uses}/{t.max_uses}",
            state(t, now),
            _expiry(t, now),
            t.created_by,
            t.description,
        )
        for t in response.tokens
    ]
    emit(
        output,
        message_data(response),
        lambda: table(("id", "agent", "team", "uses", "state", "expires", "created by", "description"), rows),
    )


@token.command()
@click.argument("token_id", metavar="ID")
@connection_options
def revoke(token_id: str) -> None:
    """Revoke a join token: enrollments with it are refused from now on.

    Certificates already issued with it stay valid until they expire (they
    renew with the certificate, not the token). Revoking a revoked token
    changes nothing.

    \b
    Example:
      agentmesh token revoke 3f9c2a1b7d4e5f60

    Exit codes: 0 revoked, 1 no such token or refused, 3 unreachable.
    """
    with AdminClient.from_context() as client:
        revoked: control_pb2.JoinToken = client.call("RevokeJoinToken", control_pb2.RevokeJoinTokenRequest(id=token_id))
    click.echo(f"jointoken/{revoked.id} ({revoked.spiffe_id}) revoked")
