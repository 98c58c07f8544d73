"""The sidecar's workload identity: whether mutual TLS is on, and the credentials built from the current certificate.

Where it sits: below both listeners. The inbound listener gets server
credentials whose certificate follows rotation (grpc asks for the current
configuration before every handshake, so connections and streams already open
keep theirs); the channels to other sidecars are built from the material of
one generation (sidecar/outbound/targets.py swaps them on rotation).

mTLS is on when agent.yaml links a control plane and the sidecar holds a join
token or an identity persisted by an earlier run (`identity.dir`); otherwise
the sidecar runs in plaintext, and says why once at start. The certificate
itself comes from an `IdentitySource` (agentmesh/identity/material.py): the
rotator that enrolls with the join token, persists the key and renews before
expiry (agentmesh/identity/rotation.py; its metrics,
`agentmesh_identity_certificate_expiry_timestamp_seconds` and
`agentmesh_identity_rotations_total{result}`, are on the sidecar's /metrics).
A certificate for another agent or team than agent.yaml's is not used: the
mesh would expect this sidecar under agent.yaml's name. Private keys never
leave this process and are never shown: the admin endpoint shows the SPIFFE
ID, serial, validity and generation.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from agentmesh.identity.material import IdentityMaterial, IdentitySource
from sidecar.config.bootstrap import AgentIdentity, Bootstrap, IdentityMode

if TYPE_CHECKING:  # cryptography and the rotator load only when mTLS is on: a plaintext sidecar starts faster
    from prometheus_client import CollectorRegistry

    from agentmesh.identity.rotation import Rotator

log = logging.getLogger("agentmesh.sidecar.identity")

JOIN_TOKEN_ENV = "AGENTMESH_JOIN_TOKEN"


@dataclass(frozen=True)
class IdentityPlan:
    """What agent.yaml and the environment say about mTLS, decided once at start."""

    enabled: bool
    # Why mTLS is on or off, for the one start-up log line.
    reason: str
    mode: IdentityMode
    dir: Path
    join_token: str | None = field(default=None, repr=False)


def default_identity_dir(bootstrap: Bootstrap) -> Path:
    """A folder per agent and inbound address, next to the control-plane link's config cache."""
    link = bootstrap.control_plane
    if link is not None and link.config_cache is not None:
        return link.config_cache.parent / f"{link.config_cache.stem}.identity"
    address = (link.advertise_address if link is not None else None) or bootstrap.listen.inbound
    name = f"agentmesh-identity-{bootstrap.agent.name}-{address.replace(':', '_')}"
    return Path(tempfile.gettempdir()) / name


def identity_persisted(directory: Path) -> bool:
    """Whether an earlier run left identity files in `directory` (usable or not: the rotator says which)."""
    from agentmesh.identity.files import FILES

    return any(os.path.lexists(directory / name) for name in FILES)


def open_identity_source(plan: IdentityPlan, bootstrap: Bootstrap, *, registry: CollectorRegistry) -> Rotator:
    """The rotator that enrolls with the plan's token (or reuses what `plan.dir` holds) and renews."""
    from agentmesh.identity.rotation import Rotator

    link = bootstrap.control_plane
    if link is None:
        raise ValueError("mTLS needs a control_plane link")
    return Rotator(link.target(), join_token=plan.join_token, directory=plan.dir, registry=registry)


def plan_identity(
    bootstrap: Bootstrap,
    *,
    environ: Mapping[str, str] = os.environ,
    persisted: Callable[[Path], bool] = identity_persisted,
) -> IdentityPlan:
    """Decides whether mTLS is on; `persisted(dir)` says whether an earlier run left an identity there."""
    config = bootstrap.identity
    directory = config.dir or default_identity_dir(bootstrap)
    token, source = config.join_token, "identity.join_token"
    if token is None and config.join_token_file is not None:
        token = config.join_token_file.read_text().strip() or None
        source = f"identity.join_token_file ({config.join_token_file})"
    if token is None and environ.get(JOIN_TOKEN_ENV, "").strip():
        token, source = environ[JOIN_TOKEN_ENV].strip(), JOIN_TOKEN_ENV

    def off(reason: str) -> IdentityPlan:
        return IdentityPlan(False, reason, config.mode, directory)

    if bootstrap.control_plane is None:
        return off("mTLS off: agent.yaml has no control_plane link to get a certificate from")
    if persisted(directory):
        why = f"mTLS {config.mode}: identity persisted in {directory}"
        return IdentityPlan(True, why, config.mode, directory, token)
    if token is not None:
        why = f"mTLS {config.mode}: enrolling with the join token from {source}"
        return IdentityPlan(True, why, config.mode, directory, token)
    return off(
        f"mTLS off: no join token (identity.join_token, identity.join_token_file or {JOIN_TOKEN_ENV}) "
        f"and no identity persisted in {directory}"
    )


@dataclass(frozen=True)
class _Leaf:
    """What the admin endpoint shows of one certificate (never the key)."""

    serial: str
    not_before: str
    not_after: str


def _leaf(material: IdentityMaterial) -> _Leaf:
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(material.certificate_chain_pem)
    return _Leaf(
        serial=format(certificate.serial_number, "x"),
        not_before=material.not_before.isoformat(),
        not_after=material.not_after.isoformat(),
    )


def _placeholder_certificate() -> tuple[bytes, bytes]:
    """A throwaway self-signed (key, certificate) for the listener until the first real certificate.

    No peer trusts it and no client certificate chains to it, so every handshake
    before the first certificate fails: the port is bound, but nothing is served.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from agentmesh.identity.keys import generate_key, private_key_pem

    key = generate_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "agentmesh-no-identity-yet")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return private_key_pem(key), certificate.public_bytes(serialization.Encoding.PEM)


def server_configuration(material: IdentityMaterial) -> grpc.ServerCertificateConfiguration:
    """The listener's key, chain and roots: only the trust bundle, so other CAs and self-signed peers fail."""
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key_pem, material.certificate_chain_pem)], root_certificates=material.trust_bundle_pem
    )


def channel_credentials(material: IdentityMaterial) -> grpc.ChannelCredentials:
    """Credentials of a channel to another sidecar: our chain to present, the bundle to verify the peer with."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.trust_bundle_pem,
        private_key=material.private_key_pem,
        certificate_chain=material.certificate_chain_pem,
    )


class SidecarIdentity:
    """The identity the sidecar serves and dials with, as its source publishes it.

    `ready` is set at the first usable certificate (readiness waits for it).
    `server_credentials()` are given to the inbound listener once; its
    certificate follows rotation handshake by handshake.
    """

    def __init__(self, source: IdentitySource, *, mode: IdentityMode, agent: AgentIdentity, directory: Path) -> None:
        self.source = source
        self.mode = mode
        self.directory = directory
        self.ready = asyncio.Event()
        self._agent = agent
        self._leaf: tuple[int, _Leaf] | None = None
        self._served_generation = -1
        self._generation = -1
        self._listeners: list[Callable[[IdentityMaterial], None]] = []
        self._unsubscribe = source.subscribe(self._changed)
        current = source.current()
        if current is not None:
            self._changed(current)

    @property
    def material(self) -> IdentityMaterial | None:
        """The current material, when it is this agent's (see `_mismatch`)."""
        current = self.source.current()
        return current if current is not None and self._mismatch(current) is None else None

    @property
    def waiting_reason(self) -> str:
        """Why there is no usable certificate (for /readyz and errors of calls that need one)."""
        current = self.source.current()
        mismatch = self._mismatch(current) if current is not None else None
        if mismatch is not None:
            return mismatch
        error = getattr(self.source, "last_error", None)
        return str(error) if error else "waiting for the first certificate from the control plane"

    def expired(self, now: datetime.datetime | None = None) -> str | None:
        """Why the certificate held is no longer valid (renewal kept failing until it ended), or None."""
        material = self.material
        moment = now or datetime.datetime.now(datetime.UTC)
        if material is None or material.not_after > moment:
            return None
        error = getattr(self.source, "last_error", None)
        return f"the certificate expired at {material.not_after.isoformat()}" + (f": {error}" if error else "")

    def _mismatch(self, material: IdentityMaterial) -> str | None:
        spiffe_id = material.spiffe_id
        if (spiffe_id.agent, spiffe_id.team) == (self._agent.name, self._agent.team):
            return None
        return (
            f"the certificate is for {spiffe_id.uri}, but agent.yaml says agent {self._agent.name!r} of team "
            f"{self._agent.team!r}: create a join token for this agent and team"
        )

    def on_change(self, callback: Callable[[IdentityMaterial], None]) -> None:
        """Calls `callback` with each new material after the identity took it (event loop thread)."""
        self._listeners.append(callback)

    def close(self) -> None:
        self._unsubscribe()

    def _changed(self, material: IdentityMaterial) -> None:
        if material.generation <= self._generation:
            return  # already taken (the source may repeat what `current()` gave at subscription)
        self._generation = material.generation
        mismatch = self._mismatch(material)
        if mismatch is not None:
            log.error("certificate not used: %s", mismatch)
            return
        serial = self._describe_leaf(material).serial
        what = "certificate rotated" if self.ready.is_set() else "certificate received"
        log.info(
            "%s: %s, serial %s, generation %d, valid until %s",
            what,
            material.spiffe_id.uri,
            serial,
            material.generation,
            material.not_after.isoformat(),
        )
        self.ready.set()
        for callback in self._listeners:
            callback(material)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials requiring client certificates; rotation applies to each new handshake."""
        current = self.material
        if current is not None:
            initial = server_configuration(current)
            self._served_generation = current.generation
        else:
            key, certificate = _placeholder_certificate()
            initial = grpc.ssl_server_certificate_configuration([(key, certificate)], root_certificates=certificate)
        # grpc's stubs say the fetcher returns a configuration; None (keep the current one) is documented too.
        fetch: Callable[[], grpc.ServerCertificateConfiguration] = self._fetch  # type: ignore[assignment]
        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc calls this before every inbound handshake (from its own thread): new material or None."""
        try:
            current = self.material
            if current is None or current.generation == self._served_generation:
                return None
            configuration = server_configuration(current)
            self._served_generation = current.generation
            return configuration
        except Exception:  # an exception here would only fail the handshake, with grpc's own log line
            log.exception("cannot build the listener's TLS configuration; keeping the previous one")
            return None

    def _describe_leaf(self, material: IdentityMaterial) -> _Leaf:
        cached = self._leaf
        if cached is None or cached[0] != material.generation:
            cached = (material.generation, _leaf(material))
            self._leaf = cached
        return cached[1]

    def describe(self) -> dict[str, object]:
        """For /identity and /config_dump: who the sidecar is and until when; never the key."""
        material = self.material
        base: dict[str, object] = {"mtls": True, "mode": self.mode, "dir": str(self.directory)}
        if material is None:
            return base | {"state": "waiting", "reason": self.waiting_reason}
        leaf = self._describe_leaf(material)
        return base | {
            "state": "ready",
            "spiffe_id": material.spiffe_id.uri,
            "dns_name": material.spiffe_id.dns_name,
            "serial": leaf.serial,
            "not_before": leaf.not_before,
            "not_after": leaf.not_after,
            "generation": material.generation,
        }
