"""The Identity service in process: enroll, renew, trust bundle; each refusal's status, message and metric."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from agentmesh.identity.client import IdentityClient, IdentityError
from agentmesh.identity.keys import build_csr, csr_der, generate_key, sign
from agentmesh.identity.spiffe import SpiffeId
from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.csr import parse_csr
from tests.pki import csr_pem
from tests.unit.identity.conftest import IdentityServer, start_identity_server, stop_identity_server

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")


async def _refused(call: object, operation: str, reason: str, server: IdentityServer) -> grpc.aio.AioRpcError:
    before = server.refused(operation, reason)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert server.refused(operation, reason) == before + 1
    return caught.value


async def test_enroll_then_renew(identity_server: IdentityServer, channel: grpc.aio.Channel) -> None:
    client = IdentityClient(channel)
    key = generate_key()
    first = await client.enroll(identity_server.token(), key)
    assert first.spiffe_id == RESEARCHER and first.generation == 1
    second = await client.renew(first, generate_key())
    assert second.spiffe_id == RESEARCHER and second.generation == 2
    assert second.private_key_pem != first.private_key_pem
    assert second.certificate_chain_pem != first.certificate_chain_pem
    assert identity_server.issued("enroll") == 1 and identity_server.issued("renew") == 1
    assert identity_server.ledger.issued() == 2
    assert await client.trust_bundle() == ("agentmesh.local", identity_server.ca.trust_bundle_pem)


async def test_enroll_refusals(identity_server: IdentityServer, channel: grpc.aio.Channel) -> None:
    stub = control_pb2_grpc.IdentityStub(channel)
    csr = build_csr(generate_key())

    def enroll(token: str, csr_pem: bytes = csr) -> object:
        return stub.Enroll(control_pb2.EnrollRequest(join_token=token, csr_pem=csr_pem))

    error = await _refused(enroll("nope"), "enroll", "malformed", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "malformed" in (error.details() or "")
    error = await _refused(enroll(f"amjt.{'0' * 16}.{'x' * 43}"), "enroll", "unknown", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    token = identity_server.token()
    # A malformed CSR is INVALID_ARGUMENT and does not use the token up.
    error = await _refused(enroll(token, b"not a csr"), "enroll", "invalid_csr", identity_server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "csr_pem is not a PEM certificate signing request" in (error.details() or "")
    weak = csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    error = await _refused(enroll(token, weak), "enroll", "invalid_csr", identity_server)
    assert "at least 2048 bits" in (error.details() or "")
    await enroll(token)  # type: ignore[misc]
    error = await _refused(enroll(token), "enroll", "used_up", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "already used" in (error.details() or "")
    revoked = identity_server.tokens.create(agent="writer", team="writing", created_by="t")
    identity_server.tokens.revoke(revoked.token.id)
    error = await _refused(enroll(revoked.secret), "enroll", "revoked", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (error.details() or "")
    # An unknown token with a bad CSR: the token is judged first.
    error = await _refused(enroll(f"amjt.{'1' * 16}.{'y' * 43}", b""), "enroll", "unknown", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_renew_refusals(identity_server: IdentityServer, channel: grpc.aio.Channel) -> None:
    client = IdentityClient(channel)
    stub = control_pb2_grpc.IdentityStub(channel)
    key = generate_key()
    material = await client.enroll(identity_server.token(), key)
    new_csr = build_csr(generate_key())

    def renew(chain: bytes, csr: bytes = new_csr, signature: bytes | None = None) -> object:
        if signature is None:
            signature = sign(key, csr_der(csr))
        return stub.Renew(control_pb2.RenewRequest(csr_pem=csr, certificate_chain_pem=chain, csr_signature=signature))

    chain = material.certificate_chain_pem
    forged = sign(generate_key(), csr_der(new_csr))
    error = await _refused(renew(chain, signature=forged), "renew", "bad_signature", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "csr_signature does not verify" in (
        error.details() or ""
    )
    other_csr = build_csr(generate_key())
    # A signature over another CSR (a replayed proof) does not count either.
    replayed = sign(key, csr_der(new_csr))
    await _refused(renew(chain, csr=other_csr, signature=replayed), "renew", "bad_signature", identity_server)
    error = await _refused(renew(chain, signature=b""), "renew", "bad_signature", identity_server)
    assert "csr_signature is empty" in (error.details() or "")
    error = await _refused(
        renew(
            b"",
        ),
        "renew",
        "invalid_certificate",
        identity_server,
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await _refused(renew(chain, csr=b"junk", signature=b"x"), "renew", "invalid_csr", identity_server)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    stranger = CertificateAuthority.in_memory(trust_domain="agentmesh.local")
    foreign = stranger.issue(parse_csr(build_csr(key)), RESEARCHER)
    error = await _refused(renew(foreign.chain_pem), "renew", "untrusted_certificate", identity_server)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    elsewhere = CertificateAuthority.in_memory(trust_domain="example.org")
    foreign = elsewhere.issue(parse_csr(build_csr(key)), SpiffeId("example.org", "research", "researcher"))
    error = await _refused(renew(foreign.chain_pem), "renew", "wrong_trust_domain", identity_server)
    assert "example.org" in (error.details() or "")
    # The client turns refusals into IdentityError with the reason, not retryable.
    with pytest.raises(IdentityError, match="renew failed \\(UNAUTHENTICATED\\)") as caught:
        await client.renew(dataclasses.replace(material, certificate_chain_pem=foreign.chain_pem), generate_key())
    assert not caught.value.retryable


async def test_an_expired_certificate_cannot_renew() -> None:
    server = await start_identity_server(workload_ttl=dt.timedelta(seconds=1))
    try:
        async with grpc.aio.insecure_channel(server.address) as short:
            client = IdentityClient(short)
            material = await client.enroll(server.token(), generate_key())
            leaf = x509.load_pem_x509_certificate(material.certificate_chain_pem)
            assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(seconds=61)
            await asyncio.sleep((material.not_after - dt.datetime.now(dt.UTC)).total_seconds() + 0.2)
            with pytest.raises(IdentityError, match="expired") as caught:
                await client.renew(material, generate_key())
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert server.refused("renew", "expired_certificate") == 1
    finally:
        await stop_identity_server(server)
