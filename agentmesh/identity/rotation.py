"""`Rotator`: the `IdentitySource` that enrolls, persists and renews a workload's certificate.

Used by the sidecar and by `agentmesh identity-agent`. Its whole interface:

    rotator = Rotator("127.0.0.1:15010", join_token=token, directory=path, registry=metrics)
    material = await rotator.start()      # the first certificate (or raise IdentityError)
    rotator.current(); rotator.subscribe(callback)   # IdentitySource
    await rotator.stop()

or `await rotator.run()` as a task that does the same and never raises (it
logs and retries until it has a certificate, then keeps it fresh until
cancelled); `last_error` says why it has none yet.

What it does:

1. **Start**: material persisted in `directory` by an earlier run is reused
   while it is unexpired (renewed at once if past its renewal point);
   otherwise the workload enrolls with the join token (which may be None when
   persisted material is expected). A refused enrollment (bad, expired,
   revoked or used-up token) is not retried by `start()`; an unreachable
   control plane is, until `start_timeout`.
2. **Renewal**: with a NEW key each time, at `renew_fraction` (default 0.5,
   +-`jitter` of it at random) of the lifetime the certificate had left when
   it arrived (so a certificate backdated for clock skew does not look half
   used). `renew_at(material) -> datetime` replaces that rule.
3. **Failures**: retried with exponential backoff (0.5 s doubling to 30 s, never
   sleeping past a quarter of the time the certificate has left) until it
   expires; after that the join token, if any, is used to enroll again.
4. Every new material is persisted (files.py) first, then published: `current()`
   returns it and every subscriber is called with it, on the event loop's thread.
   `generation` counts up from 1 for each material this Rotator publishes.

Metrics on the registry passed in (none when `registry` is None, for a caller
that exports its own): `agentmesh_identity_certificate_expiry_timestamp_seconds`
and `agentmesh_identity_rotations_total{result}` (result success or failure:
each certificate obtained, including the first, or each failed attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentmesh.identity.client import DEFAULT_TIMEOUT, IdentityClient, IdentityError
from agentmesh.identity.control_plane_tls import ControlPlaneTarget
from agentmesh.identity.files import MaterialFileError, read_material, write_material
from agentmesh.identity.keys import PrivateKey, generate_key
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId

log = logging.getLogger(__name__)

DEFAULT_RENEW_FRACTION: Final = 0.5
DEFAULT_JITTER: Final = 0.05
DEFAULT_START_TIMEOUT: Final = 30.0
INITIAL_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
# Never schedule the next attempt sooner than this (a certificate shorter than expected must not spin).
MIN_DELAY: Final = 0.1

Clock = Callable[[], datetime]
Subscriber = Callable[[IdentityMaterial], None]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RotatorStats:
    """The Rotator's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.expiry = Gauge(
            "agentmesh_identity_certificate_expiry_timestamp_seconds",
            "When the current workload certificate expires (Unix time); 0 before the first one.",
            registry=registry,
        )
        self.rotations = Counter(
            "agentmesh_identity_rotations",
            "Certificates obtained (enrollments and renewals, result=success) and failed attempts (result=failure).",
            ["result"],
            registry=registry,
        )
        self.success = self.rotations.labels(result="success")
        self.failure = self.rotations.labels(result="failure")


class Rotator:
    """Keeps a workload's certificate fresh; an `IdentitySource` (agentmesh/identity/material.py).

    `control_plane` is the control plane's gRPC address (a plaintext channel is made and closed here), a
    `ControlPlaneTarget` (plaintext or TLS to its secure port; the channel is made and closed here) or a
    grpc.aio channel the caller owns. `expected_id`, when given, is the identity the workload must hold: persisted
    material of another identity is ignored, and a certificate for another identity is an error.
    """

    def __init__(
        self,
        control_plane: str | ControlPlaneTarget | grpc.aio.Channel,
        *,
        join_token: str | None,
        directory: str | Path | None,
        registry: CollectorRegistry | None = None,
        expected_id: SpiffeId | None = None,
        renew_fraction: float = DEFAULT_RENEW_FRACTION,
        jitter: float = DEFAULT_JITTER,
        renew_at: Callable[[IdentityMaterial], datetime] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        key_factory: Callable[[], PrivateKey] = generate_key,
        clock: Clock = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        if not 0 <= jitter < min(renew_fraction, 1 - renew_fraction):
            raise ValueError("jitter must be >= 0 and keep the renewal point inside the certificate's lifetime")
        self._target = control_plane
        self._join_token = join_token
        self._directory = Path(directory) if directory is not None else None
        self._stats = RotatorStats(registry) if registry is not None else None
        self._expected = expected_id
        self._fraction = renew_fraction
        self._jitter = jitter
        self._renew_at = renew_at
        self._timeout = timeout
        self._key_factory = key_factory
        self._clock = clock
        self._rng = rng or random.Random()
        self._current: IdentityMaterial | None = None
        self._next_renewal: datetime | None = None
        self._subscribers: list[Subscriber] = []
        self._channel: grpc.aio.Channel | None = None
        self._client: IdentityClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        target = str(self._target) if isinstance(self._target, str | ControlPlaneTarget) else "<channel>"
        return f"Rotator(control_plane={target!r}, directory={self._directory}, current={self._describe()})"

    # --- IdentitySource ---------------------------------------------------------------------------------------------

    def current(self) -> IdentityMaterial | None:
        return self._current

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    @property
    def next_renewal(self) -> datetime | None:
        """When the next renewal (or retry) is due; None before the first certificate."""
        return self._next_renewal

    # --- running ----------------------------------------------------------------------------------------------------

    async def start(self, *, start_timeout: float = DEFAULT_START_TIMEOUT) -> IdentityMaterial:
        """Gets the first certificate and starts renewing in a task; raises IdentityError when it cannot.

        A refusal raises at once; an unreachable control plane is retried until `start_timeout` seconds pass.
        """
        if self._task is not None:
            raise RuntimeError("the rotator is already started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        backoff = INITIAL_BACKOFF
        while self._current is None:
            try:
                await self._first()
            except IdentityError as error:
                self._failed(error)
                if not error.retryable or loop.time() + backoff > deadline:
                    await self._close_channel()
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._task = asyncio.ensure_future(self._renew_forever())
        assert self._current is not None
        return self._current

    async def run(self) -> None:
        """Gets the first certificate (retrying every failure) and renews it until cancelled; never raises."""
        backoff = INITIAL_BACKOFF
        try:
            while self._current is None:
                try:
                    await self._first()
                except Exception as exc:
                    self._failed(_as_identity_error(exc, "enroll"))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            await self._renew_forever()
        finally:
            await self._close_channel()

    async def stop(self) -> None:
        """Stops renewing (the current material stays available) and closes the channel it made."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_channel()

    # --- steps ------------------------------------------------------------------------------------------------------

    async def _first(self) -> None:
        """Publishes persisted material when usable, else enrolls; raises IdentityError."""
        persisted = self._persisted()
        if persisted is not None:
            self._publish(persisted, received=persisted.not_before, persist=False)
            log.info(
                "reusing the persisted certificate",
                extra={
                    "spiffe_id": persisted.spiffe_id.uri,
                    "not_after": persisted.not_after.isoformat(),
                    "directory": str(self._directory),
                },
            )
            return
        await self._enroll()

    def _persisted(self) -> IdentityMaterial | None:
        if self._directory is None:
            return None
        try:
            material = read_material(self._directory)
        except MaterialFileError as exc:
            log.warning("ignoring the persisted identity", extra={"reason": str(exc)})
            return None
        if material is None:
            return None
        if material.not_after <= self._clock():
            log.info(
                "the persisted certificate has expired",
                extra={"spiffe_id": material.spiffe_id.uri, "not_after": material.not_after.isoformat()},
            )
            return None
        if self._expected is not None and material.spiffe_id != self._expected:
            log.warning(
                "ignoring a persisted certificate of another identity",
                extra={"spiffe_id": material.spiffe_id.uri, "expected": self._expected.uri},
            )
            return None
        return material

    async def _enroll(self) -> None:
        if not self._join_token:
            where = f" in {self._directory}" if self._directory is not None else ""
            raise IdentityError(
                "enroll",
                f"no join token, and no unexpired certificate{where}: create one with `agentmesh token create`",
            )
        material = await self._with_client(lambda client: client.enroll(self._join_token or "", self._key_factory()))
        self._check_identity("enroll", material)
        self._publish(material, received=self._clock(), persist=True)
        log.info(
            "enrolled",
            extra={"spiffe_id": material.spiffe_id.uri, "not_after": material.not_after.isoformat()},
        )

    async def _renew(self, current: IdentityMaterial) -> None:
        material = await self._with_client(lambda client: client.renew(current, self._key_factory()))
        self._publish(material, received=self._clock(), persist=True)
        log.info(
            "certificate renewed",
            extra={"spiffe_id": material.spiffe_id.uri, "not_after": material.not_after.isoformat()},
        )

    async def _renew_forever(self) -> None:
        backoff = INITIAL_BACKOFF
        while True:
            due = self._next_renewal or self._clock()
            await asyncio.sleep(max(0.0, (due - self._clock()).total_seconds()))
            current = self._current
            assert current is not None
            try:
                if current.not_after > self._clock():
                    await self._renew(current)
                else:
                    await self._enroll()
            except Exception as exc:
                self._failed(_as_identity_error(exc, "renew"))
                self._next_renewal = self._clock() + timedelta(seconds=self._retry_delay(backoff, current))
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = INITIAL_BACKOFF

    def _retry_delay(self, backoff: float, current: IdentityMaterial) -> float:
        left = (current.not_after - self._clock()).total_seconds()
        delay = min(backoff, left / 4) if left > 0 else backoff
        return max(MIN_DELAY, delay * (1 + self._rng.uniform(-0.1, 0.1)))

    async def _with_client(self, call: Callable[[IdentityClient], Awaitable[IdentityMaterial]]) -> IdentityMaterial:
        if self._client is None:
            if isinstance(self._target, str):
                self._channel = grpc.aio.insecure_channel(self._target)
                self._client = IdentityClient(self._channel, timeout=self._timeout)
            elif isinstance(self._target, ControlPlaneTarget):
                self._channel = self._target.aio_channel()
                self._client = IdentityClient(self._channel, timeout=self._timeout)
            else:
                self._client = IdentityClient(self._target, timeout=self._timeout)
        return await call(self._client)

    async def _close_channel(self) -> None:
        channel, self._channel, self._client = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    def _check_identity(self, operation: str, material: IdentityMaterial) -> None:
        if self._expected is not None and material.spiffe_id != self._expected:
            raise IdentityError(
                operation,
                f"the join token is for {material.spiffe_id}, but this workload is {self._expected}",
            )

    # --- publishing -------------------------------------------------------------------------------------------------

    def _publish(self, material: IdentityMaterial, *, received: datetime, persist: bool) -> None:
        self._generation += 1
        material = dataclasses.replace(material, generation=self._generation)
        if persist and self._directory is not None:
            try:
                write_material(self._directory, material)
            except OSError as exc:
                log.error(
                    "cannot persist the certificate; a restart will need a join token",
                    extra={"directory": str(self._directory), "error": str(exc)},
                )
        self._current = material
        self._next_renewal = max(self._renewal_point(material, received), self._clock() + timedelta(seconds=MIN_DELAY))
        self.last_error = None
        if self._stats is not None:
            self._stats.expiry.set(material.not_after.timestamp())
            if persist:
                self._stats.success.inc()
        for callback in list(self._subscribers):
            try:
                callback(material)
            except Exception:
                log.exception("an identity subscriber failed", extra={"spiffe_id": material.spiffe_id.uri})

    def _renewal_point(self, material: IdentityMaterial, received: datetime) -> datetime:
        if self._renew_at is not None:
            return self._renew_at(material)
        start = max(received, material.not_before)
        fraction = self._fraction + self._rng.uniform(-self._jitter, self._jitter)
        return start + (material.not_after - start) * fraction

    def _failed(self, error: IdentityError) -> None:
        self.last_error = str(error)
        if self._stats is not None:
            self._stats.failure.inc()
        current = self._current
        log.warning(
            "could not get a certificate" if current is None else "could not renew the certificate",
            extra={
                "error": str(error),
                "retryable": error.retryable,
                "not_after": current.not_after.isoformat() if current is not None else "",
            },
        )

    def _describe(self) -> str:
        current = self._current
        if current is None:
            return "none"
        return f"{current.spiffe_id.uri} until {current.not_after.isoformat()} (generation {current.generation})"


def _as_identity_error(error: Exception, operation: str) -> IdentityError:
    """IdentityError as it is; anything else (a bug) is logged with its traceback and wrapped."""
    if isinstance(error, IdentityError):
        return error
    log.error("unexpected error while getting a certificate", exc_info=error)
    return IdentityError(operation, repr(error))
