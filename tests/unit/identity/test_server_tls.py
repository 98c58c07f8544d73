"""The control plane's own certificate for its secure port: what the CA issues, and how ServerTls renews it."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client import CollectorRegistry

from control_plane.identity.ca import CertificateAuthority, CertificateRejected, ServerCertificate
from control_plane.identity.issuers import BACKDATE
from control_plane.identity.server_tls import ServerTls
from tests.pki import NOW, Clock, user_root

HOUR = dt.timedelta(hours=1)
EXPIRY = "agentmesh_control_plane_certificate_expiry_timestamp_seconds"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca(clock: Clock) -> CertificateAuthority:
    return CertificateAuthority.in_memory(trust_domain="example.org", clock=clock)


def _verify_server(issued: ServerCertificate, roots_pem: bytes, name: x509.GeneralName, at: dt.datetime) -> None:
    """Verifies the chain as a TLS client dialing `name` does."""
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    store = verification.Store(x509.load_pem_x509_certificates(roots_pem))
    subject: verification.Subject
    if isinstance(name, x509.IPAddress):
        subject = verification.IPAddress(name.value)
    else:
        subject = verification.DNSName(name.value)
    builder = verification.PolicyBuilder().store(store).time(at)
    builder.build_server_verifier(subject).verify(chain[0], chain[1:])


def test_server_certificate_names_the_control_plane_and_the_extra_names(ca: CertificateAuthority) -> None:
    issued = ca.issue_server_certificate(["127.0.0.1", "CP.example.org.", "::1", "127.0.0.1"], ttl=HOUR)
    assert issued.names == ("control-plane.example.org", "cp.example.org", "127.0.0.1", "::1")
    certificate = issued.certificate
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and not san.value.get_values_for_type(x509.UniformResourceIdentifier), "no SPIFFE ID"
    assert certificate.subject == x509.Name([])
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert issued.not_before == NOW - BACKDATE and issued.not_after == NOW + HOUR
    for name in (
        x509.DNSName("control-plane.example.org"),
        x509.DNSName("cp.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        _verify_server(issued, ca.trust_bundle_pem, name, NOW)
    with pytest.raises(verification.VerificationError):
        _verify_server(issued, ca.trust_bundle_pem, x509.DNSName("other.example.org"), NOW)
    assert b"PRIVATE KEY" in issued.private_key_pem


def test_server_certificate_is_no_workload_identity(ca: CertificateAuthority) -> None:
    issued = ca.issue_server_certificate(ttl=HOUR)
    with pytest.raises(CertificateRejected) as refused:
        ca.verify_workload(issued.chain_pem)
    assert refused.value.reason == "invalid_certificate"


def test_server_certificate_never_outlives_the_issuer(tmp_path: Path, clock: Clock) -> None:
    cert_file, key_file, root, _ = user_root(tmp_path, lifetime=dt.timedelta(days=2))
    ca = CertificateAuthority.open(
        tmp_path / "ca", trust_domain="example.org", root_cert_file=cert_file, root_key_file=key_file, clock=clock
    )
    issued = ca.issue_server_certificate(ttl=dt.timedelta(days=30))
    assert issued.not_after == root.not_valid_after_utc
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    assert len(chain) == 2, "leaf + intermediate under a user root"
    _verify_server(issued, ca.trust_bundle_pem, x509.DNSName("control-plane.example.org"), NOW)


@pytest.mark.parametrize(
    ("names", "ttl", "message"),
    [
        (["not a name"], HOUR, "neither an IP address nor a DNS name"),
        ([""], HOUR, "empty"),
        ([], dt.timedelta(0), "TTL must be positive"),
    ],
)
def test_server_certificate_refuses_bad_names_and_ttls(
    ca: CertificateAuthority, names: list[str], ttl: dt.timedelta, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ca.issue_server_certificate(names, ttl=ttl)


def test_renewed_at_half_of_its_life(ca: CertificateAuthority, clock: Clock) -> None:
    metrics = CollectorRegistry()
    tls = ServerTls(ca, extra_names=["127.0.0.1"], ttl=4 * HOUR, registry=metrics, clock=clock)
    first = tls.current
    assert tls.renewal_due == NOW + 2 * HOUR
    assert metrics.get_sample_value(EXPIRY) == first.not_after.timestamp()
    clock.advance(2 * HOUR - dt.timedelta(seconds=1))
    assert tls.renew_if_due() is False and tls.current is first
    clock.advance(dt.timedelta(seconds=1))
    assert tls.renew_if_due() is True
    assert tls.current.serial != first.serial and tls.current.names == first.names
    assert tls.current.not_after == clock.now + 4 * HOUR
    assert tls.renewal_due == clock.now + 2 * HOUR
    assert metrics.get_sample_value(EXPIRY) == tls.current.not_after.timestamp()
    assert tls.renewals == 1


def test_handshakes_get_the_new_certificate_once(ca: CertificateAuthority, clock: Clock) -> None:
    tls = ServerTls(ca, ttl=HOUR, clock=clock)
    assert isinstance(tls.credentials(), grpc.ServerCredentials)
    assert tls._fetch() is None, "nothing new: grpc keeps the configuration it has"
    clock.advance(HOUR / 2)
    # grpc asks before a handshake; the fetch renews by itself when the renewal task is late.
    assert isinstance(tls._fetch(), grpc.ServerCertificateConfiguration)
    assert tls.renewals == 1
    assert tls._fetch() is None


def test_a_failed_renewal_keeps_the_certificate_and_retries(
    ca: CertificateAuthority, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(ca, ttl=HOUR, clock=clock)
    tls.credentials()
    first = tls.current
    clock.advance(HOUR / 2)

    def broken(*args: object, **kwargs: object) -> ServerCertificate:
        raise RuntimeError("signing failed")

    monkeypatch.setattr(ca, "issue_server_certificate", broken)
    assert tls.renew_if_due() is False
    assert tls.current is first
    assert "cannot renew the secure port's certificate" in caplog.text
    # Retried after a quarter of what is left (30 min left: 7.5 min; capped at 30 s).
    assert tls.renewal_due == clock.now + dt.timedelta(seconds=30)
    assert tls._fetch() is None, "a handshake still gets the current certificate"
