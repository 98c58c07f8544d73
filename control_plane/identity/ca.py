"""The mesh's certificate authority: signs workload certificates and checks the ones presented for renewal.

Two ways to run it, both with EC P-256 keys made here:

- **own root** (default): a self-signed root created on first start in the CA
  directory (`root-cert.pem`, `root-key.pem` with mode 0600) and reused on
  every later start. The root signs workload certificates directly.
- **intermediate under a user root** (`--ca-cert FILE --ca-key FILE`): the
  control plane makes its own intermediate (`intermediate-cert.pem`,
  `intermediate-key.pem` in the CA directory) signed by that root, and signs
  workload certificates with it. The root's key is read only to sign the
  intermediate: at start when there is no usable one, and again when it is
  close to expiry.

Workload certificates (X.509 SVIDs) have an empty subject and a critical
subjectAltName with the SPIFFE ID (URI) and `SpiffeId.dns_name` (DNS), EKU
serverAuth + clientAuth, keyUsage digitalSignature (+ keyAgreement for EC
keys), basicConstraints CA=false, AKI/SKI and a random serial; they start one
minute in the past (clock skew) and end `workload_ttl` later, never after the
issuer itself. Only EC P-256/P-384 and RSA >= 2048 keys are certified.

The control plane's own certificate for its secure port (`--secure-listen`)
comes from the same issuer: `issue_server_certificate` (DNS name
`control-plane.<trust-domain>` plus `--secure-san` names, serverAuth only, no
SPIFFE ID); control_plane/identity/server_tls.py serves and renews it.

The trust domain is written into the CA certificates as a URI SAN
(`spiffe://<trust-domain>`): a CA directory made for one trust domain is
refused for another instead of silently issuing identities nobody trusts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentmesh.identity.control_plane_tls import check_server_name, control_plane_server_name
from agentmesh.identity.keys import generate_key, private_key_pem
from agentmesh.identity.spiffe import SCHEME, InvalidSpiffeId, SpiffeId, check_trust_domain

log = logging.getLogger(__name__)

DEFAULT_WORKLOAD_TTL: Final = dt.timedelta(hours=24)
ROOT_VALIDITY: Final = dt.timedelta(days=3650)
INTERMEDIATE_VALIDITY: Final = dt.timedelta(days=365)
# Certificates start this long before they are issued, so a peer whose clock is a little behind accepts them.
BACKDATE: Final = dt.timedelta(minutes=1)
MIN_RSA_BITS: Final = 2048
ACCEPTED_CURVES: Final = ("secp256r1", "secp384r1")

ROOT_CERT: Final = "root-cert.pem"
ROOT_KEY: Final = "root-key.pem"
INTERMEDIATE_CERT: Final = "intermediate-cert.pem"
INTERMEDIATE_KEY: Final = "intermediate-key.pem"

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CaError(ValueError):
    """The CA cannot be loaded or created; the message names the file and what is wrong."""


class CsrRejected(ValueError):
    """A certificate signing request that cannot be certified; the message says what is wrong with it."""


class CertificateRejected(Exception):
    """A certificate presented for renewal that does not prove an identity of this CA.

    `reason` is one of `REJECTION_REASONS` (a metric label); the message is for the caller.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


REJECTION_REASONS: Final = (
    "invalid_certificate",  # not a PEM certificate chain, or no agent SPIFFE ID in it
    "expired_certificate",
    "untrusted_certificate",  # does not chain to this CA's roots
    "wrong_trust_domain",
)


@dataclass(frozen=True)
class IssuedCertificate:
    """One signed workload certificate and what a workload needs with it."""

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    # Leaf first, then intermediates (not the root), PEM.
    chain_pem: bytes
    trust_bundle_pem: bytes

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True)
class ServerCertificate:
    """The control plane's own TLS certificate for its secure port, with its key (made here, never sent)."""

    certificate: x509.Certificate
    private_key_pem: bytes
    # Leaf first, then intermediates (not the root), PEM.
    chain_pem: bytes

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def names(self) -> tuple[str, ...]:
        """The DNS names and IP addresses it is valid for."""
        san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        return (*dns, *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def server_alt_name(value: str) -> x509.DNSName | x509.IPAddress:
    """`value` as a subjectAltName entry: an IP address or a DNS name; raises ValueError saying why not."""
    name = check_server_name(value)
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


# --- certificate signing requests --------------------------------------------------------------------------------


def parse_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """A PEM PKCS#10 request with a valid signature and an accepted key; raises CsrRejected saying what is wrong."""
    if not csr_pem.strip():
        raise CsrRejected("csr_pem is empty: send a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST)")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrRejected(f"csr_pem is not a PEM certificate signing request: {exc}") from None
    check_public_key(csr.public_key(), "the CSR's key")
    try:
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm as exc:
        raise CsrRejected(f"the CSR's signature algorithm is not supported: {exc}") from None
    if not valid:
        raise CsrRejected("the CSR's signature does not verify with its own public key")
    return csr


def check_public_key(key: object, what: str) -> None:
    """Accepts EC P-256/P-384 and RSA >= 2048 bits; raises CsrRejected naming `what` otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ACCEPTED_CURVES:
            raise CsrRejected(f"{what} is on curve {key.curve.name}: accepted are EC P-256 and P-384, and RSA >= 2048")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrRejected(f"{what} is RSA with {key.key_size} bits: RSA keys need at least {MIN_RSA_BITS} bits")
        return
    kind = type(key).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
    raise CsrRejected(f"{what} is of type {kind}: accepted are EC P-256 and P-384, and RSA >= {MIN_RSA_BITS} bits")


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


def _uri_sans(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_identifiers(
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
    builder = _key_identifiers(builder, key.public_key(), None if issuer is None else issuer[0])
    signer = key if issuer is None else issuer[1]
    return builder.sign(signer, _signature_hash(signer))


# --- the authority -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issuer:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class _UserRoot:
    """A root given by the user: its certificate, and where its key is read from when an intermediate is signed."""

    certificate: x509.Certificate
    key_file: Path


class CertificateAuthority:
    """Signs workload certificates for SPIFFE IDs of one trust domain; verifies certificates it (or its root) issued.

    Open one with `CertificateAuthority.open(...)`. Safe to call from worker threads: its state is replaced with one
    reference assignment when the intermediate is renewed.
    """

    def __init__(
        self,
        *,
        trust_domain: str,
        issuer: _Issuer,
        roots: Sequence[x509.Certificate],
        workload_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
        ca_dir: Path | None = None,
        user_root: _UserRoot | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.trust_domain = check_trust_domain(trust_domain)
        if workload_ttl <= dt.timedelta(0):
            raise ValueError("the workload certificate TTL must be positive")
        self.workload_ttl = workload_ttl
        self._issuer = issuer
        self._roots = tuple(roots)
        self._ca_dir = ca_dir
        self._user_root = user_root
        self._clock = clock
        self._renewing = threading.Lock()
        self._bundle_pem = b"".join(root.public_bytes(serialization.Encoding.PEM) for root in self._roots)

    def __repr__(self) -> str:
        mode = "intermediate" if self._user_root is not None else "root"
        return f"CertificateAuthority(trust_domain={self.trust_domain!r}, mode={mode}, ca_dir={self._ca_dir})"

    @classmethod
    def open(
        cls,
        ca_dir: str | Path,
        *,
        trust_domain: str,
        workload_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
        root_cert_file: str | Path | None = None,
        root_key_file: str | Path | None = None,
        clock: Clock = utc_now,
    ) -> CertificateAuthority:
        """Loads the CA from `ca_dir`, creating what is missing; raises CaError naming the file and the problem.

        With `root_cert_file` and `root_key_file` the CA is an intermediate under that root; otherwise it is its own
        self-signed root.
        """
        check_trust_domain(trust_domain)
        if (root_cert_file is None) != (root_key_file is None):
            raise CaError("give both --ca-cert and --ca-key (a root certificate and its key), or neither")
        directory = Path(ca_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CaError(f"{directory}: cannot create the CA directory: {exc.strerror or exc}") from None
        if root_cert_file is not None and root_key_file is not None:
            user_root = _UserRoot(_load_user_root(Path(root_cert_file), Path(root_key_file)), Path(root_key_file))
            issuer = _load_or_make_intermediate(directory, trust_domain, user_root, clock())
            return cls(
                trust_domain=trust_domain,
                issuer=issuer,
                roots=(user_root.certificate,),
                workload_ttl=workload_ttl,
                ca_dir=directory,
                user_root=user_root,
                clock=clock,
            )
        root = _load_or_make_root(directory, trust_domain, clock())
        return cls(
            trust_domain=trust_domain, issuer=root, roots=(root.certificate,), workload_ttl=workload_ttl, clock=clock
        )

    @classmethod
    def in_memory(
        cls, *, trust_domain: str, workload_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL, clock: Clock = utc_now
    ) -> CertificateAuthority:
        """A new self-signed root kept in memory only (a control plane without a database file)."""
        root = _new_root(check_trust_domain(trust_domain), clock())
        return cls(
            trust_domain=trust_domain, issuer=root, roots=(root.certificate,), workload_ttl=workload_ttl, clock=clock
        )

    # --- what it is ------------------------------------------------------------------------------------------------

    @property
    def issuer_certificate(self) -> x509.Certificate:
        """The certificate that signs workload certificates (the root, or the intermediate)."""
        return self._issuer.certificate

    @property
    def issuer_pem(self) -> bytes:
        return self._issuer.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def issuer_not_after(self) -> dt.datetime:
        return self._issuer.certificate.not_valid_after_utc

    @property
    def trust_bundle_pem(self) -> bytes:
        """Every root peers verify workload certificates with, PEM."""
        return self._bundle_pem

    @property
    def is_intermediate(self) -> bool:
        return self._user_root is not None

    # --- issuing ---------------------------------------------------------------------------------------------------

    def issue(self, csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId) -> IssuedCertificate:
        """Signs a certificate for `spiffe_id` over the CSR's key (check the CSR with `parse_csr` first).

        The identity comes from `spiffe_id` only; anything the CSR asks for (subject, extensions) is ignored.
        """
        if spiffe_id.trust_domain != self.trust_domain:
            raise ValueError(f"{spiffe_id} is not in trust domain {self.trust_domain}")
        public_key = csr.public_key()
        check_public_key(public_key, "the CSR's key")
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        now = self._clock()
        issuer = self._current_issuer(now)
        not_after = min(now + self.workload_ttl, issuer.certificate.not_valid_after_utc)
        is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(spiffe_id.uri), x509.DNSName(spiffe_id.dns_name)]
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=not is_ec,
                    data_encipherment=False,
                    key_agreement=is_ec,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        builder = _key_identifiers(builder, public_key, issuer.certificate)
        certificate = builder.sign(issuer.key, hashes.SHA256())
        chain = (certificate, issuer.certificate) if self._user_root is not None else (certificate,)
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        return IssuedCertificate(spiffe_id, certificate, chain_pem, self._bundle_pem)

    def issue_server_certificate(self, extra_names: Sequence[str] = (), *, ttl: dt.timedelta) -> ServerCertificate:
        """A certificate for the control plane's secure port, over a new EC P-256 key.

        Its subjectAltName holds the DNS name `control-plane.<trust domain>` and `extra_names` (DNS names or IP
        addresses, e.g. the address clients dial); EKU serverAuth only, so it cannot pass for a workload (it has
        no SPIFFE ID either). It lasts `ttl`, never past the issuer; raises ValueError for a bad name or ttl.
        """
        if ttl <= dt.timedelta(0):
            raise ValueError("the server certificate TTL must be positive")
        names: list[x509.DNSName | x509.IPAddress] = [x509.DNSName(control_plane_server_name(self.trust_domain))]
        for value in extra_names:
            entry = server_alt_name(value)
            if entry not in names:
                names.append(entry)
        key = generate_key()
        now = self._clock()
        issuer = self._current_issuer(now)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + ttl, issuer.certificate.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        builder = _key_identifiers(builder, key.public_key(), issuer.certificate)
        certificate = builder.sign(issuer.key, hashes.SHA256())
        chain = (certificate, issuer.certificate) if self._user_root is not None else (certificate,)
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        return ServerCertificate(certificate, private_key_pem(key), chain_pem)

    def _current_issuer(self, now: dt.datetime) -> _Issuer:
        """The issuer; an intermediate with less than one workload TTL left is replaced first (its root's key read)."""
        issuer = self._issuer
        if self._user_root is None or self._ca_dir is None:
            return issuer
        if issuer.certificate.not_valid_after_utc - now >= self.workload_ttl:
            return issuer
        if self._user_root.certificate.not_valid_after_utc - now < self.workload_ttl:
            return issuer  # the root ends first: a new intermediate would not last longer
        with self._renewing:
            if self._issuer is not issuer:
                return self._issuer  # another thread renewed it meanwhile
            try:
                renewed = _make_intermediate(self._ca_dir, self.trust_domain, self._user_root, now)
            except CaError as exc:
                log.error(
                    "cannot renew the intermediate CA certificate; certificates will be shortened",
                    extra={"error": str(exc)},
                )
                return issuer
            self._issuer = renewed
            return renewed

    # --- verifying -------------------------------------------------------------------------------------------------

    def verify_workload(self, chain_pem: bytes) -> tuple[SpiffeId, x509.Certificate]:
        """The identity and leaf of a presented workload chain (leaf first), checked against this CA's roots now.

        Raises CertificateRejected with the reason: not a certificate or no agent SPIFFE ID, expired, not issued
        under this CA's roots, or of another trust domain.
        """
        if not chain_pem.strip():
            raise CertificateRejected("invalid_certificate", "certificate_chain_pem is empty: send the current chain")
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise CertificateRejected(
                "invalid_certificate", f"certificate_chain_pem is not a PEM certificate chain: {exc}"
            ) from None
        leaf, intermediates = chain[0], chain[1:]
        now = self._clock()
        if leaf.not_valid_after_utc <= now:
            raise CertificateRejected(
                "expired_certificate",
                f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}: enroll again with a join token",
            )
        uris = _uri_sans(leaf)
        if len(uris) != 1:
            raise CertificateRejected(
                "invalid_certificate",
                f"the certificate must carry exactly one URI SAN (a SPIFFE ID), found {len(uris)}",
            )
        try:
            spiffe_id = SpiffeId.parse(uris[0])
        except InvalidSpiffeId as exc:
            raise CertificateRejected("invalid_certificate", str(exc)) from None
        if spiffe_id.trust_domain != self.trust_domain:
            raise CertificateRejected(
                "wrong_trust_domain",
                f"{spiffe_id} is of trust domain {spiffe_id.trust_domain}, this CA serves {self.trust_domain}",
            )
        verifier = verification.PolicyBuilder().store(verification.Store(list(self._roots))).time(now)
        try:
            verifier.build_client_verifier().verify(leaf, intermediates)
        except verification.VerificationError as exc:
            raise CertificateRejected(
                "untrusted_certificate", f"the certificate was not issued by this mesh's CA: {exc}"
            ) from None
        return spiffe_id, leaf


def verify_possession(certificate: x509.Certificate, signature: bytes, data: bytes) -> bool:
    """True when `signature` is the certificate key's ECDSA/SHA-256 (or RSA PKCS#1 v1.5/SHA-256) signature of `data`."""
    from cryptography.hazmat.primitives.asymmetric import padding

    key = certificate.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


# --- loading and making CA certificates ----------------------------------------------------------------------------


def _new_root(trust_domain: str, now: dt.datetime) -> _Issuer:
    key = generate_key()
    certificate = _ca_certificate(
        common_name=f"AgentMesh root CA {trust_domain}",
        trust_domain=trust_domain,
        key=key,
        now=now,
        validity=ROOT_VALIDITY,
        issuer=None,
    )
    return _Issuer(certificate, key)


def _load_or_make_root(directory: Path, trust_domain: str, now: dt.datetime) -> _Issuer:
    cert_file, key_file = directory / ROOT_CERT, directory / ROOT_KEY
    if not cert_file.exists() and not key_file.exists():
        root = _new_root(trust_domain, now)
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
    return _Issuer(certificate, stored)


def _check_trust_domain(path: Path, certificate: x509.Certificate, trust_domain: str) -> None:
    expected = f"{SCHEME}{trust_domain}"
    found = _uri_sans(certificate)
    if expected not in found:
        held = ", ".join(uri.removeprefix(SCHEME) for uri in found) or "none"
        raise CaError(
            f"{path}: this CA belongs to trust domain {held}, not {trust_domain}; "
            f"pass --trust-domain {held} or use another --ca-dir"
        )


def _load_user_root(cert_file: Path, key_file: Path) -> x509.Certificate:
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


def _load_or_make_intermediate(directory: Path, trust_domain: str, root: _UserRoot, now: dt.datetime) -> _Issuer:
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
            return _Issuer(certificate, key)
        log.info("making a new intermediate CA", extra={"ca_dir": str(directory), "reason": problem})
    return _make_intermediate(directory, trust_domain, root, now)


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
    if f"{SCHEME}{trust_domain}" not in _uri_sans(certificate):
        return f"the stored intermediate is not of trust domain {trust_domain}"
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    if certificate.not_valid_after_utc - now < lifetime / 2:
        return "the stored intermediate is past half of its lifetime"
    return None


def _make_intermediate(directory: Path, trust_domain: str, root: _UserRoot, now: dt.datetime) -> _Issuer:
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
    return _Issuer(certificate, key)


def _iso(certificate: x509.Certificate) -> str:
    return certificate.not_valid_after_utc.isoformat()
