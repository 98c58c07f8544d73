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

This module owns the signing and the verifying; the CA certificates, their files and their checks are in
control_plane/identity/issuers.py, and the checks on a caller's CSR and key in control_plane/identity/csr.py.

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

import datetime as dt
import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from agentmesh.identity.control_plane_tls import check_server_name, control_plane_server_name
from agentmesh.identity.keys import generate_key, private_key_pem
from agentmesh.identity.spiffe import InvalidSpiffeId, SpiffeId, check_trust_domain
from control_plane.identity.csr import check_public_key
from control_plane.identity.issuers import (
    BACKDATE,
    CaError,
    Issuer,
    UserRoot,
    key_identifiers,
    load_or_make_intermediate,
    load_or_make_root,
    load_user_root,
    make_intermediate,
    new_root,
    uri_sans,
)

log = logging.getLogger(__name__)

DEFAULT_WORKLOAD_TTL: Final = dt.timedelta(hours=24)

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


class _Signed:
    """Serial and validity read from `certificate`."""

    certificate: x509.Certificate

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
class IssuedCertificate(_Signed):
    """One signed workload certificate and what a workload needs with it."""

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    # Leaf first, then intermediates (not the root), PEM.
    chain_pem: bytes
    trust_bundle_pem: bytes


@dataclass(frozen=True)
class ServerCertificate(_Signed):
    """The control plane's own TLS certificate for its secure port, with its key (made here, never sent)."""

    certificate: x509.Certificate
    private_key_pem: bytes
    # Leaf first, then intermediates (not the root), PEM.
    chain_pem: bytes

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


class CertificateAuthority:
    """Signs workload certificates for SPIFFE IDs of one trust domain; verifies certificates it (or its root) issued.

    Open one with `CertificateAuthority.open(...)`. Safe to call from worker threads: its state is replaced with one
    reference assignment when the intermediate is renewed.
    """

    def __init__(
        self,
        *,
        trust_domain: str,
        issuer: Issuer,
        roots: Sequence[x509.Certificate],
        workload_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
        ca_dir: Path | None = None,
        user_root: UserRoot | None = None,
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
            user_root = UserRoot(load_user_root(Path(root_cert_file), Path(root_key_file)), Path(root_key_file))
            issuer = load_or_make_intermediate(directory, trust_domain, user_root, clock())
            return cls(
                trust_domain=trust_domain,
                issuer=issuer,
                roots=(user_root.certificate,),
                workload_ttl=workload_ttl,
                ca_dir=directory,
                user_root=user_root,
                clock=clock,
            )
        root = load_or_make_root(directory, trust_domain, clock())
        return cls(
            trust_domain=trust_domain, issuer=root, roots=(root.certificate,), workload_ttl=workload_ttl, clock=clock
        )

    @classmethod
    def in_memory(
        cls, *, trust_domain: str, workload_ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL, clock: Clock = utc_now
    ) -> CertificateAuthority:
        """A new self-signed root kept in memory only (a control plane without a database file)."""
        root = new_root(check_trust_domain(trust_domain), clock())
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
        builder = key_identifiers(builder, public_key, issuer.certificate)
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
        builder = key_identifiers(builder, key.public_key(), issuer.certificate)
        certificate = builder.sign(issuer.key, hashes.SHA256())
        chain = (certificate, issuer.certificate) if self._user_root is not None else (certificate,)
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        return ServerCertificate(certificate, private_key_pem(key), chain_pem)

    def _current_issuer(self, now: dt.datetime) -> Issuer:
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
                renewed = make_intermediate(self._ca_dir, self.trust_domain, self._user_root, now)
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
        uris = uri_sans(leaf)
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
