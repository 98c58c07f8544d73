"""A client of the control plane's Identity service: enroll with a join token, renew with the current certificate.

The private key stays here: the client sends a CSR and, to renew, the current
chain with the current key's signature over the new CSR's DER. Answers are
checked before use (the certificate must certify the key that was sent, and a
renewal must keep the identity). A failed call raises `IdentityError` carrying
the gRPC status and the control plane's reason; `retryable` tells a refusal
(bad token or certificate, malformed CSR) from a control plane that could not
be reached.
"""

from __future__ import annotations

from typing import Final

import grpc

from agentmesh.identity.keys import (
    MaterialError,
    PrivateKey,
    build_csr,
    csr_der,
    load_private_key,
    material_from_pem,
    private_key_pem,
    sign,
)
from agentmesh.identity.material import IdentityMaterial
from agentmesh.v1 import control_pb2, control_pb2_grpc

DEFAULT_TIMEOUT: Final = 10.0
# Codes that say nothing about the request itself: trying again later may work.
_RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class IdentityError(Exception):
    """Enrollment or renewal failed; `code` is the gRPC status (None for a bad answer), `reason` the server's words."""

    def __init__(self, operation: str, reason: str, code: grpc.StatusCode | None = None) -> None:
        where = f" ({code.name})" if code is not None else ""
        super().__init__(f"{operation} failed{where}: {reason}")
        self.operation = operation
        self.reason = reason
        self.code = code

    @property
    def retryable(self) -> bool:
        """True when the control plane could not answer (trying again may work), False when it refused."""
        return self.code in _RETRYABLE


class IdentityClient:
    """Enroll, Renew and GetTrustBundle over a grpc.aio channel to the control plane (the caller owns the channel)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._stub = control_pb2_grpc.IdentityStub(channel)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"IdentityClient(timeout={self._timeout})"

    async def enroll(self, join_token: str, key: PrivateKey) -> IdentityMaterial:
        """The first certificate for `key`, for the identity the join token names (generation 1)."""
        request = control_pb2.EnrollRequest(join_token=join_token, csr_pem=build_csr(key))
        try:
            answer = await self._stub.Enroll(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _failed("enroll", exc) from None
        return _material("enroll", key, answer, generation=1)

    async def renew(self, material: IdentityMaterial, new_key: PrivateKey) -> IdentityMaterial:
        """A certificate for `new_key` with `material`'s identity, proven by `material`'s key."""
        try:
            current_key = load_private_key(material.private_key_pem)
        except MaterialError as exc:
            raise IdentityError("renew", f"the current private key is unusable: {exc}") from None
        csr_pem = build_csr(new_key, material.spiffe_id)
        request = control_pb2.RenewRequest(
            csr_pem=csr_pem,
            certificate_chain_pem=material.certificate_chain_pem,
            csr_signature=sign(current_key, csr_der(csr_pem)),
        )
        try:
            answer = await self._stub.Renew(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _failed("renew", exc) from None
        renewed = _material("renew", new_key, answer, generation=material.generation + 1)
        if renewed.spiffe_id != material.spiffe_id:
            raise IdentityError("renew", f"the control plane renewed {material.spiffe_id} as {renewed.spiffe_id}")
        return renewed

    async def trust_bundle(self) -> tuple[str, bytes]:
        """(trust domain, roots PEM) of the control plane's CA."""
        try:
            answer = await self._stub.GetTrustBundle(control_pb2.GetTrustBundleRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _failed("get trust bundle", exc) from None
        return answer.trust_domain, answer.trust_bundle_pem


def _failed(operation: str, error: grpc.aio.AioRpcError) -> IdentityError:
    return IdentityError(operation, error.details() or error.code().name, error.code())


def _material(
    operation: str, key: PrivateKey, answer: control_pb2.IdentityCertificate, *, generation: int
) -> IdentityMaterial:
    try:
        return material_from_pem(
            private_key_pem(key), answer.certificate_chain_pem, answer.trust_bundle_pem, generation=generation
        )
    except MaterialError as exc:
        raise IdentityError(operation, f"the control plane's answer is unusable: {exc}") from None
