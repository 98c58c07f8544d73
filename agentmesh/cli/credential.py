"""`agentmesh credential` and `agentmesh whoami`: who may use the admin API, and as whom you call it.

Credentials are bearer tokens with a name (recorded as the author of every
change made with them), a role (viewer, operator, admin) and, for operators,
optional teams; creating, listing and revoking them needs role admin. The
token is printed once, by `create`; the control plane keeps only its hash.
See docs/roles.md.

Exit codes: 0 done; 1 the control plane refused or failed the call; 2
invalid input; 3 the control plane cannot be reached.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
from google.protobuf import duration_pb2

from agentmesh.cli._client import TOKEN_ENV, AdminClient, connection_options
from agentmesh.cli._options import LIFETIME
from agentmesh.cli._output import NONE, emit, emit_secret, message_data, note, output_option, table, utc_time, when
from agentmesh.v1 import control_pb2
from control_plane.access.roles import ROLES


def status(credential: control_pb2.Credential, now: datetime) -> str:
    """active, expired or revoked."""
    if credential.revoked:
        return "revoked"
    expires = when(credential.expires)
    return "expired" if expires is not None and expires <= now else "active"


def _expiry(credential: control_pb2.Credential) -> str:
    expires = when(credential.expires)
    return utc_time(expires) if expires is not None else "never"


@click.group()
@connection_options
def credential() -> None:
    """Create, list and revoke admin API credentials (role admin).

    A credential is a bearer token with a name, a role and optional teams:
    viewer reads (policies, history, agents, proxy status, check, the CA);
    operator also applies, deletes and rolls back policy, only for the
    agents of its teams when it has any; admin may do everything (join
    tokens, credentials). Changes are recorded with the credential's name as
    their author. Use a token with --token or AGENTMESH_TOKEN.

    \b
    Examples:
      agentmesh credential create ci --role operator --team research --ttl 30d
      agentmesh credential list --all
      agentmesh credential revoke 3f9c2a1b7d4e

    Exit codes: 0 done, 1 refused or failed, 2 invalid input, 3 control plane
    unreachable.
    """


@credential.command()
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the credential may do.")
@click.option(
    "--team",
    "teams",
    multiple=True,
    metavar="TEAM",
    help="Operators only: change only the policies of this team's agents; repeat for more. Default: every team.",
)
@click.option("--ttl", type=LIFETIME, default=None, help="Lifetime, e.g. 12h or 30d. Default: no expiry.")
@output_option
@connection_options
def create(name: str, role: str, teams: tuple[str, ...], ttl: timedelta | None, output: str) -> None:
    """Create a credential and print its token (shown only this once).

    With -o table the token alone goes to stdout (so it can be captured)
    and a summary to stderr; -o json or -o yaml print every field, the
    token as `secret`.

    \b
    Examples:
      agentmesh credential create alice --role viewer
      TOKEN=$(agentmesh credential create ci --role operator --team research --ttl 30d)

    Exit codes: 0 created, 1 refused (e.g. not an admin), 2 invalid name,
    role, team or lifetime, 3 unreachable.
    """
    request = control_pb2.CreateCredentialRequest(name=name, role=role, teams=list(teams))
    if ttl is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl.total_seconds())))
    with AdminClient.from_context() as client:
        created: control_pb2.Credential = client.call("CreateCredential", request)
    scope = f", teams {', '.join(created.teams)}" if created.teams else ""
    summary = (
        f"credential/{created.id} created: {created.name}, role {created.role}{scope}, expires {_expiry(created)}\n"
        f"The token below is shown only once; use it with --token or {TOKEN_ENV}."
    )
    emit_secret(output, created, created.secret, summary)


@credential.command(name="list")
@click.option("--all", "include_inactive", is_flag=True, help="Also list expired and revoked credentials.")
@output_option
@connection_options
def list_(include_inactive: bool, output: str) -> None:
    """List credentials (never their tokens).

    The control plane's own token (--token of `agentmesh control-plane`) is
    the credential bootstrap-admin; it is not stored, so it is not listed.

    \b
    Examples:
      agentmesh credential list
      agentmesh credential list --all -o json
    """
    with AdminClient.from_context() as client:
        response = client.call("ListCredentials", control_pb2.ListCredentialsRequest(all=include_inactive))
    if output == "table" and not response.credentials:
        note("No credentials." if include_inactive else "No active credentials (--all lists every one).")
        return
    now = datetime.now(UTC)
    rows = [
        (
            c.id,
            c.name,
            c.role,
            ",".join(c.teams) or "*",
            status(c, now),
            utc_time(when(c.created)),
            _expiry(c),
            c.created_by,
        )
        for c in response.credentials
    ]
    emit(
        output,
        message_data(response),
        lambda: table(("id", "name", "role", "teams", "status", "created", "expires", "created by"), rows),
    )


@credential.command()
@click.argument("credential_id", metavar="ID")
@connection_options
def revoke(credential_id: str) -> None:
    """Revoke a credential: its token is refused from the next call on.

    Revoked credentials stay listed with `list --all`, so authors in the
    policy history can be traced. Revoking a revoked credential changes
    nothing.

    \b
    Example:
      agentmesh credential revoke 3f9c2a1b7d4e

    Exit codes: 0 revoked, 1 no such credential or refused, 3 unreachable.
    """
    with AdminClient.from_context() as client:
        revoked = client.call("RevokeCredential", control_pb2.RevokeCredentialRequest(id=credential_id))
    click.echo(f"credential/{revoked.id} ({revoked.name}) revoked")


def _describe(me: control_pb2.Credential) -> str:
    lines = [
        f"Name:     {me.name}",
        f"Role:     {me.role}",
        f"Teams:    {', '.join(me.teams) or '* (every team)'}",
        f"ID:       {me.id or NONE}",
        f"Expires:  {_expiry(me)}",
    ]
    if me.created_by:
        lines.append(f"Created:  {utc_time(when(me.created))} by {me.created_by}")
    return "\n".join(lines)


@click.command()
@output_option
@connection_options
def whoami(output: str) -> None:
    """Show the credential the control plane sees: name, role, teams, expiry.

    \b
    Examples:
      agentmesh whoami
      AGENTMESH_TOKEN=$TOKEN agentmesh whoami -o json

    Exit codes: 0 shown, 1 refused (unknown, expired or revoked token), 3
    unreachable.
    """
    with AdminClient.from_context() as client:
        me = client.call("WhoAmI", control_pb2.WhoAmIRequest())
    emit(output, message_data(me), lambda: _describe(me))
