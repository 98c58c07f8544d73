"""The CA's own certificates and their files: the root, or the intermediate under a root the user gives.

`CertificateAuthority` (control_plane/identity/ca.py) signs with an `Issuer` from here and never touches the
CA directory itself. This module makes the CA certificates (EC P-256 keys, the trust domain as a URI SAN
`spiffe://<trust-domain>`), writes them atomically (keys with mode 0600), and loads and checks them on later
starts: a pair that does not match, an expired root, another trust domain or a user root that cannot sign a CA
is refused with a `CaError` naming the file and the problem. A stored intermediate that is no longer usable
(another root, another trust domain, past half of its life) is replaced, reading the user root's key for that
only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agentmesh.identity.keys import generate_key, private_key_pem
from agentmesh.identity.spiffe import SCHEME
from control_plane.identity.csr import CsrRejected, check_public_key

# Every log line of the CA, from this module or ca.py, comes from one logger.
log = logging.getLogger("control_plane.identity.ca")

ROOT_VALIDITY: Final = dt.timedelta(days=3650)
INTERMEDIATE_VALIDITY: Final = dt.timedelta(days=365)
# Certificates start this long before they are issued, so a peer whose clock is a little behind accepts them.
BACKDATE: Final = dt.timedelta(minutes=1)

ROOT_CERT: Final = "root-cert.pem"
ROOT_KEY: Final = "root-key.pem"
INTERMEDIATE_CERT: Final = "intermediate-cert.pem"
INTERMEDIATE_KEY: Final = "intermediate-key.pem"


class CaError(ValueError):
    """The CA cannot be loaded or created; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Issuer:
    """What signs certificates: the root, or the intermediate, with its key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class UserRoot:
    """A root given by the user: its certificate, and where its key is read from when an intermediate is signed."""

    certificate: x509.Certificate
    key_file: Path


# --- files ---------------------------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Writes a file atomically (temporary file in the same directory, then rename) with `mode`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _load_certificate(path: Path, what: str) -> x509.Certificate:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaError(f"{path}: not a PEM certificate ({what}): {exc}") from None
    if len(certificates) != 1:
        raise CaError(f"{path}: expected exactly one certificate ({what}), found {len(certificates)}")
    return certificates[0]


SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load_key(path: Path, what: str) -> SigningKey:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaError(f"{path}: the {what} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CaError(f"{path}: not a PEM private key ({what}): {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaError(f"{path}: the {what} must be an EC (P-256, P-384) or RSA key, not {type(key).__name__}")
    try:
        check_public_key(key.public_key(), f"the {what}")
    except CsrRejected as exc:
        raise CaError(f"{path}: {exc}") from None
    return key


def _same_key(certificate: x509.Certificate, key: SigningKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(certificate.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


# --- building CA certificates --------------------------------------------------------------------------------------


def uri_sans(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def key_identifiers(
    builder: x509.CertificateBuilder,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Certificate | None,
) -> x509.CertificateBuilder:
    """Adds SKI for `public_key` and AKI naming the issuer (itself when `issuer` is None)."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = builder.add_extension(ski, critical=False)
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        try:
            issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return builder.add_extension(aki, critical=False)


def _ca_certificate(
    *,
    common_name: str,
    trust_domain: str,
    key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    validity: dt.timedelta,
    issuer: tuple[x509.Certificate, SigningKey] | None,
) -> x509.Certificate:
    """A CA certificate for `key`: self-signed when `issuer` is None, else signed by it (path length 0)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AgentMesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_after = now + validity
    if issuer is not None:
        not_after = min(not_after, issuer[0].not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"{SCHEME}{trust_domain}")]), critical=False
        )
    )
    builder = key_identifiers(builder, key.public_key(), None if issuer is None else issuer[0])
    signer = key if issuer is None else issuer[1]
    return builder.sign(signer, _signature_hash(signer))


# --- loading and making CA certificates ----------------------------------------------------------------------------


def new_root(trust_domain: str, now: dt.datetime) -> Issuer:
    key = generate_key()
    certificate = _ca_certificate(
        common_name=f"AgentMesh root CA {trust_domain}",
        trust_domain=trust_domain,
        key=key,
        now=now,
        validity=ROOT_VALIDITY,
        issuer=None,
    )
    return Issuer(certificate, key)


def load_or_make_root(directory: Path, trust_domain: str, now: dt.datetime) -> Issuer:
    cert_file, key_file = directory / ROOT_CERT, directory / ROOT_KEY
    if not cert_file.exists() and not key_file.exists():
        root = new_root(trust_domain, now)
        try:
            _write_private(key_file, private_key_pem(root.key), 0o600)
            _write_private(cert_file, root.certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as exc:
            raise CaError(f"{directory}: cannot write the new root CA: {exc.strerror or exc}") from None
        log.info(
            "created a root CA",
            extra={"trust_domain": trust_domain, "ca_dir": str(directory), "not_after": _iso(root.certificate)},
        )
        return root
    if not cert_file.exists() or not key_file.exists():
        missing = cert_file if not cert_file.exists() else key_file
        raise CaError(f"{missing}: missing while its pair exists; restore it, or empty {directory} to make a new root")
    certificate = _load_certificate(cert_file, "root CA certificate")
    stored = _load_key(key_file, "root CA key")
    if not isinstance(stored, ec.EllipticCurvePrivateKey) or not _same_key(certificate, stored):
        raise CaError(f"{key_file}: this key does not belong to {cert_file}")
    _check_trust_domain(cert_file, certificate, trust_domain)
    if certificate.not_valid_after_utc <= now:
        raise CaError(
            f"{cert_file}: the root CA expired at {_iso(certificate)}; move the CA directory away to make one"
        )
    return Issuer(certificate, stored)


def _check_trust_domain(path: Path, certificate: x509.Certificate, trust_domain: str) -> None:
    expected = f"{SCHEME}{trust_domain}"
    found = uri_sans(certificate)
    if expected not in found:
        held = ", ".join(uri.removeprefix(SCHEME) for uri in found) or "none"
        raise CaError(
            f"{path}: this CA belongs to trust domain {held}, not {trust_domain}; "
            f"pass --trust-domain {held} or use another --ca-dir"
        )


def load_user_root(cert_file: Path, key_file: Path) -> x509.Certificate:
    certificate = _load_certificate(cert_file, "root CA certificate (--ca-cert)")
    key = _load_key(key_file, "root CA key (--ca-key)")
    if not _same_key(certificate, key):
        raise CaError(f"{key_file}: this key does not belong to {cert_file}")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaError(f"{cert_file}: not a CA certificate (basicConstraints CA=true is required)")
    if constraints.path_length == 0:
        raise CaError(f"{cert_file}: its path length is 0, so it cannot sign the control plane's intermediate CA")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            raise CaError(f"{cert_file}: its keyUsage does not allow signing certificates (keyCertSign)")
    except x509.ExtensionNotFound:
        pass
    if certificate.issuer != certificate.subject:
        raise CaError(
            f"{cert_file}: not a self-signed root (issuer differs from subject); peers verify chains up to a root"
        )
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise CaError(f"{cert_file}: its self-signature does not verify") from None
    return certificate


def load_or_make_intermediate(directory: Path, trust_domain: str, root: UserRoot, now: dt.datetime) -> Issuer:
    cert_file, key_file = directory / INTERMEDIATE_CERT, directory / INTERMEDIATE_KEY
    if cert_file.exists() and key_file.exists():
        try:
            certificate = _load_certificate(cert_file, "intermediate CA certificate")
            key = _load_key(key_file, "intermediate CA key")
            problem = _intermediate_problem(certificate, key, root.certificate, trust_domain, now)
        except CaError as exc:
            problem = str(exc)
        if problem is None:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return Issuer(certificate, key)
        log.info("making a new intermediate CA", extra={"ca_dir": str(directory), "reason": problem})
    return make_intermediate(directory, trust_domain, root, now)


def _intermediate_problem(
    certificate: x509.Certificate, key: SigningKey, root: x509.Certificate, trust_domain: str, now: dt.datetime
) -> str | None:
    """Why a stored intermediate cannot be kept; None when it can."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(certificate, key):
        return "the stored key does not belong to the stored intermediate"
    try:
        certificate.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return "the stored intermediate was not signed by the given root"
    if f"{SCHEME}{trust_domain}" not in uri_sans(certificate):
        return f"the stored intermediate is not of trust domain {trust_domain}"
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    if certificate.not_valid_after_utc - now < lifetime / 2:
        return "the stored intermediate is past half of its lifetime"
    return None


def make_intermediate(directory: Path, trust_domain: str, root: UserRoot, now: dt.datetime) -> Issuer:
    """Signs a new intermediate with the root's key (read from its file for this only) and stores it."""
    root_key = _load_key(root.key_file, "root CA key (--ca-key)")
    key = generate_key()
    certificate = _ca_certificate(
        common_name=f"AgentMesh intermediate CA {trust_domain}",
        trust_domain=trust_domain,
        key=key,
        now=now,
        validity=INTERMEDIATE_VALIDITY,
        issuer=(root.certificate, root_key),
    )
    del root_key
    try:
        _write_private(directory / INTERMEDIATE_KEY, private_key_pem(key), 0o600)
        _write_private(directory / INTERMEDIATE_CERT, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise CaError(f"{directory}: cannot write the intermediate CA: {exc.strerror or exc}") from None
    log.info(
        "created an intermediate CA under the given root",
        extra={"trust_domain": trust_domain, "ca_dir": str(directory), "not_after": _iso(certificate)},
    )
    return Issuer(certificate, key)


def _iso(certificate: x509.Certificate) -> str:
    return certificate.not_valid_after_utc.isoformat()
