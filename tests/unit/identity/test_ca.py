"""The certificate authority: what it issues, what it refuses to certify, what it accepts for renewal."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from agentmesh.identity.keys import sign
from agentmesh.identity.spiffe import SpiffeId
from control_plane.identity.ca import CertificateAuthority, CertificateRejected
from control_plane.identity.csr import CsrRejected, parse_csr, verify_possession
from control_plane.identity.issuers import BACKDATE, INTERMEDIATE_CERT, ROOT_CERT, ROOT_KEY, CaError
from tests.pki import NOW, Clock, csr_pem, forged_leaf, user_root

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca(tmp_path: Path, clock: Clock) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local", clock=clock)


def _csr(key: object | None = None) -> x509.CertificateSigningRequest:
    return parse_csr(csr_pem(key or ec.generate_private_key(ec.SECP256R1())))  # type: ignore[arg-type]


def _verify(chain_pem: bytes, roots_pem: bytes, at: dt.datetime) -> None:
    """Verifies a chain the way a TLS peer does (client and server profiles)."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    store = verification.Store(x509.load_pem_x509_certificates(roots_pem))
    builder = verification.PolicyBuilder().store(store).time(at)
    builder.build_client_verifier().verify(chain[0], chain[1:])
    builder.build_server_verifier(verification.DNSName(RESEARCHER.dns_name)).verify(chain[0], chain[1:])


def test_workload_certificate_shape(ca: CertificateAuthority, clock: Clock) -> None:
    issued = ca.issue(_csr(), RESEARCHER)
    leaf = issued.certificate
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [RESEARCHER.uri]
    assert san.value.get_values_for_type(x509.DNSName) == ["researcher.research.agentmesh.local"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_agreement
    assert not usage.value.key_cert_sign
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = ca.issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(hours=24)
    assert issued.serial == format(leaf.serial_number, "x")
    # The root is not part of the chain; the trust bundle is the root.
    assert x509.load_pem_x509_certificates(issued.chain_pem) == [leaf]
    assert issued.trust_bundle_pem == ca.trust_bundle_pem
    _verify(issued.chain_pem, issued.trust_bundle_pem, NOW)


def test_serials_are_random_and_identity_ignores_the_csr(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    asking = parse_csr(csr_pem(key, sans=[x509.UniformResourceIdentifier("spiffe://agentmesh.local/team/x/agent/y")]))
    first, second = ca.issue(asking, RESEARCHER), ca.issue(asking, RESEARCHER)
    assert first.serial != second.serial
    for issued in (first, second):
        san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [RESEARCHER.uri]


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(public_exponent=65537, key_size=2048)],
    ids=["p384", "rsa2048"],
)
def test_accepted_key_types(ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    issued = ca.issue(parse_csr(csr_pem(key)), RESEARCHER)
    usage = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_agreement is isinstance(key, ec.EllipticCurvePrivateKey)
    _verify(issued.chain_pem, issued.trust_bundle_pem, NOW)


@pytest.mark.parametrize(
    ("pem", "expected"),
    [
        (b"", "csr_pem is empty"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM certificate"),
        (b"hello", "not a PEM certificate signing request"),
        (csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "RSA with 1024 bits"),
        (csr_pem(ec.generate_private_key(ec.SECP521R1())), "curve secp521r1"),
        (csr_pem(ed25519.Ed25519PrivateKey.generate()), "of type Ed25519"),
    ],
    ids=["empty", "garbage-base64", "not-pem", "rsa1024", "p521", "ed25519"],
)
def test_rejected_csrs(pem: bytes, expected: str) -> None:
    with pytest.raises(CsrRejected, match=expected):
        parse_csr(pem)


def test_csr_with_a_broken_signature_is_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(x509.load_pem_x509_csr(csr_pem(key)).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrRejected, match="signature does not verify"):
        parse_csr(tampered)


def test_ttl_is_capped_at_the_issuer_expiry(tmp_path: Path, clock: Clock) -> None:
    cert_file, key_file, root, _ = user_root(tmp_path, lifetime=dt.timedelta(hours=2))
    ca = CertificateAuthority.open(
        tmp_path / "ca",
        trust_domain="agentmesh.local",
        workload_ttl=dt.timedelta(hours=24),
        root_cert_file=cert_file,
        root_key_file=key_file,
        clock=clock,
    )
    assert ca.issuer_not_after == root.not_valid_after_utc
    issued = ca.issue(_csr(), RESEARCHER)
    assert issued.not_after == root.not_valid_after_utc
    _verify(issued.chain_pem, issued.trust_bundle_pem, NOW)


def test_own_root_is_persisted_with_a_private_key_file(tmp_path: Path, clock: Clock) -> None:
    first = CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local", clock=clock)
    mode = stat.S_IMODE(os.stat(tmp_path / "ca" / ROOT_KEY).st_mode)
    assert mode == 0o600
    again = CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local", clock=clock)
    assert again.trust_bundle_pem == first.trust_bundle_pem
    # A certificate from before the restart renews with the CA after it.
    issued = first.issue(_csr(), RESEARCHER)
    assert again.verify_workload(issued.chain_pem)[0] == RESEARCHER


def test_a_ca_directory_keeps_its_trust_domain(tmp_path: Path) -> None:
    CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local")
    with pytest.raises(CaError, match=r"belongs to trust domain agentmesh.local, not example.org.*--trust-domain"):
        CertificateAuthority.open(tmp_path / "ca", trust_domain="example.org")


def test_broken_ca_directories_are_named(tmp_path: Path) -> None:
    CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local")
    (tmp_path / "ca" / ROOT_KEY).unlink()
    with pytest.raises(CaError, match=rf"{ROOT_KEY}: missing while its pair exists"):
        CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local")
    (tmp_path / "ca" / ROOT_KEY).write_text("not a key")
    with pytest.raises(CaError, match=rf"{ROOT_KEY}: not a PEM private key"):
        CertificateAuthority.open(tmp_path / "ca", trust_domain="agentmesh.local")


def test_invalid_trust_domain() -> None:
    with pytest.raises(ValueError, match="not a valid trust domain"):
        CertificateAuthority.in_memory(trust_domain="Not_A_Domain")


def test_intermediate_under_a_user_root(tmp_path: Path, clock: Clock) -> None:
    cert_file, key_file, root, _ = user_root(tmp_path)
    ca = CertificateAuthority.open(
        tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file, root_key_file=key_file, clock=clock
    )
    assert ca.is_intermediate
    intermediate = ca.issuer_certificate
    intermediate.verify_directly_issued_by(root)
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert x509.load_pem_x509_certificates(ca.trust_bundle_pem) == [root]
    spiffe_id = SpiffeId("example.org", "research", "researcher")
    issued = ca.issue(_csr(), spiffe_id)
    assert x509.load_pem_x509_certificates(issued.chain_pem) == [issued.certificate, intermediate]
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    store = verification.Store([root])
    verification.PolicyBuilder().store(store).time(NOW).build_client_verifier().verify(chain[0], chain[1:])
    assert ca.verify_workload(issued.chain_pem)[0] == spiffe_id
    # Reopened: the same intermediate, the root's key not needed to sign a new one.
    again = CertificateAuthority.open(
        tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file, root_key_file=key_file, clock=clock
    )
    assert again.issuer_pem == ca.issuer_pem
    # Another root: a new intermediate under it.
    other_cert, other_key, other_root, _ = user_root(tmp_path, name="Other Root")
    moved = CertificateAuthority.open(
        tmp_path / "ca", trust_domain="example.org", root_cert_file=other_cert, root_key_file=other_key, clock=clock
    )
    moved.issuer_certificate.verify_directly_issued_by(other_root)
    assert (tmp_path / "ca" / INTERMEDIATE_CERT).read_bytes() == moved.issuer_pem


def test_intermediate_is_renewed_when_it_nears_expiry(tmp_path: Path, clock: Clock) -> None:
    cert_file, key_file, root, _ = user_root(tmp_path)
    ca = CertificateAuthority.open(
        tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file, root_key_file=key_file, clock=clock
    )
    first = ca.issuer_pem
    clock.now = ca.issuer_not_after - dt.timedelta(hours=1)
    issued = ca.issue(_csr(), SpiffeId("example.org", "research", "researcher"))
    assert ca.issuer_pem != first
    assert issued.not_after == clock.now + dt.timedelta(hours=24)
    ca.issuer_certificate.verify_directly_issued_by(root)


@pytest.mark.parametrize(
    ("path_length", "expected"),
    [(0, "path length is 0")],
)
def test_unusable_user_roots(tmp_path: Path, path_length: int, expected: str) -> None:
    cert_file, key_file, _, _ = user_root(tmp_path, path_length=path_length)
    with pytest.raises(CaError, match=expected):
        CertificateAuthority.open(
            tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file, root_key_file=key_file
        )


def test_user_root_key_must_match(tmp_path: Path) -> None:
    cert_file, _, _, _ = user_root(tmp_path)
    _, other_key, _, _ = user_root(tmp_path, name="Other")
    with pytest.raises(CaError, match="does not belong to"):
        CertificateAuthority.open(
            tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file, root_key_file=other_key
        )
    with pytest.raises(CaError, match="give both --ca-cert and --ca-key"):
        CertificateAuthority.open(tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file)


# --- renewal checks ------------------------------------------------------------------------------------------------


def _root(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certificate = x509.load_pem_x509_certificate((ca_dir / ROOT_CERT).read_bytes())
    key = serialization.load_pem_private_key((ca_dir / ROOT_KEY).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return certificate, key


def _rejection(ca: CertificateAuthority, chain_pem: bytes) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as caught:
        ca.verify_workload(chain_pem)
    return caught.value


def test_verify_workload_refusals(tmp_path: Path, ca: CertificateAuthority, clock: Clock) -> None:
    root, root_key = _root(tmp_path / "ca")
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    assert _rejection(ca, b"").reason == "invalid_certificate"
    assert _rejection(ca, b"garbage").reason == "invalid_certificate"
    expired = forged_leaf(
        root, root_key, leaf_key, RESEARCHER.uri, not_before=NOW - dt.timedelta(days=2), not_after=NOW
    )
    refused = _rejection(ca, expired)
    assert refused.reason == "expired_certificate" and "expired at" in refused.message
    foreign = forged_leaf(
        root,
        root_key,
        leaf_key,
        "spiffe://example.org/team/research/agent/researcher",
        not_before=NOW - dt.timedelta(hours=1),
        not_after=NOW + dt.timedelta(hours=1),
    )
    assert _rejection(ca, foreign).reason == "wrong_trust_domain"
    not_agent = forged_leaf(
        root,
        root_key,
        leaf_key,
        "spiffe://agentmesh.local/ns/default/sa/x",
        not_before=NOW - dt.timedelta(hours=1),
        not_after=NOW + dt.timedelta(hours=1),
    )
    assert _rejection(ca, not_agent).reason == "invalid_certificate"
    other = CertificateAuthority.in_memory(trust_domain="agentmesh.local", clock=clock)
    untrusted = other.issue(_csr(), RESEARCHER)
    refused = _rejection(ca, untrusted.chain_pem)
    assert refused.reason == "untrusted_certificate" and "not issued by this mesh's CA" in refused.message
    # Self-signed, with the right SPIFFE ID: still not from this CA.
    itself = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(leaf_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .sign(leaf_key, hashes.SHA256())
    )
    self_signed = forged_leaf(
        itself,
        leaf_key,
        leaf_key,
        RESEARCHER.uri,
        not_before=NOW - dt.timedelta(hours=1),
        not_after=NOW + dt.timedelta(hours=1),
    )
    assert _rejection(ca, self_signed).reason == "untrusted_certificate"
    # Expiry is judged by the CA's clock.
    issued = ca.issue(_csr(), RESEARCHER)
    clock.advance(dt.timedelta(hours=25))
    assert _rejection(ca, issued.chain_pem).reason == "expired_certificate"


def test_proof_of_possession() -> None:
    ca = CertificateAuthority.in_memory(trust_domain="agentmesh.local")
    for key in (
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ):
        leaf = ca.issue(parse_csr(csr_pem(key)), RESEARCHER).certificate
        signature = sign(key, b"the new CSR")
        assert verify_possession(leaf, signature, b"the new CSR")
        assert not verify_possession(leaf, signature, b"another CSR")
        assert not verify_possession(leaf, b"junk", b"the new CSR")
