"""Certificates made in tests with `cryptography`, apart from the CA under test: roots, workloads, impostors.

For the tests that must not depend on the CA under test (unit and
integration alike): user roots for `--ca-cert`, a second CA, CSRs with any
key, and the certificates of impostors: self-signed, expired, of another
trust domain, signed with a CA's key behind its back. Workload certificates
look like the mesh's (control_plane/identity/ca.py): an empty subject, a
critical subjectAltName with the SPIFFE ID (URI) and, for a `SpiffeId`, its
DNS name; EKU serverAuth + clientAuth; CA=false; SKI and AKI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentmesh.identity.keys import PrivateKey, private_key_pem
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId
from control_plane.identity.issuers import ROOT_CERT, ROOT_KEY

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Clock:
    """A settable clock for the CA and the stores."""

    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def csr_pem(key: PrivateKey | ed25519.Ed25519PrivateKey, *, sans: list[x509.GeneralName] | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asks for anything")])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


# --- roots ---------------------------------------------------------------------------------------------------------


def root_certificate(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None = None,
) -> x509.Certificate:
    """A self-signed CA certificate: basicConstraints CA=true, keyUsage keyCertSign + cRLSign, SKI."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algorithm = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, algorithm)
    )


def user_root(
    directory: Path,
    *,
    now: dt.datetime = NOW,
    lifetime: dt.timedelta = dt.timedelta(days=3650),
    name: str = "Example Corp Root",
    path_length: int | None = None,
) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed root (P-384) written to directory/<name>.pem and .key."""
    key = ec.generate_private_key(ec.SECP384R1())
    certificate = root_certificate(
        key, name, not_before=now - dt.timedelta(days=1), not_after=now + lifetime, path_length=path_length
    )
    slug = name.lower().replace(" ", "-")
    cert_file, key_file = directory / f"{slug}.pem", directory / f"{slug}.key"
    cert_file.write_bytes(_pem(certificate))
    key_file.write_bytes(private_key_pem(key))
    return cert_file, key_file, certificate, key


def control_plane_root(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A control plane's own root certificate and key, read from its CA directory (to sign behind its back)."""
    certificate = x509.load_pem_x509_certificate((ca_dir / ROOT_CERT).read_bytes())
    key = serialization.load_pem_private_key((ca_dir / ROOT_KEY).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return certificate, key


# --- workload certificates -----------------------------------------------------------------------------------------


def leaf_certificate(
    identity: SpiffeId | str,
    key: PrivateKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A workload-shaped certificate for `identity` (a SpiffeId, or any URI) over `key`, signed with `issuer_key`."""
    sans: list[x509.GeneralName] = (
        [x509.UniformResourceIdentifier(identity.uri), x509.DNSName(identity.dns_name)]
        if isinstance(identity, SpiffeId)
        else [x509.UniformResourceIdentifier(identity)]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def forged_leaf(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    leaf_key: PrivateKey,
    uri: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> bytes:
    """A workload-shaped certificate signed directly with a CA key (expired, other trust domain, ...), PEM."""
    return _pem(leaf_certificate(uri, leaf_key, issuer.subject, issuer_key, not_before=not_before, not_after=not_after))


def workload_material(
    spiffe_id: SpiffeId,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    bundle_pem: bytes,
    not_before: dt.datetime,
    not_after: dt.datetime,
    generation: int = 1,
) -> IdentityMaterial:
    """A fresh key and a workload certificate for `spiffe_id` signed with `issuer_key`, as IdentityMaterial."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = leaf_certificate(spiffe_id, key, issuer, issuer_key, not_before=not_before, not_after=not_after)
    return IdentityMaterial(
        spiffe_id=spiffe_id,
        private_key_pem=private_key_pem(key),
        certificate_chain_pem=_pem(certificate),
        trust_bundle_pem=bundle_pem,
        not_before=not_before,
        not_after=not_after,
        generation=generation,
    )


class TestCa:
    """A root CA (P-256, valid for a day) that signs workload certificates."""

    __test__ = False

    def __init__(self, name: str = "test root") -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = root_certificate(self.key, name, not_before=now() - HOUR, not_after=now() + 24 * HOUR)

    @property
    def bundle_pem(self) -> bytes:
        return _pem(self.certificate)

    def issue(
        self,
        spiffe_id: SpiffeId,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        generation: int = 1,
        bundle_pem: bytes | None = None,
    ) -> IdentityMaterial:
        """A fresh key and a workload certificate for `spiffe_id`, as the mesh CA would issue it."""
        return workload_material(
            spiffe_id,
            self.certificate.subject,
            self.key,
            bundle_pem=bundle_pem or self.bundle_pem,
            not_before=not_before or now() - dt.timedelta(minutes=5),
            not_after=not_after or now() + HOUR,
            generation=generation,
        )


def self_signed(spiffe_id: SpiffeId, *, bundle_pem: bytes) -> IdentityMaterial:
    """A certificate for `spiffe_id` signed by its own key (trusting `bundle_pem` to verify the server)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = now() - HOUR, now() + HOUR
    certificate = leaf_certificate(spiffe_id, key, x509.Name([]), key, not_before=start, not_after=end)
    return IdentityMaterial(spiffe_id, private_key_pem(key), _pem(certificate), bundle_pem, start, end, 1)


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
