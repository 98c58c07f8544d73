"""Certificates made in tests with `cryptography`: CAs, SPIFFE workload certificates, impostors.

For the transport tests that must not depend on the control plane's CA: a
second CA, a self-signed certificate, an expired one, a certificate of
another trust domain. Workload certificates look like the mesh's: URI SAN
(the SPIFFE ID) and DNS SAN (`SpiffeId.dns_name`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId

HOUR = datetime.timedelta(hours=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class TestCa:
    """A root CA that signs workload certificates."""

    __test__ = False

    name: str = "test root"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    certificate: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - HOUR)
            .not_valid_after(now() + 24 * HOUR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def bundle_pem(self) -> bytes:
        return _pem(self.certificate)

    def issue(
        self,
        spiffe_id: SpiffeId,
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        generation: int = 1,
        bundle_pem: bytes | None = None,
    ) -> IdentityMaterial:
        """A fresh key and a workload certificate for `spiffe_id`, as the mesh CA would issue it."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or now() - datetime.timedelta(minutes=5)
        end = not_after or now() + HOUR
        certificate = _workload(spiffe_id, key, self.certificate.subject, self.key, start, end)
        return IdentityMaterial(
            spiffe_id=spiffe_id,
            private_key_pem=_key_pem(key),
            certificate_chain_pem=_pem(certificate),
            trust_bundle_pem=bundle_pem or self.bundle_pem,
            not_before=start,
            not_after=end,
            generation=generation,
        )


def _workload(
    spiffe_id: SpiffeId,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.agent)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id.uri), x509.DNSName(spiffe_id.dns_name)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def self_signed(spiffe_id: SpiffeId, *, bundle_pem: bytes) -> IdentityMaterial:
    """A certificate for `spiffe_id` signed by its own key (trusting `bundle_pem` to verify the server)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = now() - HOUR, now() + HOUR
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.agent)])
    certificate = _workload(spiffe_id, key, name, key, start, end)
    return IdentityMaterial(spiffe_id, _key_pem(key), _pem(certificate), bundle_pem, start, end, 1)


class StaticSource:
    """An IdentitySource whose material tests set by hand (`publish` plays a rotation)."""

    def __init__(self, material: IdentityMaterial | None = None) -> None:
        self._material = material
        self._callbacks: list[Callable[[IdentityMaterial], None]] = []

    def current(self) -> IdentityMaterial | None:
        return self._material

    def subscribe(self, callback: Callable[[IdentityMaterial], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def publish(self, material: IdentityMaterial) -> None:
        self._material = material
        for callback in list(self._callbacks):
            callback(material)
