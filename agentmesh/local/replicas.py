"""The replicas of one mesh entry: their ports, their generated agent.yaml and their processes.

A replica is the agent process plus its own sidecar. Replica 0 keeps the
ports written in the entry's agent.yaml (so documented addresses hold);
every other replica gets free ports. Each replica's sidecar runs from a
generated copy of the agent.yaml (`.agentmesh/replicas/<entry>-<index>.yaml`)
with its own listeners, its upstream URL on its own agent port, and the
link to the embedded control plane, where it registers as one more instance
of the agent version. With mutual TLS (every entry unless `mtls: off`), the
replica's sidecar gets a fresh join token before each start (environment
AGENTMESH_JOIN_TOKEN) and keeps its identity in
`.agentmesh/replicas/<entry>-<index>.identity/`. Removing a replica drains it: SIGTERM to the sidecar
first (the control plane stops routing to it and its calls in flight
finish), then to the agent.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml

from agentmesh.cli.stat import Scrape
from agentmesh.local.identity import JoinTokenError, JoinTokens
from agentmesh.local.meshfile import MeshAgent
from agentmesh.local.supervisor import DEFAULT_STOP_GRACE, Supervised, Supervisor
from sidecar.config.bootstrap import Bootstrap, IdentityMode
from sidecar.identity import JOIN_TOKEN_ENV

ReplicaState = Literal["starting", "ready", "unready", "draining"]
# A replica that was never ready after this long counts as unready, not starting.
STARTING_GRACE = 60.0
# Extra time a draining sidecar gets beyond its own drain_timeout before it is killed.
DRAIN_MARGIN = 5.0

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now (the kernel's pick for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable(address: str) -> str:
    """The host:port a client on this machine uses for a listen address (loopback for a wildcard)."""
    host, port = _split(address)
    return _join(_WILDCARDS.get(host, host), port)


@dataclass(frozen=True)
class ReplicaPorts:
    """Where one replica listens: its agent's port and its sidecar's four listeners (host:port)."""

    agent: int
    inbound: str
    egress_grpc: str
    egress_http: str
    admin: str

    @classmethod
    def for_replica(cls, bootstrap: Bootstrap, index: int, *, pick: Callable[[str], int] = free_port) -> ReplicaPorts:
        """Replica 0: the ports of agent.yaml (a port 0 is replaced by a free one); others: free ports."""

        def port(address: str) -> str:
            host, number = _split(address)
            if index == 0 and number != 0:
                return address
            return _join(host, pick(_WILDCARDS.get(host, host)))

        upstream = urlsplit(bootstrap.upstream.url)
        agent_port = upstream.port or 0
        if index != 0 or agent_port == 0:
            agent_port = pick(upstream.hostname or "127.0.0.1")
        listen = bootstrap.listen
        return cls(
            agent=agent_port,
            inbound=port(listen.inbound),
            egress_grpc=port(listen.egress_grpc),
            egress_http=port(listen.egress_http),
            admin=port(listen.admin),
        )

    def placeholders(self, index: int) -> dict[str, str]:
        """Values of the mesh file's placeholders for this replica's command and environment."""
        return {
            "port": str(self.agent),
            "egress_http": f"http://{reachable(self.egress_http)}",
            "egress_grpc": reachable(self.egress_grpc),
            "replica": str(index),
        }


@dataclass(frozen=True)
class ReplicaIdentity:
    """A replica's mTLS settings: its inbound mode and the folder its key and certificates live in."""

    mode: IdentityMode
    dir: Path


def replica_bootstrap(
    bootstrap: Bootstrap,
    ports: ReplicaPorts,
    *,
    control_plane: str,
    config_cache: Path,
    identity: ReplicaIdentity | None = None,
) -> dict[str, Any]:
    """The agent.yaml of one replica: the entry's, with its own ports, the control plane link and its identity.

    Paths come out absolute (the model holds them resolved), so the file
    works from any folder. An `advertise_address` of the original is dropped:
    it names one instance, and each replica advertises its own inbound. The
    original's join token (if any) is dropped too: up hands each start a
    token of its own; without `identity` the replica runs without mTLS.
    """
    data = bootstrap.model_dump(mode="json")
    upstream = urlsplit(bootstrap.upstream.url)
    host = upstream.hostname or "127.0.0.1"
    netloc = f"[{host}]:{ports.agent}" if ":" in host else f"{host}:{ports.agent}"
    data["upstream"]["url"] = urlunsplit((upstream.scheme, netloc, upstream.path, upstream.query, ""))
    data["listen"] = {
        "inbound": ports.inbound,
        "egress_grpc": ports.egress_grpc,
        "egress_http": ports.egress_http,
        "admin": ports.admin,
    }
    link = bootstrap.control_plane
    data["control_plane"] = {
        "address": control_plane,
        "zone": link.zone if link is not None else "",
        "config_cache": str(config_cache.resolve()),
    }
    data["identity"] = (
        {"mode": identity.mode, "dir": str(identity.dir.resolve())}
        if identity is not None
        else {"mode": bootstrap.identity.mode}
    )
    return data


def write_replica_config(
    bootstrap: Bootstrap,
    ports: ReplicaPorts,
    *,
    source: Path,
    path: Path,
    control_plane: str,
    identity: ReplicaIdentity | None = None,
) -> Path:
    """Writes one replica's agent.yaml to `path` (its xDS cache beside it) and returns the path."""
    data = replica_bootstrap(
        bootstrap, ports, control_plane=control_plane, config_cache=path.with_suffix(".xds.json"), identity=identity
    )
    header = f"# Generated by `agentmesh up` from {source}; rewritten on every run, do not edit.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Replica:
    """One running replica: its processes, its ports and what its sidecar last reported."""

    entry: str
    index: int
    ports: ReplicaPorts
    config: Path
    agent: Supervised
    sidecar: Supervised
    created_at: float
    state: ReplicaState = "starting"
    ever_ready: bool = False
    # The latest read of the sidecar's /metrics, and the read that opened the current rate window.
    scrape: Scrape | None = None
    window: Scrape | None = None
    scrape_error: str = ""

    @property
    def name(self) -> str:
        return f"{self.entry}[{self.index}]"

    @property
    def admin_url(self) -> str:
        return f"http://{reachable(self.ports.admin)}"

    @property
    def inbound(self) -> str:
        return reachable(self.ports.inbound)

    def observe(self, scrape: Scrape | str, now: float, *, grace: float = STARTING_GRACE) -> None:
        """Takes one read of the sidecar (or the reason it failed) and updates the replica's state.

        A replica never ready yet is "starting" for `grace` seconds, then "unready".
        """
        if isinstance(scrape, str):
            self.scrape_error = scrape
            healthy = False
        else:
            self.scrape, self.scrape_error = scrape, ""
            healthy = scrape.healthy is True
        if self.state == "draining":
            return
        if healthy:
            self.state, self.ever_ready = "ready", True
        elif not self.ever_ready and now - self.created_at < grace:
            self.state = "starting"
        else:
            self.state = "unready"


# Called with the entry name and a message whenever a replica is added, drained or removed.
EventSink = Callable[[str, str], None]


@dataclass
class AgentReplicas:
    """The replicas of one mesh entry, and how many it has been asked to run."""

    entry: MeshAgent
    bootstrap: Bootstrap
    supervisor: Supervisor
    base_dir: Path
    replicas_dir: Path
    log_dir: Path
    control_plane: str
    on_event: EventSink
    # The sidecar's command line; `--config <replica agent.yaml>` is appended.
    sidecar_command: tuple[str, ...] = (sys.executable, "-m", "agentmesh.cli", "sidecar")
    # Where join tokens come from; None: sidecars run without mTLS.
    join_tokens: JoinTokens | None = None
    live: list[Replica] = field(default_factory=list)
    draining: list[Replica] = field(default_factory=list)
    restarts: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    _drains: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def desired(self) -> int:
        return len(self.live)

    @property
    def ready(self) -> int:
        return sum(1 for r in self.live if r.state == "ready")

    def all(self) -> list[Replica]:
        return [*self.live, *self.draining]

    async def add(self) -> Replica:
        """Starts one more replica (agent, then sidecar) on the lowest free index."""
        used = {r.index for r in self.all()}
        index = next(i for i in range(len(used) + 1) if i not in used)
        ports = ReplicaPorts.for_replica(self.bootstrap, index)
        label = f"{self.name}-{index}"
        identity = self.identity(label)
        config = write_replica_config(
            self.bootstrap,
            ports,
            source=self.entry.sidecar,
            path=self.replicas_dir / f"{label}.yaml",
            control_plane=self.control_plane,
            identity=identity,
        )
        values = ports.placeholders(index)
        # An AGENTMESH_JOIN_TOKEN of up's own environment never reaches a sidecar: each start gets its own.
        sidecar_env = {JOIN_TOKEN_ENV: ""}
        agent = Supervised(
            f"{self.name}[{index}]/agent",
            self.entry.argv(values),
            self.base_dir,
            self.entry.environment(values),
            self.log_dir / f"{label}.agent.log",
        )
        sidecar = Supervised(
            f"{self.name}[{index}]/sidecar",
            [*self.sidecar_command, "--config", str(config.resolve())],
            self.base_dir,
            sidecar_env,
            self.log_dir / f"{label}.sidecar.log",
            prepare=self._join_token(sidecar_env, label) if identity is not None else None,
        )
        await self.supervisor.add(agent)
        await self.supervisor.add(sidecar)
        replica = Replica(self.name, index, ports, config, agent, sidecar, created_at=asyncio.get_running_loop().time())
        self.live.append(replica)
        return replica

    def identity(self, label: str) -> ReplicaIdentity | None:
        """The replica's mTLS settings: the entry's `mtls`, else agent.yaml's identity.mode; None when off."""
        if self.join_tokens is None or self.entry.mtls == "off":
            return None
        mode = self.entry.mtls or self.bootstrap.identity.mode
        return ReplicaIdentity(mode, self.replicas_dir / f"{label}.identity")

    def _join_token(self, env: dict[str, str], label: str) -> Callable[[], Awaitable[None]]:
        """Before each start of the sidecar: a fresh join token in its environment."""
        tokens = self.join_tokens
        agent = self.bootstrap.agent

        async def prepare() -> None:
            assert tokens is not None
            try:
                env[JOIN_TOKEN_ENV] = await tokens.create(
                    agent=agent.name, team=agent.team, description=f"agentmesh up: {label}"
                )
            except JoinTokenError as exc:
                # The sidecar still starts: with the identity it persisted, if any, else in plaintext (it says so).
                env[JOIN_TOKEN_ENV] = ""
                self.on_event(self.name, f"no join token for {label}: {exc}")

        return prepare

    def process_name(self, item: Supervised) -> str | None:
        """'replica 1 agent' or 'replica 1 sidecar' when `item` is one of these replicas' processes."""
        for replica in self.all():
            if item is replica.agent or item is replica.sidecar:
                return f"replica {replica.index} {'agent' if item is replica.agent else 'sidecar'}"
        return None

    async def scale_to(self, desired: int, reason: str) -> None:
        """Adds replicas, or drains the newest ones in the background, until `desired` are live."""
        before = self.desired
        if desired == before:
            return
        direction = "up" if desired > before else "down"
        self.on_event(self.name, f"scale {direction} {before} -> {desired}: {reason}")
        if desired > before:
            self.scale_ups += 1
            for _ in range(desired - before):
                try:
                    replica = await self.add()
                except OSError as exc:
                    self.on_event(self.name, f"cannot start another replica: {exc}")
                    return
                self.on_event(
                    self.name,
                    f"replica {replica.index} starting: inbound {replica.inbound}, admin {replica.admin_url}",
                )
            return
        self.scale_downs += 1
        for replica in sorted(self.live, key=lambda r: r.index, reverse=True)[: before - desired]:
            self.live.remove(replica)
            replica.state = "draining"
            self.draining.append(replica)
            task = asyncio.create_task(self._drain(replica))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _drain(self, replica: Replica) -> None:
        grace = self.bootstrap.limits.drain_timeout + DRAIN_MARGIN
        self.on_event(self.name, f"replica {replica.index} draining (sidecar first, then agent)")
        await self.supervisor.remove(replica.sidecar, grace)
        await self.supervisor.remove(replica.agent, DEFAULT_STOP_GRACE)
        self.draining.remove(replica)
        self.on_event(self.name, f"replica {replica.index} stopped")

    async def cancel_drains(self) -> None:
        """Stops waiting for drains (the supervisor's stop ends what they were stopping)."""
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
