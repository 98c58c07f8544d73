"""agentmesh.v1.Identity: workloads enroll with a join token, renew with their current certificate.

- `Enroll`: the join token names the identity (`spiffe://<td>/team/<team>/agent/<name>`);
  the CSR only brings the public key (its subject and extensions are ignored).
  The token is checked first, then the CSR, then one use of the token is
  counted atomically, so a malformed CSR does not waste a single-use token.
- `Renew`: the current chain must verify against this CA's roots now, carry an
  agent SPIFFE ID of this trust domain, and `csr_signature` must be the current
  key's signature over the new CSR's DER (proof of possession: a recorded
  request replayed by someone else only certifies a key they do not hold). The
  new certificate carries the same identity.
- `GetTrustBundle`: the roots, for anyone (they are public).

Refusals are domain errors (`IdentityRefused`) turned into a status in one
place (`_answer`): UNAUTHENTICATED for a bad, unknown, expired, revoked or used
up token and for a certificate or signature that proves nothing;
INVALID_ARGUMENT for a malformed CSR, saying what is wrong. Each refusal is
logged with its reason and counted in
`agentmesh_identity_requests_refused_total{operation,reason}`; each issuance is
logged (SPIFFE ID, serial, not_after) and counted in
`agentmesh_identity_certificates_issued_total{operation}`;
`agentmesh_identity_issuer_expiry_timestamp_seconds` tells when the CA
certificate that signs workload certificates ends.

These calls are not behind the admin token (see control_plane/api/auth.py):
the join token or the certificate is the credential.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Final, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import timestamp_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentmesh.identity.spiffe import SpiffeId
from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.identity.ca import (
    REJECTION_REASONS,
    CertificateAuthority,
    CertificateRejected,
    IssuedCertificate,
)
from control_plane.identity.csr import CsrRejected, parse_csr, verify_possession
from control_plane.identity.join_tokens import REFUSALS, JoinTokenRefused, JoinTokenStore
from control_plane.identity.ledger import IssuanceLedger

log = logging.getLogger(__name__)

ENROLL: Final = "enroll"
RENEW: Final = "renew"
INVALID_CSR: Final = "invalid_csr"
BAD_SIGNATURE: Final = "bad_signature"
# Every (operation, reason) pair a refusal can have; the counter's children are made up front.
REFUSAL_LABELS: Final = (
    *((ENROLL, reason) for reason in (*REFUSALS, INVALID_CSR)),
    *((RENEW, reason) for reason in (*REJECTION_REASONS, BAD_SIGNATURE, INVALID_CSR)),
)

_T = TypeVar("_T")


class IdentityRefused(Exception):
    """A refused identity request: status code, metric reason and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    @classmethod
    def unauthenticated(cls, reason: str, message: str) -> IdentityRefused:
        return cls(grpc.StatusCode.UNAUTHENTICATED, reason, message)

    @classmethod
    def invalid_csr(cls, error: CsrRejected) -> IdentityRefused:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, INVALID_CSR, str(error))


class IdentityStats:
    """The Identity service's metrics on the control plane's registry."""

    def __init__(self, registry: CollectorRegistry, ca: CertificateAuthority) -> None:
        self.issued = Counter(
            "agentmesh_identity_certificates_issued",
            "Workload certificates issued, by operation (enroll, renew).",
            ["operation"],
            registry=registry,
        )
        self.refused = Counter(
            "agentmesh_identity_requests_refused",
            "Enroll and Renew requests refused, by operation and reason.",
            ["operation", "reason"],
            registry=registry,
        )
        self.issuer_expiry = Gauge(
            "agentmesh_identity_issuer_expiry_timestamp_seconds",
            "When the CA certificate that signs workload certificates expires (Unix time).",
            registry=registry,
        )
        self.issuer_expiry.set_function(lambda: ca.issuer_not_after.timestamp())
        for operation in (ENROLL, RENEW):
            self.issued.labels(operation=operation)
        for operation, reason in REFUSAL_LABELS:
            self.refused.labels(operation=operation, reason=reason)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class IdentityService(control_pb2_grpc.IdentityServicer):
    """The Identity servicer (grpc.aio); SQLite and signing run in worker threads."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        tokens: JoinTokenStore,
        ledger: IssuanceLedger,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._ca = ca
        self._tokens = tokens
        self._ledger = ledger
        self.stats = IdentityStats(registry if registry is not None else CollectorRegistry(), ca)

    def __repr__(self) -> str:
        return f"IdentityService(ca={self._ca!r})"

    async def _answer(self, operation: str, context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[_T]) -> _T:
        """Awaits one request's work; a refusal is logged, counted and ends the call with its status."""
        try:
            return await work
        except IdentityRefused as refused:
            self.stats.refused.labels(operation=operation, reason=refused.reason).inc()
            log.warning(
                "identity request refused",
                extra={
                    "operation": operation,
                    "reason": refused.reason,
                    "detail": refused.message,
                    "peer": context.peer(),
                },
            )
            await context.abort(refused.code, refused.message)

    # --- Enroll ----------------------------------------------------------------------------------------------------

    async def Enroll(
        self, request: control_pb2.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.IdentityCertificate:
        return await self._answer(ENROLL, context, self._enroll(request))

    async def _enroll(self, request: control_pb2.EnrollRequest) -> control_pb2.IdentityCertificate:
        try:
            # Refuse a token that cannot be used before looking at the CSR; the use is counted only after.
            await asyncio.to_thread(self._tokens.check, request.join_token)
        except JoinTokenRefused as refused:
            raise IdentityRefused.unauthenticated(refused.reason, refused.message) from None
        csr = _csr(request.csr_pem)
        try:
            token = await asyncio.to_thread(self._tokens.consume, request.join_token)
        except JoinTokenRefused as refused:
            raise IdentityRefused.unauthenticated(refused.reason, refused.message) from None
        spiffe_id = token.spiffe_id(self._ca.trust_domain)
        issued = await asyncio.to_thread(self._issue, csr, spiffe_id, ENROLL, token.id)
        return _certificate_message(issued)

    # --- Renew -----------------------------------------------------------------------------------------------------

    async def Renew(
        self, request: control_pb2.RenewRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.IdentityCertificate:
        return await self._answer(RENEW, context, self._renew(request))

    async def _renew(self, request: control_pb2.RenewRequest) -> control_pb2.IdentityCertificate:
        try:
            spiffe_id, leaf = self._ca.verify_workload(request.certificate_chain_pem)
        except CertificateRejected as rejected:
            raise IdentityRefused.unauthenticated(rejected.reason, rejected.message) from None
        csr = _csr(request.csr_pem)
        if not request.csr_signature:
            raise IdentityRefused.unauthenticated(
                BAD_SIGNATURE, "csr_signature is empty: sign the new CSR's DER with the current key"
            )
        if not verify_possession(leaf, request.csr_signature, csr.public_bytes(serialization.Encoding.DER)):
            raise IdentityRefused.unauthenticated(
                BAD_SIGNATURE,
                "csr_signature does not verify with the current certificate's key over the new CSR's DER "
                "(ECDSA or RSA PKCS#1 v1.5, SHA-256)",
            )
        issued = await asyncio.to_thread(self._issue, csr, spiffe_id, RENEW, format(leaf.serial_number, "x"))
        return _certificate_message(issued)

    # --- GetTrustBundle --------------------------------------------------------------------------------------------

    async def GetTrustBundle(
        self, request: control_pb2.GetTrustBundleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.TrustBundle:
        return control_pb2.TrustBundle(trust_domain=self._ca.trust_domain, trust_bundle_pem=self._ca.trust_bundle_pem)

    # --- issuing ---------------------------------------------------------------------------------------------------

    def _issue(
        self, csr: x509.CertificateSigningRequest, spiffe_id: SpiffeId, operation: str, authorized_by: str
    ) -> IssuedCertificate:
        """Signs, counts and logs one certificate (in a worker thread)."""
        issued = self._ca.issue(csr, spiffe_id)
        self._ledger.record()
        self.stats.issued.labels(operation=operation).inc()
        log.info(
            "certificate issued",
            extra={
                "operation": operation,
                "spiffe_id": spiffe_id.uri,
                "serial": issued.serial,
                "not_after": issued.not_after.isoformat(),
                # The join token's id (enroll) or the serial of the certificate renewed.
                "authorized_by": authorized_by,
            },
        )
        return issued


def _csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return parse_csr(csr_pem)
    except CsrRejected as error:
        raise IdentityRefused.invalid_csr(error) from None


def _certificate_message(issued: IssuedCertificate) -> control_pb2.IdentityCertificate:
    return control_pb2.IdentityCertificate(
        spiffe_id=issued.spiffe_id.uri,
        certificate_chain_pem=issued.chain_pem,
        trust_bundle_pem=issued.trust_bundle_pem,
        not_before=timestamp(issued.not_before),
        not_after=timestamp(issued.not_after),
    )
