"""Checks on what a workload sends the CA: its certificate signing request, its key, and its proof of possession.

Everything here judges caller input before anything is signed, and says precisely what is wrong
(`CsrRejected`), so the Identity service can answer INVALID_ARGUMENT with that message. Only EC P-256/P-384
and RSA >= 2048 keys are accepted, for workloads and for a CA key given by the user alike
(control_plane/identity/issuers.py applies `check_public_key` to those).
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MIN_RSA_BITS: Final = 2048
ACCEPTED_CURVES: Final = ("secp256r1", "secp384r1")


class CsrRejected(ValueError):
    """A certificate signing request that cannot be certified; the message says what is wrong with it."""


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
