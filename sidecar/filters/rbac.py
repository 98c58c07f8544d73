"""Access control: the envoy.filters.http.rbac filter of the agent's inbound listener.

Inbound path: tracing → authentication → **access (RBAC)** → rate → contract(in) → agent.

The control plane turns an AccessPolicy into RBAC filters (a DENY filter,
then an ALLOW filter when the default is deny: control_plane/translate/rbac.py);
decode/ compiles each with `RbacConfig.from_proto` when the listener changes,
and `RbacFilter` runs them in order on every call. A call passes only if
every filter lets it through.

Decisions are Envoy's (extensions.filters.http.rbac.v3.RBAC):

- a policy matches when any of its permissions and any of its principals match;
- action ALLOW: allowed iff some policy matches; DENY: denied iff some
  policy matches; LOG: always allowed (the matching policy is reported);
- a filter without `rules` lets everything through; `shadow_rules` are not
  evaluated (they never change a decision);
- the policy reported is the first matching one by name, as Envoy's engine
  keeps policies in a name-ordered map.

Supported matchers (anything else is a ValueError naming the field, so the
listener update is NACKed rather than enforced differently):

- principals: `any`, `header` (string_match exact/prefix/suffix/contains/
  safe_regex with ignore_case, the deprecated `*_match` forms, present_match,
  invert_match, treat_missing_header_as_empty), `url_path`, `and_ids`,
  `or_ids`, `not_id`, `authenticated.principal_name` (matched against the
  peer identity the caller proves: the SPIFFE ID of its mTLS certificate,
  sidecar/filters/authn.py; without principal_name any authenticated peer
  matches, and a caller without a certificate matches no `authenticated`);
- permissions: `any`, `url_path.path`, `header` (`:path` is the call's
  path), `and_rules`, `or_rules`, `not_rule`.

Header names are matched lower-case, as gRPC metadata keys are; `url_path`
ignores a query string.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol

from sidecar.errors import AccessDenied

Action = Literal["ALLOW", "DENY", "LOG"]
_ACTIONS: dict[int, Action] = {0: "ALLOW", 1: "DENY", 2: "LOG"}
StringKind = Literal["exact", "prefix", "suffix", "contains", "regex"]
# The `policy` of a denial no policy asked for: an ALLOW filter that nothing matched.
DEFAULT_DENY = "default-deny"
# (path, peer) decisions a filter without header matchers remembers; beyond this it starts over.
MAX_REMEMBERED_DECISIONS = 4096


class _Matcher(Protocol):
    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool: ...


@dataclass(frozen=True)
class StringMatch:
    """type.matcher.v3.StringMatcher, compiled."""

    kind: StringKind
    value: str = ""
    ignore_case: bool = False
    regex: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        if self.ignore_case:
            value = value.lower()
        if self.kind == "exact":
            return value == self.value
        if self.kind == "prefix":
            return value.startswith(self.value)
        if self.kind == "suffix":
            return value.endswith(self.value)
        return self.value in value

    @classmethod
    def from_proto(cls, matcher: Any, at: str) -> StringMatch:
        kind = matcher.WhichOneof("match_pattern")
        if kind in ("exact", "prefix", "suffix", "contains"):
            value = getattr(matcher, kind)
            return cls(kind, value.lower() if matcher.ignore_case else value, ignore_case=matcher.ignore_case)
        if kind == "safe_regex":
            return cls("regex", regex=_regex(matcher.safe_regex.regex, f"{at}.safe_regex"))
        if kind is None:
            raise ValueError(f"{at}: a StringMatcher needs one of exact, prefix, suffix, contains, safe_regex")
        raise ValueError(f"{at}.{kind} is not supported (supported: exact, prefix, suffix, contains, safe_regex)")


def _regex(pattern: str, at: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{at}: invalid regex {pattern!r}: {exc}") from None


@dataclass(frozen=True)
class _Any:
    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        return True


@dataclass(frozen=True)
class _And:
    items: tuple[_Matcher, ...]

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        return all(item.matches(path, headers, peer) for item in self.items)


@dataclass(frozen=True)
class _Or:
    items: tuple[_Matcher, ...]

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        return any(item.matches(path, headers, peer) for item in self.items)


@dataclass(frozen=True)
class _Not:
    item: _Matcher

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        return not self.item.matches(path, headers, peer)


@dataclass(frozen=True)
class _Path:
    """url_path: the path without its query string."""

    match: StringMatch

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        return self.match.matches(path.partition("?")[0])


@dataclass(frozen=True)
class _Header:
    """config.route.v3.HeaderMatcher: an absent header only matches a presence test (or counts as "" if asked)."""

    name: str
    match: StringMatch | None = None
    present: bool | None = None
    invert: bool = False
    missing_as_empty: bool = False

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        value = path if self.name == ":path" else headers.get(self.name)
        if self.present is not None:
            return ((value is not None) == self.present) != self.invert
        if value is None:
            if not self.missing_as_empty:
                return False
            value = ""
        return self.match is not None and self.match.matches(value) != self.invert


@dataclass(frozen=True)
class _Authenticated:
    """Principal.authenticated: a peer identity (mTLS) exists and, when given, principal_name matches it."""

    principal_name: StringMatch | None

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        if peer is None:
            return False
        return self.principal_name is None or self.principal_name.matches(peer)


_DEPRECATED_HEADER_MATCH: dict[str, StringKind] = {
    "exact_match": "exact",
    "prefix_match": "prefix",
    "suffix_match": "suffix",
    "contains_match": "contains",
}


def _header(matcher: Any, at: str) -> _Header:
    name = matcher.name.lower()
    if not name:
        raise ValueError(f"{at}.name: a header matcher needs a header name")
    common = {"invert": matcher.invert_match, "missing_as_empty": matcher.treat_missing_header_as_empty}
    kind = matcher.WhichOneof("header_match_specifier")
    if kind is None:
        # Envoy: a matcher without a value matches when the header is present.
        return _Header(name, present=True, **common)
    if kind == "present_match":
        return _Header(name, present=matcher.present_match, **common)
    if kind == "string_match":
        return _Header(name, StringMatch.from_proto(matcher.string_match, f"{at}.string_match"), **common)
    if kind == "safe_regex_match":
        regex = _regex(matcher.safe_regex_match.regex, f"{at}.safe_regex_match")
        return _Header(name, StringMatch("regex", regex=regex), **common)
    if kind == "exact_match" and not matcher.exact_match:
        # Deprecated exact_match: an empty value matches any value.
        return _Header(name, present=True, **common)
    if kind in _DEPRECATED_HEADER_MATCH:
        return _Header(name, StringMatch(_DEPRECATED_HEADER_MATCH[kind], getattr(matcher, kind)), **common)
    raise ValueError(f"{at}.{kind} is not supported")


_PRINCIPALS = "any, header, url_path, authenticated, and_ids, or_ids, not_id"
_PERMISSIONS = "any, url_path, header, and_rules, or_rules, not_rule"


def _principal(principal: Any, at: str) -> _Matcher:
    kind = principal.WhichOneof("identifier")
    where = f"{at}.{kind}"
    if kind == "any":
        return _Any()
    if kind == "header":
        return _header(principal.header, where)
    if kind == "url_path":
        return _Path(_path_matcher(principal.url_path, where))
    if kind == "authenticated":
        has_name = principal.authenticated.HasField("principal_name")
        name = principal.authenticated.principal_name
        return _Authenticated(StringMatch.from_proto(name, f"{where}.principal_name") if has_name else None)
    if kind in ("and_ids", "or_ids"):
        items = tuple(_principal(p, f"{where}.ids[{i}]") for i, p in enumerate(getattr(principal, kind).ids))
        if not items:
            raise ValueError(f"{where}.ids: needs at least one principal")
        return _And(items) if kind == "and_ids" else _Or(items)
    if kind == "not_id":
        return _Not(_principal(principal.not_id, where))
    if kind is None:
        raise ValueError(f"{at}: empty principal (set one of {_PRINCIPALS})")
    raise ValueError(f"{where} is not supported (supported principals: {_PRINCIPALS})")


def _path_matcher(matcher: Any, at: str) -> StringMatch:
    if matcher.WhichOneof("rule") != "path":
        raise ValueError(f"{at}: a PathMatcher needs `path`")
    return StringMatch.from_proto(matcher.path, f"{at}.path")


def _permission(permission: Any, at: str) -> _Matcher:
    kind = permission.WhichOneof("rule")
    where = f"{at}.{kind}"
    if kind == "any":
        return _Any()
    if kind == "url_path":
        return _Path(_path_matcher(permission.url_path, where))
    if kind == "header":
        return _header(permission.header, where)
    if kind in ("and_rules", "or_rules"):
        items = tuple(_permission(p, f"{where}.rules[{i}]") for i, p in enumerate(getattr(permission, kind).rules))
        if not items:
            raise ValueError(f"{where}.rules: needs at least one permission")
        return _And(items) if kind == "and_rules" else _Or(items)
    if kind == "not_rule":
        return _Not(_permission(permission.not_rule, where))
    if kind is None:
        raise ValueError(f"{at}: empty permission (set one of {_PERMISSIONS})")
    raise ValueError(f"{where} is not supported (supported permissions: {_PERMISSIONS})")


@dataclass(frozen=True)
class RbacPolicy:
    """config.rbac.v3.Policy: matches when any permission and any principal match."""

    name: str
    permissions: tuple[_Matcher, ...]
    principals: tuple[_Matcher, ...]

    def matches(self, path: str, headers: Mapping[str, str], peer: str | None) -> bool:
        return any(p.matches(path, headers, peer) for p in self.permissions) and any(
            p.matches(path, headers, peer) for p in self.principals
        )

    @classmethod
    def from_proto(cls, name: str, policy: Any) -> RbacPolicy:
        at = f"policies[{name!r}]"
        for field in ("condition", "checked_condition"):
            if policy.HasField(field):
                raise ValueError(f"{at}.{field}: CEL conditions are not supported")
        if not policy.permissions or not policy.principals:
            raise ValueError(f"{at}: a policy needs at least one permission and one principal")
        return cls(
            name,
            tuple(_permission(p, f"{at}.permissions[{i}]") for i, p in enumerate(policy.permissions)),
            tuple(_principal(p, f"{at}.principals[{i}]") for i, p in enumerate(policy.principals)),
        )


@dataclass(frozen=True)
class Decision:
    """One filter's verdict; `policy` is the policy that matched, None when none did."""

    allowed: bool
    policy: str | None = None


_PASS = Decision(True)


def _reads_headers(matcher: _Matcher) -> bool:
    """Whether `matcher` looks at request headers (`:path` is the call's path, not a header)."""
    if isinstance(matcher, _Header):
        return matcher.name != ":path"
    if isinstance(matcher, (_And, _Or)):
        return any(_reads_headers(item) for item in matcher.items)
    if isinstance(matcher, _Not):
        return _reads_headers(matcher.item)
    return False


@dataclass(frozen=True)
class RbacConfig:
    """One compiled RBAC filter config. `action` is None when the config has no `rules` (allow everything)."""

    name: str = ""
    action: Action | None = None
    # Sorted by name: the first that matches is the one reported.
    policies: tuple[RbacPolicy, ...] = ()
    # Derived when built: whether any matcher reads headers, and the decision for each policy name
    # that may match (None: none did), so a call allocates no Decision.
    reads_headers: bool = dataclasses.field(init=False, repr=False, compare=False)
    _decisions: Mapping[str | None, Decision] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        matchers = [m for p in self.policies for m in (*p.permissions, *p.principals)]
        object.__setattr__(self, "reads_headers", any(_reads_headers(m) for m in matchers))
        names: list[str | None] = [p.name for p in self.policies]
        names.append(None)
        decisions: dict[str | None, Decision] = {}
        for policy in names:
            if self.action == "ALLOW":
                decisions[policy] = Decision(policy is not None, policy)
            elif self.action == "DENY":
                decisions[policy] = Decision(policy is None, policy)
            else:
                decisions[policy] = Decision(True, policy)
        object.__setattr__(self, "_decisions", MappingProxyType(decisions))

    @classmethod
    def from_proto(cls, rbac: Any, *, name: str = "") -> RbacConfig:
        """Compiles an extensions.filters.http.rbac.v3.RBAC; raises ValueError naming an unsupported field.

        `name` is the HTTP filter's name, used in messages.
        """
        for field in ("matcher", "shadow_matcher"):
            if rbac.HasField(field):
                raise ValueError(f"{field}: matcher-based RBAC is not supported; use rules")
        if not rbac.HasField("rules"):
            return cls(name)
        rules = rbac.rules
        action = _ACTIONS.get(rules.action)
        if action is None:
            raise ValueError(f"rules.action: unknown action {rules.action}")
        try:
            policies = tuple(RbacPolicy.from_proto(key, rules.policies[key]) for key in sorted(rules.policies))
        except ValueError as exc:
            raise ValueError(f"rules.{exc}") from None
        return cls(name, action, policies)

    @property
    def enforcing(self) -> bool:
        """Whether this config can refuse anything."""
        return self.action == "ALLOW" or (self.action == "DENY" and bool(self.policies))

    def evaluate(self, path: str, headers: Mapping[str, str], peer_identity: str | None = None) -> Decision:
        """Envoy's decision for a call to `path` with `headers` (lower-case keys) from `peer_identity`."""
        if self.action is None:
            return _PASS
        for policy in self.policies:
            if policy.matches(path, headers, peer_identity):
                return self._decisions[policy.name]
        return self._decisions[None]


class RbacFilter:
    """The inbound access step: the listener's RBAC configs in filter order; any denial refuses the call.

    When no config reads headers, a decision depends on the path and the peer
    alone (both from bounded sets: the contract's methods, the mesh's
    identities), so it is remembered per (path, peer) for this filter's life:
    the sidecar builds a new filter for each listener update.
    """

    def __init__(self, configs: Iterable[RbacConfig]) -> None:
        self.configs = tuple(configs)
        self._memo: dict[tuple[str, str | None], Decision] | None = (
            None if any(c.reads_headers for c in self.configs) else {}
        )

    def __repr__(self) -> str:
        return f"RbacFilter({[c.name or c.action for c in self.configs]})"

    @classmethod
    def build(cls, configs: Iterable[object]) -> RbacFilter | None:
        """The filter for InboundConfig.rbac; None when no config can refuse anything (it would cost for nothing)."""
        compiled = []
        for config in configs:
            if not isinstance(config, RbacConfig):
                raise TypeError(f"expected RbacConfig, got {type(config).__name__}")
            if config.enforcing:
                compiled.append(config)
        return cls(compiled) if compiled else None

    def evaluate(self, path: str, headers: Mapping[str, str], peer: str | None = None) -> Decision:
        """The first denial, else the last filter's decision."""
        decision = _PASS
        for config in self.configs:
            decision = config.evaluate(path, headers, peer)
            if not decision.allowed:
                return decision
        return decision

    def check(self, path: str, headers: Mapping[str, str], peer: str | None = None) -> Decision:
        """Returns the (allowing) decision, or raises AccessDenied naming the policy that refused.

        `peer` is the caller's proven identity (its certificate's SPIFFE ID), None for a caller without one.
        """
        memo = self._memo
        if memo is None:
            decision = self.evaluate(path, headers, peer)
        else:
            key = (path, peer)
            found = memo.get(key)
            if found is None:
                found = self.evaluate(path, headers, peer)
                if len(memo) >= MAX_REMEMBERED_DECISIONS:
                    memo.clear()
                memo[key] = found
            decision = found
        if decision.allowed:
            return decision
        policy = decision.policy or DEFAULT_DENY
        who = peer if peer is not None else "an unauthenticated caller"
        raise AccessDenied(f"access denied: {who} may not call {path} (policy {policy})", policy=policy)
