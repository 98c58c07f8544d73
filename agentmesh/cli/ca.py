"""`agentmesh ca`: the mesh's certificate authority as the control plane runs it (role viewer).

`show` prints the trust domain, the certificate that signs workload
certificates (the control plane's own root, or its intermediate under a
user-provided root), when it expires, the workload certificate lifetime and
how many certificates were issued. `bundle` prints the roots PEM, to give to
anything that must verify the mesh's certificates. See docs/identity.md.

Exit codes: 0 done; 1 the control plane refused or failed the call; 3 the
control plane cannot be reached.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from agentmesh.cli._client import AdminClient, connection_options
from agentmesh.cli._output import NONE, age, emit, message_data, output_option, utc_time, when
from agentmesh.v1 import control_pb2


def _fetch() -> control_pb2.CertificateAuthority:
    with AdminClient.from_context() as client:
        answer: control_pb2.CertificateAuthority = client.call(
            "GetCertificateAuthority", control_pb2.GetCertificateAuthorityRequest()
        )
    return answer


def _issuer(pem: bytes) -> tuple[str, bool]:
    """The issuer's subject (RFC 4514) and whether it is a self-signed root."""
    from cryptography import x509

    if not pem:
        return NONE, False
    certificate = x509.load_pem_x509_certificate(pem)
    return certificate.subject.rfc4514_string(), certificate.issuer == certificate.subject


def _seconds(duration: Any) -> str:
    seconds = int(duration.ToTimedelta().total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _data(authority: control_pb2.CertificateAuthority) -> dict[str, Any]:
    data = message_data(authority)
    data["trust_bundle_pem"] = authority.trust_bundle_pem.decode()
    data["issuer_pem"] = authority.issuer_pem.decode()
    return data


def _describe(authority: control_pb2.CertificateAuthority, now: datetime) -> str:
    subject, is_root = _issuer(authority.issuer_pem)
    expires = when(authority.issuer_not_after)
    left = f"in {age(now, now=expires)}" if expires is not None and expires > now else "EXPIRED"
    roots = authority.trust_bundle_pem.count(b"-----BEGIN CERTIFICATE-----")
    return "\n".join(
        [
            f"Trust domain:    {authority.trust_domain}",
            f"Issuer:          {subject} ({'own root' if is_root else 'intermediate under a user root'})",
            f"Issuer expires:  {utc_time(expires)} ({left})",
            f"Workload TTL:    {_seconds(authority.workload_ttl)}",
            f"Issued:          {authority.issued} certificate(s)",
            f"Roots:           {roots} (agentmesh ca bundle)",
        ]
    )


@click.group()
@connection_options
def ca() -> None:
    """Show the mesh's certificate authority and print its roots (role viewer).

    The control plane signs a short-lived certificate for every enrolled
    workload (spiffe://<trust-domain>/team/<team>/agent/<name>); peers verify
    them with the roots `ca bundle` prints.

    \b
    Examples:
      agentmesh ca show
      agentmesh ca bundle > root-cert.pem

    Exit codes: 0 done, 1 refused or failed, 3 control plane unreachable.
    """


@ca.command()
@output_option
@connection_options
def show(output: str) -> None:
    """Show the trust domain, the issuing certificate, its expiry and the issued count.

    -o json and -o yaml include the roots and the issuer as PEM text.

    \b
    Examples:
      agentmesh ca show
      agentmesh ca show -o json

    Exit codes: 0 shown, 1 refused, 3 unreachable.
    """
    authority = _fetch()
    emit(output, _data(authority), lambda: _describe(authority, datetime.now(UTC)))


@ca.command()
@connection_options
def bundle() -> None:
    """Print the roots (PEM) that workload certificates are verified with.

    \b
    Example:
      agentmesh ca bundle > root-cert.pem

    Exit codes: 0 printed, 1 refused, 3 unreachable.
    """
    click.echo(_fetch().trust_bundle_pem.decode(), nl=False)
