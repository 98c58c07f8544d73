"""SPIFFE IDs of agents: `spiffe://<trust-domain>/team/<team>/agent/<name>`.

The ID is the identity RBAC acts on. gRPC clients verify a server by a DNS name
rather than a URI SAN, so every certificate also carries the DNS name
`<name>.<team>.<trust-domain>` derived from the same ID (`dns_name`); a sidecar
dials a target with that name as the TLS server name to check it reached the
agent it meant to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "agentmesh.local"

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_TRUST_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_NAME = re.compile(rf"^{_LABEL}$")
_PATH = re.compile(r"^/team/(?P<team>[^/]+)/agent/(?P<agent>[^/]+)$")


class InvalidSpiffeId(ValueError):
    """The string is not an agent SPIFFE ID of this mesh's shape."""


def check_trust_domain(value: str) -> str:
    """The trust domain, or ValueError saying why it is not one (lowercase DNS labels joined by dots)."""
    if not _TRUST_DOMAIN.fullmatch(value) or len(value) > 253:
        raise ValueError(f"{value!r} is not a valid trust domain: lowercase DNS labels joined by '.', e.g. example.org")
    return value


def check_name(value: str, what: str) -> str:
    """An agent or team name (a DNS label), or ValueError naming `what`."""
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} name: lowercase letters, digits and '-', at most 63")
    return value


@dataclass(frozen=True)
class SpiffeId:
    """An agent's identity within one trust domain."""

    trust_domain: str
    team: str
    agent: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_name(self.team, "team")
        check_name(self.agent, "agent")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parses `spiffe://<td>/team/<team>/agent/<name>`; raises InvalidSpiffeId saying what is wrong."""
        if not uri.startswith(SCHEME):
            raise InvalidSpiffeId(f"{uri!r} is not a SPIFFE ID: it must start with {SCHEME}")
        trust_domain, slash, path = uri[len(SCHEME) :].partition("/")
        match = _PATH.fullmatch(slash + path)
        if match is None:
            raise InvalidSpiffeId(
                f"{uri!r} is not an agent SPIFFE ID: expected {SCHEME}<trust-domain>/team/<team>/agent/<name>"
            )
        try:
            return cls(trust_domain, match["team"], match["agent"])
        except ValueError as error:
            raise InvalidSpiffeId(f"{uri!r}: {error}") from None

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/team/{self.team}/agent/{self.agent}"

    @property
    def dns_name(self) -> str:
        """The DNS SAN carried next to the URI SAN; what a client verifies as the server name."""
        return f"{self.agent}.{self.team}.{self.trust_domain}"

    def __str__(self) -> str:
        return self.uri
