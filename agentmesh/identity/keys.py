"""A workload's keys: made locally, never sent anywhere; CSRs and proofs of possession built from them.

A workload generates an EC P-256 key, sends only a CSR (PKCS#10) to the
control plane, and proves it holds its current key when renewing by signing
the new CSR's DER with it (ECDSA/SHA-256, or RSA PKCS#1 v1.5/SHA-256 for RSA
keys). `material_from_pem` assembles an `IdentityMaterial` from PEM and checks
that the pieces belong together (the leaf certifies this key; the leaf carries
one agent SPIFFE ID).
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import InvalidSpiffeId, SpiffeId

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class MaterialError(ValueError):
    """Key, chain or bundle PEM that is unreadable or does not belong together; the message says which."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (what `key.pem` holds)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes) -> PrivateKey:
    """Reads an unencrypted PEM EC or RSA private key; MaterialError otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, ValueError) as exc:
        raise MaterialError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise MaterialError(f"the private key must be EC or RSA, not {type(key).__name__}")
    return key


def build_csr(key: PrivateKey, spiffe_id: SpiffeId | None = None) -> bytes:
    """A PEM CSR for `key`; the SPIFFE ID, when known, is only informative (the control plane decides the identity)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id.uri)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def csr_der(csr_pem: bytes) -> bytes:
    """The DER of a PEM CSR: what a renewal's proof of possession signs."""
    return x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)


def sign(key: PrivateKey, data: bytes) -> bytes:
    """ECDSA/SHA-256 (DER signature) for EC keys, RSA PKCS#1 v1.5/SHA-256 for RSA keys."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The one agent SPIFFE ID (URI SAN) of a workload certificate; MaterialError otherwise."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise MaterialError(f"the certificate must carry exactly one URI SAN (a SPIFFE ID), found {len(uris)}")
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise MaterialError(str(exc)) from None


def material_from_pem(
    private_key_pem: bytes, certificate_chain_pem: bytes, trust_bundle_pem: bytes, *, generation: int = 0
) -> IdentityMaterial:
    """IdentityMaterial from its PEM parts, after checking the leaf certifies the key; MaterialError otherwise."""
    key = load_private_key(private_key_pem)
    try:
        chain = x509.load_pem_x509_certificates(certificate_chain_pem)
    except ValueError as exc:
        raise MaterialError(f"not a PEM certificate chain: {exc}") from None
    try:
        roots = x509.load_pem_x509_certificates(trust_bundle_pem)
    except ValueError as exc:
        raise MaterialError(f"the trust bundle is not PEM certificates: {exc}") from None
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise MaterialError("the certificate does not certify this private key")
    if not roots:
        raise MaterialError("the trust bundle holds no certificate")
    not_before: datetime = leaf.not_valid_before_utc
    not_after: datetime = leaf.not_valid_after_utc
    return IdentityMaterial(
        spiffe_id=leaf_spiffe_id(leaf),
        private_key_pem=private_key_pem,
        certificate_chain_pem=certificate_chain_pem,
        trust_bundle_pem=trust_bundle_pem,
        not_before=not_before,
        not_after=not_after,
        generation=generation,
    )
