"""The CLI's connection to the control plane's admin API (agentmesh.v1.ControlPlane).

Every command that talks to the control plane takes `--control-plane
host:port` (env `AGENTMESH_CONTROL_PLANE`, default 127.0.0.1:15010) and
`--token` (env `AGENTMESH_TOKEN`), on the command or on its group
(`agentmesh policy --token T get`); a value given on the command line wins
over the environment and the default, wherever it is given.

`--ca-file` (env `AGENTMESH_CA_FILE`) switches to TLS for the control
plane's secure port (`--secure-listen`): the file is the trust bundle
(`agentmesh ca bundle`), and the server must hold a certificate of that CA
for `--server-name` (env `AGENTMESH_SERVER_NAME`; default
control-plane.<trust domain>, agentmesh/identity/control_plane_tls.py). The
token then travels encrypted to a server the CLI has authenticated.

`AdminClient.call` makes one unary call with `authorization: Bearer <token>`
and turns a failed call into a `CliError` with the CLI's exit codes: 2 when
the control plane refused invalid input (INVALID_ARGUMENT, each policy issue
on its own line) or the trust bundle is unusable, 3 when it cannot be reached
(including a TLS handshake that failed: the message says what the handshake
showed), 1 for anything else.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import click
import grpc
from click.core import ParameterSource

from agentmesh.cli._output import CliError, InvalidInputError, UnreachableError
from agentmesh.identity.control_plane_tls import (
    ControlPlaneTarget,
    ControlPlaneTls,
    TrustBundleError,
    explain_connection_failure,
)
from agentmesh.v1 import control_pb2_grpc

DEFAULT_CONTROL_PLANE: Final = "127.0.0.1:15010"
CONTROL_PLANE_ENV: Final = "AGENTMESH_CONTROL_PLANE"
TOKEN_ENV: Final = "AGENTMESH_TOKEN"
CA_FILE_ENV: Final = "AGENTMESH_CA_FILE"
SERVER_NAME_ENV: Final = "AGENTMESH_SERVER_NAME"
DEFAULT_TIMEOUT: Final = 30.0

_SETTINGS_KEY = "agentmesh.connection"
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class Connection:
    """Where the control plane is and how to authenticate to it."""

    control_plane: str = DEFAULT_CONTROL_PLANE
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    # The trust bundle that turns on TLS, and the name the server's certificate must carry.
    ca_file: str | None = None
    server_name: str | None = None

    def __repr__(self) -> str:
        return (
            f"Connection(control_plane={self.control_plane!r}, token={'***' if self.token else None}, "
            f"ca_file={self.ca_file!r}, server_name={self.server_name!r})"
        )

    def target(self) -> ControlPlaneTarget:
        """How to dial the control plane; raises InvalidInputError (exit 2) for an unusable trust bundle."""
        if not self.ca_file:
            if self.server_name:
                raise InvalidInputError(f"--server-name needs --ca-file (or {CA_FILE_ENV}): it is a TLS setting")
            return ControlPlaneTarget(self.control_plane)
        try:
            tls = ControlPlaneTls.from_file(self.ca_file, server_name=self.server_name)
        except TrustBundleError as exc:
            raise InvalidInputError(f"--ca-file: {exc}") from None
        return ControlPlaneTarget(self.control_plane, tls)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Stores an option in the context chain; a value from the command line overrides one from a parent group."""
    name = param.name or ""
    seen: dict[str, ParameterSource] = ctx.meta.setdefault(_SETTINGS_KEY + ".source", {})
    settings: Connection = ctx.meta.setdefault(_SETTINGS_KEY, Connection())
    source = ctx.get_parameter_source(name) or ParameterSource.DEFAULT
    if name not in seen or source is ParameterSource.COMMANDLINE:
        seen[name] = source
        setattr(settings, name, value)
    return value


def connection_options(function: _F) -> _F:
    """Adds `--control-plane`, `--token`, `--ca-file` and `--server-name` to a command or group."""
    function = click.option(
        "--server-name",
        "server_name",
        envvar=SERVER_NAME_ENV,
        default=None,
        metavar="NAME",
        expose_value=False,
        callback=_remember,
        help="With --ca-file: the name the control plane's certificate must carry, one of its --secure-san "
        f"(env {SERVER_NAME_ENV}).  [default: control-plane.<trust domain of the bundle>]",
    )(function)
    function = click.option(
        "--ca-file",
        "ca_file",
        envvar=CA_FILE_ENV,
        default=None,
        metavar="FILE",
        expose_value=False,
        callback=_remember,
        help="Trust bundle (agentmesh ca bundle) to verify the control plane with: TLS to its secure port "
        f"(--secure-listen) instead of plaintext (env {CA_FILE_ENV}).",
    )(function)
    function = click.option(
        "--token",
        envvar=TOKEN_ENV,
        default=None,
        expose_value=False,
        callback=_remember,
        help=f"Token of an admin API credential, or the control plane's own token (env {TOKEN_ENV}).",
    )(function)
    return click.option(
        "--control-plane",
        "control_plane",
        envvar=CONTROL_PLANE_ENV,
        default=DEFAULT_CONTROL_PLANE,
        show_default=True,
        metavar="HOST:PORT",
        expose_value=False,
        callback=_remember,
        help=f"gRPC address of the control plane (env {CONTROL_PLANE_ENV}).",
    )(function)


def current_connection() -> Connection:
    """The connection settings of the running command."""
    settings = click.get_current_context().meta.get(_SETTINGS_KEY)
    return settings if isinstance(settings, Connection) else Connection()


def author() -> str:
    """Who makes a policy change: the local user name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class AdminClient:
    """A blocking client of the admin API for one command; use as a context manager."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._target = connection.target()
        self._channel = self._target.channel()
        self._stub = control_pb2_grpc.ControlPlaneStub(self._channel)

    @classmethod
    def from_context(cls) -> AdminClient:
        return cls(current_connection())

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._channel.close()

    def call(self, method: str, request: Any) -> Any:
        """Calls `method` (e.g. 'GetPolicies') with `request`; raises CliError when the call fails."""
        metadata = [("authorization", f"Bearer {self.connection.token}")] if self.connection.token else []
        try:
            return getattr(self._stub, method)(request, timeout=self.connection.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: grpc.RpcError) -> CliError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        where = self.connection.control_plane
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            reason = "no answer in time" if code is grpc.StatusCode.DEADLINE_EXCEEDED else details
            explained = explain_connection_failure(details, self._target.tls)
            if explained is not None:
                return UnreachableError(f"cannot reach the control plane at {where}: {explained}\n({details})")
            return UnreachableError(
                f"cannot reach the control plane at {where}: {reason}\n"
                f"(set --control-plane or {CONTROL_PLANE_ENV} to its gRPC address)"
            )
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidInputError(details)
        if code is grpc.StatusCode.UNAUTHENTICATED:
            hint = "" if self.connection.token else f"\n(no token given: pass --token or set {TOKEN_ENV})"
            return CliError(f"the control plane refused the call: {details}{hint}")
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return CliError(details)
        return CliError(f"{code.name}: {details}")
