"""Roles of the admin API and the authenticated caller of one admin call.

Three roles, each including the one before: `viewer` reads (policies,
history, agents, sync state, lint, the CA's public side), `operator` also
changes policy (apply, delete, rollback), `admin` may do everything (join
tokens, credentials). Which role each RPC needs is one table in
control_plane/api/auth.py; this module only knows the roles and who holds one.

A `Caller` is what authentication proved about a call: the credential's name
(recorded as the author of every change it makes), its role and, for an
operator scoped to teams, those teams.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

# The credential of the token the control plane is started with (--token / AGENTMESH_TOKEN).
BOOTSTRAP_NAME: Final = "bootstrap-admin"
BOOTSTRAP_ID: Final = "bootstrap"


class Role(enum.StrEnum):
    """A role of the admin API; a higher role includes every lower one."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: Role) -> bool:
        """True when a holder of this role may do what `other` may."""
        return self.rank >= other.rank

    @classmethod
    def parse(cls, text: str) -> Role:
        """'operator' -> Role.OPERATOR; ValueError naming the roles for anything else."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"unknown role {text!r}: expected one of {', '.join(ROLES)}") from None


_RANKS: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
ROLES: Final = tuple(role.value for role in Role)


@dataclass(frozen=True)
class Caller:
    """Who makes an admin call: the credential's name, role and team scope (empty: every team)."""

    name: str
    role: Role
    teams: tuple[str, ...] = ()
    credential_id: str = ""

    @property
    def scoped(self) -> bool:
        """True when the caller may change only some teams' policies."""
        return bool(self.teams)

    @property
    def is_bootstrap(self) -> bool:
        return self.credential_id == BOOTSTRAP_ID

    def may(self, role: Role) -> bool:
        """True when the caller's role includes `role`."""
        return self.role.includes(role)

    def __str__(self) -> str:
        scope = f", teams {', '.join(self.teams)}" if self.teams else ""
        return f"credential {self.name!r} (role {self.role}{scope})"


BOOTSTRAP_CALLER: Final = Caller(BOOTSTRAP_NAME, Role.ADMIN, (), BOOTSTRAP_ID)
