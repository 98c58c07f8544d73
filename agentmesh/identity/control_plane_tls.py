"""The client side of the control plane's secure port: dialing it with TLS, verified with the mesh's trust bundle.

The control plane serves its gRPC services twice: plaintext on `--listen`
(15010) and, when `--secure-listen` is set (15012, as istiod does), with TLS
and a certificate its own CA issues (control_plane/identity/server_tls.py).
A client opts in with the trust bundle (`agentmesh ca bundle > ca.pem`): the
sidecar's `control_plane.ca_file`, the CLI's `--ca-file`, the identity agent's
`--ca-file`. It then verifies that the server holds a certificate of this
mesh's CA for the expected server name before a join token, an admin bearer
token or xDS crosses the wire. Only the server is authenticated: clients
present no certificate (the admin API keeps its bearer tokens, Enroll its join
tokens, Renew its signature proof).

The server name defaults to `control-plane.<trust domain>`, the trust domain
read from the bundle's root (the control plane's own root names it in a
`spiffe://<trust-domain>` URI SAN); a bundle that names none (a user root
under `--ca-cert`) gives `control-plane.agentmesh.local`. `server_name`
overrides it, e.g. with an IP address or DNS name listed in `--secure-san`.

grpc's own import is the only heavy one here; cryptography is loaded only
when a bundle is read.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from agentmesh.identity.spiffe import DEFAULT_TRUST_DOMAIN, SCHEME

SERVER_NAME_PREFIX: Final = "control-plane."
DEFAULT_SERVER_NAME: Final = f"{SERVER_NAME_PREFIX}{DEFAULT_TRUST_DOMAIN}"
# The option grpc checks the server certificate's DNS or IP SAN against, instead of the address's host.
TARGET_NAME_OPTION: Final = "grpc.ssl_target_name_override"

_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

ChannelOptions = Sequence[tuple[str, str | int]]


class TrustBundleError(ValueError):
    """A trust bundle file or server name that cannot be used; the message names the file or value and why."""


def control_plane_server_name(trust_domain: str) -> str:
    """The DNS name every control-plane server certificate carries: `control-plane.<trust domain>`."""
    return f"{SERVER_NAME_PREFIX}{trust_domain}"


def check_server_name(value: str) -> str:
    """A DNS name or an IP address a certificate can carry as a SAN; raises TrustBundleError saying why not."""
    name = value.strip()
    if not name:
        raise TrustBundleError("the server name is empty: give a DNS name or an IP address")
    try:
        return str(ipaddress.ip_address(name.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise TrustBundleError(
            f"{value!r} is neither an IP address nor a DNS name (letters, digits, '-' in labels of at most 63, "
            "separated by dots)"
        )
    return name.rstrip(".").lower()


def _bundle_trust_domain(roots: Sequence[object]) -> str | None:
    """The one trust domain the bundle's CA certificates name in `spiffe://<td>` URI SANs, if exactly one."""
    from cryptography import x509

    found: set[str] = set()
    for certificate in roots:
        assert isinstance(certificate, x509.Certificate)
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(SCHEME) and "/" not in uri[len(SCHEME) :]:
                found.add(uri[len(SCHEME) :])
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class ControlPlaneTls:
    """TLS to the control plane's secure port: the roots its certificate must chain to and the name it must carry."""

    roots_pem: bytes = field(repr=False)
    server_name: str
    # Where the roots were read from (for messages); None when given as PEM.
    ca_file: Path | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, server_name: str | None = None) -> ControlPlaneTls:
        """Reads a PEM trust bundle (`agentmesh ca bundle`); raises TrustBundleError naming the file and the reason."""
        from cryptography import x509

        file = Path(path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise TrustBundleError(f"{file}: cannot read the trust bundle: {exc.strerror or exc}") from None
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            certificates = []
        if not certificates:
            raise TrustBundleError(
                f"{file}: no PEM certificate in it; give the control plane's trust bundle (agentmesh ca bundle > FILE)"
            )
        authorities = [certificate for certificate in certificates if _is_ca(certificate)]
        if not authorities:
            raise TrustBundleError(
                f"{file}: holds no CA certificate (basicConstraints CA=true); give the control plane's trust bundle "
                "(agentmesh ca bundle > FILE), not a workload certificate"
            )
        if server_name:
            name = check_server_name(server_name)
        else:
            trust_domain = _bundle_trust_domain(authorities)
            name = control_plane_server_name(trust_domain) if trust_domain else DEFAULT_SERVER_NAME
        return cls(data, name, file)

    def credentials(self) -> grpc.ChannelCredentials:
        """Server authentication only: the roots to verify the control plane with, no client certificate."""
        return grpc.ssl_channel_credentials(root_certificates=self.roots_pem)

    def options(self, options: ChannelOptions = ()) -> list[tuple[str, str | int]]:
        """`options` plus the server name grpc verifies the certificate against."""
        return [*(item for item in options if item[0] != TARGET_NAME_OPTION), (TARGET_NAME_OPTION, self.server_name)]

    def describe(self) -> str:
        source = f"roots from {self.ca_file}" if self.ca_file is not None else "given roots"
        return f"TLS, server name {self.server_name}, {source}"


def _is_ca(certificate: object) -> bool:
    from cryptography import x509

    assert isinstance(certificate, x509.Certificate)
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True)
class ControlPlaneTarget:
    """Where the control plane is and how to dial it: plaintext (`tls` None) or TLS to its secure port."""

    address: str
    tls: ControlPlaneTls | None = None

    def __str__(self) -> str:
        return self.address if self.tls is None else f"{self.address} ({self.tls.describe()})"

    def aio_channel(self, options: ChannelOptions = ()) -> grpc.aio.Channel:
        """A new grpc.aio channel (the caller closes it)."""
        return open_aio_channel(self.address, self.tls, options)

    def channel(self, options: ChannelOptions = ()) -> grpc.Channel:
        """A new blocking channel (the caller closes it)."""
        if self.tls is None:
            return grpc.insecure_channel(self.address, options=list(options))
        return grpc.secure_channel(self.address, self.tls.credentials(), options=self.tls.options(options))


def open_aio_channel(address: str, tls: ControlPlaneTls | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to the control plane at `address`: plaintext, or TLS verified with `tls`."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=tls.options(options))


def explain_connection_failure(details: str, tls: ControlPlaneTls | None) -> str | None:
    """What a failed connection's details say about TLS to the control plane, for people; None when nothing.

    grpc reports every handshake failure as UNAVAILABLE with its own words in the details; this picks the
    common cases: a plaintext client on the secure port, a TLS client on the plaintext port, roots of another
    CA, a certificate without the expected name.
    """
    if tls is None:
        if "Socket closed" in details or "Connection reset" in details:
            return (
                "the connection was closed at once: if this is the control plane's secure (TLS) port, "
                "pass its trust bundle with --ca-file (agentmesh ca bundle > ca.pem, over the plaintext port)"
            )
        return None
    bundle = str(tls.ca_file) if tls.ca_file is not None else "the trust bundle"
    if "WRONG_VERSION_NUMBER" in details:
        return (
            "the server does not speak TLS: this looks like the control plane's plaintext port; "
            "use its --secure-listen address, or drop --ca-file"
        )
    if "Hostname Verification" in details or "No match found for server name" in details:
        return (
            f"the control plane's certificate does not carry the name {tls.server_name}: pass --server-name with "
            "a name from its --secure-san options, or control-plane.<trust domain>"
        )
    if "handshake failed" in details.lower() or "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"the control plane's certificate was not issued under the roots in {bundle}: fetch this control "
            "plane's bundle with `agentmesh ca bundle`"
        )
    return None
