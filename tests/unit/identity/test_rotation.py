"""The Rotator against an in-process Identity service: enroll, persist, reuse, renew with new keys, failures."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from agentmesh.identity.client import IdentityError
from agentmesh.identity.files import read_material
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.rotation import Rotator
from agentmesh.identity.spiffe import SpiffeId
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.join_tokens import JoinTokenStore
from tests.integration.procs import free_port
from tests.unit.identity.conftest import IdentityServer, start_identity_server, stop_identity_server

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")


def _soon(material: IdentityMaterial) -> dt.datetime:
    """Renew a quarter second after the certificate arrives."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.25)


class Published:
    """Collects what a Rotator publishes; `until(n)` waits for generation n."""

    def __init__(self, rotator: Rotator) -> None:
        self.materials: list[IdentityMaterial] = []
        self._changed = asyncio.Event()
        rotator.subscribe(self._add)

    def _add(self, material: IdentityMaterial) -> None:
        self.materials.append(material)
        self._changed.set()

    async def until(self, generation: int) -> IdentityMaterial:
        async with asyncio.timeout(30):
            while not self.materials or self.materials[-1].generation < generation:
                self._changed.clear()
                await self._changed.wait()
        return self.materials[-1]


@pytest.fixture
async def stopped() -> AsyncIterator[list[Rotator]]:
    """Rotators to stop at the end of a test."""
    rotators: list[Rotator] = []
    yield rotators
    for rotator in rotators:
        await rotator.stop()


async def _eventually(check: Callable[[], bool]) -> None:
    for _ in range(600):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 30s")


def _metric(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("agentmesh_identity_rotations_total", {"result": result}) or 0.0


async def test_enrolls_persists_and_renews_with_new_keys(
    identity_server: IdentityServer, tmp_path: Path, stopped: list[Rotator]
) -> None:
    registry = CollectorRegistry()
    rotator = Rotator(
        identity_server.address,
        join_token=identity_server.token(),
        directory=tmp_path / "id",
        registry=registry,
        renew_at=_soon,
    )
    stopped.append(rotator)
    published = Published(rotator)
    first = await rotator.start()
    assert first.spiffe_id == RESEARCHER and first.generation == 1
    assert rotator.current() == first
    last = await published.until(3)
    keys = {m.private_key_pem for m in published.materials}
    assert len(keys) == len(published.materials) >= 3
    on_disk = read_material(tmp_path / "id")
    assert on_disk is not None and on_disk.private_key_pem == rotator.current().private_key_pem  # type: ignore[union-attr]
    assert _metric(registry, "success") >= 3 and _metric(registry, "failure") == 0
    expiry = registry.get_sample_value("agentmesh_identity_certificate_expiry_timestamp_seconds")
    assert expiry is not None and expiry >= last.not_after.timestamp() - 1
    assert identity_server.issued("enroll") == 1 and identity_server.issued("renew") >= 2


async def test_default_renewal_point_is_half_the_remaining_lifetime(
    identity_server: IdentityServer, stopped: list[Rotator]
) -> None:
    rotator = Rotator(identity_server.address, join_token=identity_server.token(), directory=None, jitter=0)
    stopped.append(rotator)
    before = dt.datetime.now(dt.UTC)
    material = await rotator.start()
    after = dt.datetime.now(dt.UTC)
    due = rotator.next_renewal
    assert due is not None
    # Received between before and after; half of what was left then (the backdated minute does not count).
    assert before + (material.not_after - before) / 2 <= due <= after + (material.not_after - after) / 2


async def test_reuses_persisted_material_without_a_token(
    identity_server: IdentityServer, tmp_path: Path, stopped: list[Rotator]
) -> None:
    first = Rotator(identity_server.address, join_token=identity_server.token(), directory=tmp_path)
    stopped.append(first)
    enrolled = await first.start()
    await first.stop()
    again = Rotator(identity_server.address, join_token=None, directory=tmp_path, expected_id=RESEARCHER)
    stopped.append(again)
    reused = await again.start()
    assert reused.certificate_chain_pem == enrolled.certificate_chain_pem
    assert identity_server.issued("enroll") == 1 and identity_server.issued("renew") == 0


async def test_persisted_material_past_its_renewal_point_is_renewed_at_once(
    identity_server: IdentityServer, tmp_path: Path, stopped: list[Rotator]
) -> None:
    first = Rotator(identity_server.address, join_token=identity_server.token(), directory=tmp_path)
    stopped.append(first)
    enrolled = await first.start()
    await first.stop()
    again = Rotator(identity_server.address, join_token=None, directory=tmp_path, renew_at=lambda m: m.not_before)
    stopped.append(again)
    published = Published(again)
    await again.start()
    renewed = await published.until(2)
    assert renewed.spiffe_id == enrolled.spiffe_id
    assert renewed.private_key_pem != enrolled.private_key_pem


async def test_persisted_material_of_another_identity_is_ignored(
    identity_server: IdentityServer, tmp_path: Path, stopped: list[Rotator]
) -> None:
    first = Rotator(identity_server.address, join_token=identity_server.token(), directory=tmp_path)
    stopped.append(first)
    await first.start()
    await first.stop()
    writer = SpiffeId("agentmesh.local", "writing", "writer")
    again = Rotator(
        identity_server.address,
        join_token=identity_server.token("writer", "writing"),
        directory=tmp_path,
        expected_id=writer,
    )
    stopped.append(again)
    assert (await again.start()).spiffe_id == writer


async def test_a_token_for_another_identity_is_an_error(
    identity_server: IdentityServer, stopped: list[Rotator]
) -> None:
    writer = SpiffeId("agentmesh.local", "writing", "writer")
    rotator = Rotator(identity_server.address, join_token=identity_server.token(), directory=None, expected_id=writer)
    stopped.append(rotator)
    with pytest.raises(IdentityError, match=r"the join token is for .*researcher, but this workload is .*writer"):
        await rotator.start()


async def test_refusals_are_not_retried_by_start(identity_server: IdentityServer, stopped: list[Rotator]) -> None:
    registry = CollectorRegistry()
    token = identity_server.token()
    identity_server.tokens.consume(token)
    rotator = Rotator(identity_server.address, join_token=token, directory=None, registry=registry)
    stopped.append(rotator)
    with pytest.raises(IdentityError, match="already used") as caught:
        await rotator.start()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and not caught.value.retryable
    assert _metric(registry, "failure") == 1
    assert rotator.current() is None and rotator.last_error is not None


async def test_nothing_to_start_from(tmp_path: Path, stopped: list[Rotator]) -> None:
    rotator = Rotator("127.0.0.1:1", join_token=None, directory=tmp_path)
    stopped.append(rotator)
    with pytest.raises(IdentityError, match="no join token, and no unexpired certificate in"):
        await rotator.start()


async def test_unreachable_control_plane(stopped: list[Rotator]) -> None:
    rotator = Rotator(f"127.0.0.1:{free_port()}", join_token="amjt.x.y", directory=None, timeout=1)
    stopped.append(rotator)
    with pytest.raises(IdentityError) as caught:
        await rotator.start(start_timeout=1)
    assert caught.value.retryable


async def test_run_waits_for_the_control_plane_then_renews(tmp_path: Path) -> None:
    """`run()` keeps trying while the control plane is down, and gets a certificate once it is up."""
    port = free_port()
    tokens = JoinTokenStore()
    token = tokens.create(agent="researcher", team="research", created_by="test").secret
    registry = CollectorRegistry()
    rotator = Rotator(f"127.0.0.1:{port}", join_token=token, directory=tmp_path, registry=registry, timeout=1)
    published = Published(rotator)
    task = asyncio.ensure_future(rotator.run())
    server: IdentityServer | None = None
    try:
        await _eventually(lambda: _metric(registry, "failure") >= 2)
        assert rotator.current() is None and "UNAVAILABLE" in (rotator.last_error or "")
        server = await start_identity_server(port=port, tokens=tokens)
        first = await published.until(1)
        assert first.spiffe_id == RESEARCHER
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if server is not None:
            await stop_identity_server(server)


async def test_failed_renewals_are_retried(tmp_path: Path) -> None:
    """A control plane that goes away: renewals fail and are counted; once it is back, the next one succeeds."""
    port = free_port()
    ca = CertificateAuthority.in_memory(trust_domain="agentmesh.local")
    server = await start_identity_server(port=port, ca=ca)
    registry = CollectorRegistry()
    rotator = Rotator(
        f"127.0.0.1:{port}",
        join_token=server.token(),
        directory=tmp_path,
        registry=registry,
        renew_at=_soon,
        timeout=1,
    )
    published = Published(rotator)
    try:
        await rotator.start()
        await stop_identity_server(server)
        await _eventually(lambda: _metric(registry, "failure") >= 2)
        generation = rotator.current().generation  # type: ignore[union-attr]
        server = await start_identity_server(port=port, ca=ca)
        renewed = await published.until(generation + 1)
        assert renewed.spiffe_id == RESEARCHER
        assert rotator.last_error is None
    finally:
        await rotator.stop()
        await stop_identity_server(server)
