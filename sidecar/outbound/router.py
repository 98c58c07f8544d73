"""Route match: which route of a route table an outbound call takes.

Outbound path: **route** → weighted cluster (split.py) → cluster → endpoint.
The table is the target's RouteConfiguration (`agent/<name>` or
`service/<Service>`); the authority is the name the call was addressed to.

Virtual host selection is Envoy's (and gRPC's xDS client's), on the
lower-cased authority:

1. an exact domain;
2. else the longest suffix wildcard (`*.example.com`, `*example.com`);
3. else the longest prefix wildcard (`researcher*`, and `researcher:*`, the
   port-insensitive form the control plane publishes: `researcher:15001`);
4. else the default virtual host `*`.

A wildcard stands for at least one character. Within the virtual host the
first route whose match accepts the path and headers wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.config.snapshot import Route, RouteTable, VirtualHost
from sidecar.errors import NoRoute

# Match kinds, best first.
_EXACT, _SUFFIX, _PREFIX, _DEFAULT, _NONE = 3, 2, 1, 0, -1


def _domain_match(domain: str, host: str) -> tuple[int, int]:
    """(kind, length) of how `domain` (lower-cased) matches `host`; kind _NONE when it does not."""
    if domain == "*":
        return _DEFAULT, 0
    if domain.startswith("*"):
        suffix = domain[1:]
        if len(host) > len(suffix) and host.endswith(suffix):
            return _SUFFIX, len(suffix)
        return _NONE, 0
    if domain.endswith("*"):
        prefix = domain[:-1]
        if len(host) > len(prefix) and host.startswith(prefix):
            return _PREFIX, len(prefix)
        return _NONE, 0
    return (_EXACT, len(domain)) if domain == host else (_NONE, 0)


def select_virtual_host(table: RouteTable, authority: str) -> VirtualHost | None:
    """The virtual host of `table` serving `authority`, or None."""
    host = authority.lower()
    found = table.exact.get(host)
    if found is not None:
        return found
    best: VirtualHost | None = None
    best_rank = (_NONE, 0)
    for domain, virtual_host in table.wildcards:
        rank = _domain_match(domain, host)
        if rank > best_rank:
            best, best_rank = virtual_host, rank
    return best


def select_route(table: RouteTable, authority: str, path: str, headers: Mapping[str, str]) -> Route:
    """The route an outbound call to `authority` for `path` takes; raises NoRoute naming what failed to match.

    `headers` are the call's metadata with lower-case keys.
    """
    virtual_host = select_virtual_host(table, authority)
    if virtual_host is None:
        raise NoRoute(f"route table {table.name}: no virtual host serves {authority!r} (path {path})")
    for route in virtual_host.routes:
        if route.matches(path, headers):
            return route
    raise NoRoute(
        f"route table {table.name}: no route of virtual host {virtual_host.name} matches {path} (host {authority!r})"
    )
