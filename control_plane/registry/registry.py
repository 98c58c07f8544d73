"""The in-memory registry of agent instances: who runs where, and whether it is healthy.

Sidecars register their instance (agent, version, team, address, services,
manifest), heartbeat with their health, and deregister on shutdown; instances
whose heartbeats stop are dropped by `expire()` after the TTL. The translator
reads it (`agents()`, `versions()`, `instances()`, `implementations()`) and
rebuilds snapshots when it changes, either through a listener callback
(`subscribe`) or by awaiting `wait_for_change(revision)`.

Only changes that matter for routing bump the revision: a heartbeat that
leaves health as it was refreshes the instance's timestamp silently.

Pure and single-threaded: no grpc, no I/O; call it from the event loop thread.
The clock is injected (monotonic seconds by default).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from control_plane.registry.instances import (
    AgentInstance,
    UnknownInstanceError,
    check_name,
    check_service,
    split_address,
)

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TTL = 30.0


class ChangeKind(enum.Enum):
    REGISTERED = "registered"
    UPDATED = "updated"  # re-registered with different details, or health changed
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"


@dataclass(frozen=True)
class RegistryChange:
    """One change, with the instance as it is after it (or as it was, when removed)."""

    kind: ChangeKind
    instance: AgentInstance
    revision: int


RegistryListener = Callable[[RegistryChange], None]


class Registry:
    """Agent instances by id, with change notification.

    An address belongs to one instance at a time: registering an address that
    another instance id holds replaces that instance (a restarted sidecar that
    changed its id, or a new agent on a reused port). The default instance id
    is the address.
    """

    def __init__(self, *, ttl: float = DEFAULT_HEARTBEAT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self._clock = clock
        self._instances: dict[str, AgentInstance] = {}
        self._revision = 0
        self._listeners: list[RegistryListener] = []
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def revision(self) -> int:
        """Increases by one on every change; pass it to `wait_for_change`."""
        return self._revision

    def register(
        self,
        *,
        agent: str,
        version: str,
        address: str,
        team: str = "",
        services: Iterable[str] = (),
        manifest: bytes | None = None,
        healthy: bool = True,
        zone: str = "",
        instance_id: str | None = None,
        admin_address: str = "",
        mtls: bool = False,
        spiffe_id: str = "",
    ) -> AgentInstance:
        """Adds or refreshes an instance (registration counts as a heartbeat); raises RegistryError."""
        split_address(address)
        instance = AgentInstance(
            instance_id=instance_id or address,
            agent=check_name("agent", agent),
            version=check_name("version", version),
            team=team,
            address=address,
            services=tuple(sorted({check_service(s) for s in services})),
            healthy=healthy,
            last_heartbeat=self._clock(),
            registered_at=self._clock(),
            manifest=manifest,
            zone=zone,
            admin_address=admin_address,
            mtls=mtls,
            spiffe_id=spiffe_id,
        )
        for other in list(self._instances.values()):
            if other.address == address and other.instance_id != instance.instance_id:
                del self._instances[other.instance_id]
                self._changed(ChangeKind.DEREGISTERED, other)
        previous = self._instances.get(instance.instance_id)
        if previous is None:
            self._instances[instance.instance_id] = instance
            self._changed(ChangeKind.REGISTERED, instance)
            return instance
        instance = replace(instance, registered_at=previous.registered_at)
        self._instances[instance.instance_id] = instance
        if replace(previous, last_heartbeat=instance.last_heartbeat) != instance:
            self._changed(ChangeKind.UPDATED, instance)
        return instance

    def heartbeat(self, instance_id: str, healthy: bool) -> AgentInstance:
        """Records a heartbeat; a health change notifies listeners. Raises UnknownInstanceError."""
        previous = self._instances.get(instance_id)
        if previous is None:
            raise UnknownInstanceError(instance_id)
        instance = replace(previous, healthy=healthy, last_heartbeat=self._clock())
        self._instances[instance_id] = instance
        if previous.healthy != healthy:
            self._changed(ChangeKind.UPDATED, instance)
        return instance

    def deregister(self, instance_id: str) -> AgentInstance | None:
        """Removes an instance; returns it, or None when it was not registered."""
        instance = self._instances.pop(instance_id, None)
        if instance is not None:
            self._changed(ChangeKind.DEREGISTERED, instance)
        return instance

    def expire(self, now: float | None = None) -> list[AgentInstance]:
        """Drops instances whose last heartbeat is more than `ttl` before `now`; returns them."""
        at = self._clock() if now is None else now
        expired = [i for i in self._instances.values() if at - i.last_heartbeat > self.ttl]
        for instance in expired:
            del self._instances[instance.instance_id]
            log.warning(
                "agent instance expired: no heartbeat within the TTL",
                extra={"instance_id": instance.instance_id, "agent_name": instance.agent, "ttl_s": self.ttl},
            )
            self._changed(ChangeKind.EXPIRED, instance)
        return expired

    def get(self, instance_id: str) -> AgentInstance | None:
        return self._instances.get(instance_id)

    def agents(self) -> list[str]:
        """Names of agents with at least one instance, sorted."""
        return sorted({i.agent for i in self._instances.values()})

    def versions(self, agent: str) -> list[str]:
        """Versions of one agent with at least one instance, sorted."""
        return sorted({i.version for i in self._instances.values() if i.agent == agent})

    def instances(self, agent: str | None = None, version: str | None = None) -> list[AgentInstance]:
        """Instances, optionally of one agent and version, ordered by (agent, version, address)."""
        return sorted(
            (
                i
                for i in self._instances.values()
                if (agent is None or i.agent == agent) and (version is None or i.version == version)
            ),
            key=_order,
        )

    def implementations(self, service: str) -> list[AgentInstance]:
        """Instances implementing a gRPC service (a capability), healthy or not."""
        return sorted((i for i in self._instances.values() if i.implements(service)), key=_order)

    def services(self) -> list[str]:
        """Every service some instance implements, sorted."""
        return sorted({s for i in self._instances.values() for s in i.services})

    def subscribe(self, listener: RegistryListener) -> Callable[[], None]:
        """Calls `listener(change)` synchronously after each change; returns an unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def wait_for_change(self, since: int) -> int:
        """Returns the current revision as soon as it is greater than `since`."""
        while self._revision <= since:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._revision

    def _changed(self, kind: ChangeKind, instance: AgentInstance) -> None:
        self._revision += 1
        change = RegistryChange(kind, instance, self._revision)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("registry listener failed", extra={"change": kind.value})
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _order(instance: AgentInstance) -> tuple[str, str, str]:
    return (instance.agent, instance.version, instance.address)
