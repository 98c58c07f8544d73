"""A whole mesh on one machine: what `agentmesh up` runs, from start to a clean stop.

In order: the embedded control plane (this run's admin token in
`.agentmesh/token`; its CA issues the sidecars' certificates); each entry's
minimum replicas, every sidecar enrolling with a join token minted for its
start (mutual TLS between sidecars) and registering with the control plane; a wait until every replica is ready
and registered; the mesh file's policies, validated against the registered
agents and stored as a policy version; Prometheus when it is installed.
Then, until SIGINT or SIGTERM, every tick reads each sidecar's `/metrics`,
feeds the autoscalers, refreshes the table and `.agentmesh/status.json`.
Crashed processes are restarted by the supervisor; every restart and scale
event is logged, counted and shown. Stopping drains the sidecars first, then
stops the agents, Prometheus and the control plane: nothing is left running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentmesh.cli.stat import Scrape, Sidecar, scrape_all
from agentmesh.config import ConfigError
from agentmesh.local import prometheus
from agentmesh.local.autoscale import Autoscaler
from agentmesh.local.control_plane import EmbeddedControlPlane
from agentmesh.local.identity import ClientIdentity, IdentityError, JoinTokenError, JoinTokens
from agentmesh.local.meshfile import MeshFile
from agentmesh.local.replicas import AgentReplicas, Replica, free_port, reachable
from agentmesh.local.state import StateDir, new_token
from agentmesh.local.status import AgentStatus, MeshStatus
from agentmesh.local.supervisor import Supervised, Supervisor
from agentmesh.local.table import AgentFigures, change_line, render_addresses, render_table, summarize
from sidecar.config.bootstrap import Bootstrap

log = logging.getLogger("agentmesh.local")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STARTUP = 3
DEFAULT_REFRESH = 2.0
DEFAULT_READY_TIMEOUT = 60.0
STARTUP_TICK = 0.25
RECENT_EVENTS = 8
PROMETHEUS_NAME = "prometheus"


@dataclass(frozen=True)
class UpOptions:
    """How `agentmesh up` runs: where its files go and how it shows the mesh."""

    mesh_path: Path
    state: StateDir
    tty: bool
    refresh: float = DEFAULT_REFRESH
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    prometheus: bool = True


class LocalMesh:
    """One run of a mesh file: the control plane, the replicas, Prometheus and the live view."""

    def __init__(
        self,
        mesh: MeshFile,
        bootstraps: dict[str, Bootstrap],
        options: UpOptions,
        *,
        echo: Callable[[str], None],
        error: Callable[[str], None] | None = None,
        clear: Callable[[], None] = lambda: None,
    ) -> None:
        self.mesh = mesh
        self.options = options
        self._echo = echo
        self._error = error or echo
        self._clear = clear
        self.supervisor = Supervisor(on_exit=self._exited)
        self.control_plane: EmbeddedControlPlane | None = None
        self.groups: list[AgentReplicas] = []
        self._bootstraps = bootstraps
        self._scalers: dict[str, Autoscaler] = {}
        self._events: collections.deque[str] = collections.deque(maxlen=RECENT_EVENTS)
        self._live_view = False
        self._printed: dict[str, AgentFigures] = {}
        self._rows: list[AgentFigures] = []
        self._policy_version = 0
        self._printed_version = 0
        self._prometheus: Supervised | None = None
        self.prometheus_url: str | None = None
        self._prometheus_note = "not started"
        self._control_plane_grpc = ""
        self._control_plane_http = ""
        self._client_identity: ClientIdentity | None = None

    # --- the run ----------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Runs until `stop` is set; returns the exit code."""
        state = self.options.state
        token = new_token()
        listen = self.mesh.control_plane
        self.control_plane = EmbeddedControlPlane(listen=listen.listen, http=listen.http, db=state.db, token=token)
        try:
            await self.control_plane.start()
        except OSError as exc:
            self._error(f"error: cannot start the control plane on {listen.listen} / {listen.http}: {exc}")
            return EXIT_STARTUP
        self._control_plane_grpc = reachable(self.control_plane.address(listen.listen))
        http_host = listen.http.rpartition(":")[0]
        self._control_plane_http = reachable(f"{http_host}:{self.control_plane.http_port}")
        try:
            # Only now that the ports are ours: another `agentmesh up` in this folder keeps its token and configs.
            state.save_token(token)
            state.reset_replicas()
            return await self._run(stop, token)
        finally:
            await self._stop()

    async def _run(self, stop: asyncio.Event, token: str) -> int:
        assert self.control_plane is not None
        state = self.options.state
        self._echo(f"control plane   {self._control_plane_grpc} (gRPC)  http://{self._control_plane_http}")
        self._echo(f"admin token     {token}")
        self._echo(f"                (saved in {state.token}: export AGENTMESH_TOKEN=$(cat {state.token}))")
        base_dir = self.options.mesh_path.resolve().parent
        join_tokens = JoinTokens(address=self._control_plane_grpc, admin_token=token)
        await self._start_client_identity(join_tokens)
        for entry in self.mesh.agents:
            group = AgentReplicas(
                entry=entry,
                bootstrap=self._bootstraps[entry.name],
                supervisor=self.supervisor,
                base_dir=base_dir,
                replicas_dir=state.replicas,
                log_dir=state.logs,
                control_plane=self._control_plane_grpc,
                on_event=self._event,
                join_tokens=join_tokens,
            )
            self.groups.append(group)
            replicas = entry.replicas
            if replicas.max > replicas.min:
                self._scalers[entry.name] = Autoscaler(
                    minimum=replicas.min,
                    maximum=replicas.max,
                    target=replicas.target_in_flight or self.mesh.autoscale.target_in_flight,
                    up_checks=self.mesh.autoscale.scale_up_checks,
                    down_checks=self.mesh.autoscale.scale_down_checks,
                )
        processes = sum(entry.replicas.min for entry in self.mesh.agents) * 2
        self._echo(f"starting {len(self.groups)} agents ({processes} processes); logs in {state.logs}/")
        for group in self.groups:
            for _ in range(group.entry.replicas.min):
                try:
                    await group.add()
                except OSError as exc:
                    self._error(f"error: cannot start {group.name}: {exc}")
                    return EXIT_STARTUP
        ready = await self._wait_ready(stop)
        if stop.is_set():
            return EXIT_OK
        if not await self._apply_policies():
            return EXIT_CONFIG if ready else EXIT_STARTUP
        await self._start_prometheus()
        await self._tick(render=False, scale=False)
        self._start_windows()
        self._live_view = True
        self._show(first=True)
        await self._loop(stop)
        return EXIT_OK if ready else EXIT_STARTUP

    async def _start_client_identity(self, join_tokens: JoinTokens) -> None:
        """Enrolls the operator's identity for `agentmesh call` (strict sidecars accept only mesh certificates)."""
        client = ClientIdentity(
            join_tokens, address=self._control_plane_grpc, directory=self.options.state.client_identity
        )
        try:
            material = await client.start()
        except (JoinTokenError, IdentityError) as exc:
            self._error(f"warning: no client identity for `agentmesh call`: {exc}")
            return
        self._client_identity = client
        self._echo(f"client identity {material.spiffe_id.uri} (for `agentmesh call`, in {client.directory})")

    async def _wait_ready(self, stop: asyncio.Event) -> bool:
        """Waits until every replica is ready and registered with the control plane; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ready_timeout
        announced: set[str] = set()
        while not stop.is_set():
            await self._tick(render=False, scale=False)
            waiting = []
            for group in self.groups:
                for replica in group.live:
                    if replica.state == "ready" and self._registered(group, replica):
                        if replica.name not in announced:
                            announced.add(replica.name)
                            self._echo(f"  {replica.name} ready: inbound {replica.inbound}, admin {replica.admin_url}")
                    else:
                        waiting.append(replica)
            if not waiting:
                return True
            if loop.time() >= deadline:
                for replica in waiting:
                    reason = replica.scrape_error or (
                        "not registered with the control plane" if replica.state == "ready" else "agent not healthy"
                    )
                    self._error(f"  {replica.name} NOT READY after {self.options.ready_timeout:g}s: {reason}")
                return False
            await _sleep_or_stop(stop, STARTUP_TICK)
        return False

    def _registered(self, group: AgentReplicas, replica: Replica) -> bool:
        assert self.control_plane is not None
        return self.control_plane.registered(group.bootstrap.agent.name, replica.inbound)

    async def _apply_policies(self) -> bool:
        assert self.control_plane is not None
        paths = self.mesh.policies
        if not paths:
            self._policy_version = self.control_plane.policy_version()
            self._echo(f"policy version {self._policy_version} (the mesh file lists no policies)")
            return True
        try:
            outcome = await self.control_plane.apply(paths, message=f"agentmesh up -f {self.options.mesh_path}")
        except ConfigError as exc:
            self._error("error: the mesh file's policies do not fit the running agents; nothing was applied:")
            for issue in exc.issues:
                self._error(f"error: {issue}")
            return False
        for warning in outcome.warnings:
            self._error(f"warning: {warning}")
        result = outcome.result
        self._policy_version = result.version
        if result.created:
            changes = [f"+{r}" for r in result.added] + [f"~{r}" for r in result.changed]
            self._echo(f"policy version {result.version}: {', '.join(changes)}")
        else:
            self._echo(f"policy version {result.version}: the mesh file's {outcome.documents} policies already stored")
        return True

    async def _start_prometheus(self) -> None:
        binary = prometheus.find_prometheus() if self.options.prometheus else None
        if binary is None:
            self._prometheus_note = (
                "not started (disabled)" if not self.options.prometheus else "not started (no `prometheus` on PATH)"
            )
            self._echo(f"prometheus      {self._prometheus_note}")
            return
        state = self.options.state
        config = prometheus.write_config(state.prometheus_config, self._control_plane_http)
        state.prometheus_data.mkdir(parents=True, exist_ok=True)
        listen = f"127.0.0.1:{free_port()}"
        self._prometheus = Supervised(
            PROMETHEUS_NAME,
            prometheus.argv(binary, config=config, storage=state.prometheus_data, listen=listen),
            state.root,
            {},
            state.logs / "prometheus.log",
        )
        try:
            await self.supervisor.add(self._prometheus)
        except OSError as exc:
            self._prometheus = None
            self._prometheus_note = f"not started ({exc})"
            self._echo(f"prometheus      {self._prometheus_note}")
            return
        self.prometheus_url = f"http://{listen}"
        self._echo(f"prometheus      {self.prometheus_url} (config {config})")

    async def _loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.mesh.autoscale.interval
        tick = min(self.options.refresh, interval)
        last_render = last_scale = loop.time()
        while not await _sleep_or_stop(stop, tick):
            now = loop.time()
            # A little slack so a tick that wakes a hair early still counts.
            render = now - last_render >= self.options.refresh - tick / 4
            scale = now - last_scale >= interval - tick / 4
            last_render = now if render else last_render
            last_scale = now if scale else last_scale
            await self._tick(render=render, scale=scale)

    async def _tick(self, *, render: bool, scale: bool) -> None:
        """Reads every sidecar once, then scales, renders and writes the status as asked."""
        now = asyncio.get_running_loop().time()
        replicas = [r for group in self.groups for r in group.all()]
        if replicas:
            reads = await asyncio.to_thread(_read_all, replicas)
            for replica, read in zip(replicas, reads, strict=True):
                replica.observe(read, now, grace=self.options.ready_timeout)
        if scale:
            await self._autoscale()
        self._rows = [summarize(group) for group in self.groups]
        if self.control_plane is not None:
            self._policy_version = self.control_plane.policy_version()
        if render:
            self._start_windows()
            self._show(first=False)
        self._write_status()

    async def _autoscale(self) -> None:
        for group in self.groups:
            scaler = self._scalers.get(group.name)
            if scaler is None:
                continue
            in_flight = [r.scrape.in_flight for r in group.live if r.state == "ready" and r.scrape is not None]
            settled = not any(r.state == "starting" for r in group.live)
            decision = scaler.observe(in_flight, group.desired, settled=settled)
            if decision is not None:
                # scale_to reports the event (log, output, counters).
                await group.scale_to(decision.desired, decision.reason)

    def _start_windows(self) -> None:
        for group in self.groups:
            for replica in group.live:
                replica.window = replica.scrape

    # --- output -----------------------------------------------------------------------------------------------

    def _event(self, name: str, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')}  {name}  {message}"
        log.info("%s: %s", name, message)
        self._events.append(line)
        if not (self._live_view and self.options.tty):
            self._echo(line)

    def _exited(self, item: Supervised, code: int, delay: float) -> None:
        name, what = item.name, item.name
        for group in self.groups:
            process = group.process_name(item)
            if process is not None:
                group.restarts += 1
                name, what = group.name, process
                break
        self._event(name, f"{what} exited with code {code}; restarting in {delay:.1f}s (restart {item.restarts})")

    def _header(self) -> list[str]:
        source = self.options.mesh_path
        return [
            f"agentmesh up -f {source}   policy version {self._policy_version}   {time.strftime('%H:%M:%S')}",
            f"control plane   {self._control_plane_grpc} (gRPC: xDS, registration, admin API)"
            f"   http://{self._control_plane_http} (/metrics, /sd/prometheus)",
            f"prometheus      {self.prometheus_url or self._prometheus_note}",
            f"admin token     export AGENTMESH_TOKEN=$(cat {shlex.quote(str(self.options.state.token))})",
        ]

    def _hints(self) -> list[str]:
        control_plane = ""
        if self._control_plane_grpc != "127.0.0.1:15010":
            control_plane = f" --control-plane {self._control_plane_grpc}"
        mesh = shlex.quote(str(self.options.mesh_path))
        return [
            "Try:  agentmesh call AGENT METHOD --json '{...}' -f " + mesh,
            f"      agentmesh stat -f {mesh}    agentmesh agents{control_plane}    agentmesh policy get{control_plane}",
        ]

    def _show(self, *, first: bool) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.options.tty:
            self._clear()
            lines = [
                *self._header(),
                "",
                render_table(self._rows),
                "",
                render_addresses(self.groups),
                "",
                *(["Recent events:", *self._events, ""] if self._events else []),
                *self._hints(),
                "Ctrl-C to stop.",
            ]
            self._echo("\n".join(lines))
            return
        if first:
            self._echo("\n".join(["", render_table(self._rows), "", render_addresses(self.groups), "", *self._hints()]))
            self._echo("Ctrl-C to stop.")
            self._printed = {row.name: row for row in self._rows}
            self._printed_version = self._policy_version
            return
        if self._policy_version != self._printed_version:
            self._printed_version = self._policy_version
            self._echo(f"{stamp}  policy version {self._policy_version}")
        for row in self._rows:
            line = change_line(self._printed.get(row.name), row, stamp)
            if line is not None:
                self._echo(line)
                self._printed[row.name] = row

    def _write_status(self) -> None:
        rows = {row.name: row for row in self._rows}
        status = MeshStatus(
            pid=os.getpid(),
            mesh_file=str(self.options.mesh_path.resolve()),
            control_plane={
                "grpc": self._control_plane_grpc,
                "http": f"http://{self._control_plane_http}",
                "token_file": str(self.options.state.token.resolve()),
                "db": str(self.options.state.db.resolve()),
            },
            policy_version=self._policy_version,
            prometheus=self.prometheus_url,
            prometheus_pid=self._prometheus.pid if self._prometheus is not None else None,
            agents=tuple(AgentStatus.of(group, rows[group.name]) for group in self.groups if group.name in rows),
        )
        try:
            status.write(self.options.state.status)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.options.state.status, exc)

    # --- stopping ---------------------------------------------------------------------------------------------

    async def _stop(self) -> None:
        self._echo("stopping…")
        for group in self.groups:
            await group.cancel_drains()
        sidecars = [r.sidecar for group in self.groups for r in group.all()]
        grace = max((g.bootstrap.limits.drain_timeout for g in self.groups), default=0.0) + 5.0
        # Sidecars first: they stop taking calls and finish the ones in flight while their agents still run.
        await asyncio.gather(*(self.supervisor.remove(sidecar, grace) for sidecar in sidecars))
        await self.supervisor.stop()
        if self._client_identity is not None:
            await self._client_identity.stop()
        if self.control_plane is not None:
            await self.control_plane.stop()
        self.options.state.status.unlink(missing_ok=True)
        self._echo("stopped.")


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps `seconds`, or less when `stop` is set; True when it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _read_all(replicas: Sequence[Replica]) -> list[Scrape | str]:
    """One read of each replica's sidecar /metrics, all at once: a Scrape, or why it failed."""
    return scrape_all([Sidecar(r.admin_url) for r in replicas])
