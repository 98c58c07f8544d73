"""Workload identity against a real `agentmesh control-plane` process: enroll, renew, refusals, CLI, rotation.

The control plane runs with `--workload-cert-ttl 6s`, so a Rotator renews
every few seconds. Certificates the CA would never issue (expired, another
trust domain) are forged with the CA's own key from its directory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification
from prometheus_client import CollectorRegistry

from agentmesh.cli import main
from agentmesh.identity.client import IdentityClient, IdentityError
from agentmesh.identity.files import read_material
from agentmesh.identity.keys import build_csr, csr_der, generate_key, sign
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.rotation import Rotator
from agentmesh.identity.spiffe import SpiffeId
from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.identity.issuers import ROOT_CERT
from tests.integration.controlplane import TOKEN, ControlPlaneProcess
from tests.integration.procs import AGENTMESH, ROOT, metric
from tests.pki import control_plane_root, forged_leaf, user_root

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")
TTL = "6s"


@pytest.fixture(scope="module")
def cp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def cp(cp_dir: Path) -> Iterator[ControlPlaneProcess]:
    """One control plane for the module; its database is cp_dir/cp.db, so its CA is in cp_dir/cp.db.ca."""
    process = ControlPlaneProcess(cp_dir, cp_dir / "cp.db", "--workload-cert-ttl", TTL)
    yield process
    process.stop()


@pytest.fixture
async def channel(cp: ControlPlaneProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(cp.address) as opened:
        yield opened


def refused(cp: ControlPlaneProcess, operation: str, reason: str) -> float:
    return metric(cp.http_url, "agentmesh_identity_requests_refused_total", operation=operation, reason=reason)


def cli(cp: ControlPlaneProcess, *args: str, token: str = TOKEN) -> Result:
    """`agentmesh ARGS` in this process (the real CLI and client, without a Python start-up per command)."""
    environment = {"AGENTMESH_CONTROL_PLANE": cp.address, "AGENTMESH_TOKEN": token}
    return CliRunner().invoke(main.cli, list(args), env=environment, catch_exceptions=False)


def create_token(cp: ControlPlaneProcess, *args: str) -> str:
    done = cli(cp, "token", "create", *args)
    assert done.exit_code == 0, done.stderr
    return done.stdout.strip()


def verify_chain(material: IdentityMaterial, roots_pem: bytes) -> None:
    chain = x509.load_pem_x509_certificates(material.certificate_chain_pem)
    store = verification.Store(x509.load_pem_x509_certificates(roots_pem))
    builder = verification.PolicyBuilder().store(store)
    builder.build_client_verifier().verify(chain[0], chain[1:])
    server = builder.build_server_verifier(verification.DNSName(material.spiffe_id.dns_name))
    server.verify(chain[0], chain[1:])


# --- enroll and renew -------------------------------------------------------------------------------------------------


async def test_enroll_and_renew(cp: ControlPlaneProcess, channel: grpc.aio.Channel) -> None:
    token = create_token(cp, "--agent", "researcher", "--team", "research")
    client = IdentityClient(channel)
    issued_before = metric(cp.http_url, "agentmesh_identity_certificates_issued_total", operation="enroll")
    material = await client.enroll(token, generate_key())
    assert material.spiffe_id == RESEARCHER
    assert material.not_after - material.not_before == dt.timedelta(seconds=66)  # 1 min backdated + 6s
    bundle = cli(cp, "ca", "bundle")
    assert bundle.exit_code == 0 and bundle.stdout.encode() == material.trust_bundle_pem
    verify_chain(material, bundle.stdout.encode())
    renewed = await client.renew(material, generate_key())
    assert renewed.spiffe_id == RESEARCHER
    verify_chain(renewed, material.trust_bundle_pem)
    assert metric(cp.http_url, "agentmesh_identity_certificates_issued_total", operation="enroll") == issued_before + 1
    expiry = metric(cp.http_url, "agentmesh_identity_issuer_expiry_timestamp_seconds")
    assert expiry > dt.datetime.now(dt.UTC).timestamp()


async def test_every_refusal_has_its_status_and_metric(
    cp: ControlPlaneProcess, cp_dir: Path, channel: grpc.aio.Channel
) -> None:
    stub = control_pb2_grpc.IdentityStub(channel)
    csr = build_csr(generate_key())

    async def refusal(operation: str, reason: str, call: object) -> grpc.aio.AioRpcError:
        before = refused(cp, operation, reason)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        assert refused(cp, operation, reason) == before + 1, (operation, reason)
        return caught.value

    def enroll(token: str, request_csr: bytes = csr) -> object:
        return stub.Enroll(control_pb2.EnrollRequest(join_token=token, csr_pem=request_csr))

    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    error = await refusal("enroll", "malformed", enroll("hunter2"))
    assert error.code() == unauthenticated and "malformed" in (error.details() or "")
    error = await refusal("enroll", "unknown", enroll(f"amjt.{'0' * 16}.{'x' * 43}"))
    assert error.code() == unauthenticated and "unknown" in (error.details() or "")

    short = create_token(cp, "--agent", "researcher", "--team", "research", "--ttl", "1s")
    await asyncio.sleep(1.2)
    error = await refusal("enroll", "expired", enroll(short))
    assert error.code() == unauthenticated and "expired at" in (error.details() or "")

    token = create_token(cp, "--agent", "researcher", "--team", "research")
    error = await refusal("enroll", "invalid_csr", enroll(token, b"-----BEGIN CERTIFICATE REQUEST-----\n"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "csr_pem" in (error.details() or "")
    answer = await enroll(token)  # type: ignore[misc]
    error = await refusal("enroll", "used_up", enroll(token))  # replayed
    assert error.code() == unauthenticated and "already used 1 of 1" in (error.details() or "")

    revoked = create_token(cp, "--agent", "researcher", "--team", "research", "-o", "json")
    revoked_id = json.loads(revoked)["id"]
    assert cli(cp, "token", "revoke", revoked_id).exit_code == 0
    error = await refusal("enroll", "revoked", enroll(json.loads(revoked)["secret"]))
    assert error.code() == unauthenticated and "revoked" in (error.details() or "")

    # Renewal: the enrolled certificate above is genuine; its key is this test's.
    key = generate_key()
    token = create_token(cp, "--agent", "researcher", "--team", "research")
    material = await IdentityClient(channel).enroll(token, key)
    assert answer.spiffe_id == RESEARCHER.uri
    new_csr = build_csr(generate_key())

    def renew(chain: bytes, *, signer: object = key, request_csr: bytes = new_csr) -> object:
        signature = sign(signer, csr_der(new_csr))  # type: ignore[arg-type]
        return stub.Renew(
            control_pb2.RenewRequest(csr_pem=request_csr, certificate_chain_pem=chain, csr_signature=signature)
        )

    error = await refusal("renew", "bad_signature", renew(material.certificate_chain_pem, signer=generate_key()))
    assert error.code() == unauthenticated and "csr_signature does not verify" in (error.details() or "")
    error = await refusal("renew", "invalid_certificate", renew(b"not a chain"))
    assert error.code() == unauthenticated
    error = await refusal("renew", "invalid_csr", renew(material.certificate_chain_pem, request_csr=b"junk"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    root, root_key = control_plane_root(cp_dir / "cp.db.ca")
    now = dt.datetime.now(dt.UTC)
    expired = forged_leaf(
        root,
        root_key,
        key,
        RESEARCHER.uri,
        not_before=now - dt.timedelta(hours=2),
        not_after=now - dt.timedelta(hours=1),
    )
    error = await refusal("renew", "expired_certificate", renew(expired))
    assert error.code() == unauthenticated and "expired at" in (error.details() or "")
    elsewhere = forged_leaf(
        root,
        root_key,
        key,
        "spiffe://example.org/team/research/agent/researcher",
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(hours=1),
    )
    error = await refusal("renew", "wrong_trust_domain", renew(elsewhere))
    assert error.code() == unauthenticated and "example.org" in (error.details() or "")
    own_root = generate_key()
    self_signed = x509.CertificateBuilder().subject_name(root.subject).issuer_name(root.subject)
    fake_root = (
        self_signed.public_key(own_root.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(own_root, hashes.SHA256())
    )
    impostor = forged_leaf(
        fake_root,
        own_root,
        key,
        RESEARCHER.uri,
        not_before=now - dt.timedelta(minutes=1),
        not_after=now + dt.timedelta(hours=1),
    )
    error = await refusal("renew", "untrusted_certificate", renew(impostor))
    assert error.code() == unauthenticated and "not issued by this mesh's CA" in (error.details() or "")

    # The control plane keeps serving: a fresh token still enrolls.
    fresh = create_token(cp, "--agent", "researcher", "--team", "research")
    assert (await IdentityClient(channel).enroll(fresh, generate_key())).spiffe_id == RESEARCHER


async def test_client_errors_carry_the_servers_reason(cp: ControlPlaneProcess, channel: grpc.aio.Channel) -> None:
    with pytest.raises(
        IdentityError, match=r"enroll failed \(UNAUTHENTICATED\): the join token is malformed"
    ) as caught:
        await IdentityClient(channel).enroll("amjt.nope", generate_key())
    assert not caught.value.retryable


# --- the CLI ----------------------------------------------------------------------------------------------------------


def test_token_and_ca_commands(cp: ControlPlaneProcess) -> None:
    created = cp.cli(  # once through the installed entry point
        "token",
        "create",
        "--agent",
        "writer",
        "--team",
        "writing",
        "--uses",
        "3",
        "--ttl",
        "2h",
        "--description",
        "staging",
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("amjt.") and created.stdout.count("\n") == 1
    assert (
        "spiffe://agentmesh.local/team/writing/agent/writer" in created.stderr and "shown only once" in created.stderr
    )
    token_id = secret.split(".")[1]

    as_json = json.loads(cli(cp, "token", "create", "--agent", "writer", "--team", "writing", "-o", "json").stdout)
    assert as_json["secret"].startswith(f"amjt.{as_json['id']}.")
    assert as_json["created_by"] == "bootstrap-admin" and as_json["max_uses"] == 1

    listing = cli(cp, "token", "list")
    assert listing.exit_code == 0
    line = next(row for row in listing.stdout.splitlines() if row.startswith(token_id))
    assert "writer" in line and "0/3" in line and "active" in line and "staging" in line
    assert secret.split(".")[2] not in listing.stdout

    revoked = cli(cp, "token", "revoke", token_id)
    assert (revoked.exit_code, revoked.stdout.strip()) == (
        0,
        f"jointoken/{token_id} (spiffe://agentmesh.local/team/writing/agent/writer) revoked",
    )
    assert token_id not in cli(cp, "token", "list").stdout
    every = json.loads(cli(cp, "token", "list", "--all", "-o", "json").stdout)["tokens"]
    assert next(t for t in every if t["id"] == token_id)["revoked"] is True

    missing = cli(cp, "token", "revoke", "0123456789abcdef")
    assert missing.exit_code == 1 and "no join token with id" in missing.stderr
    no_team = cli(cp, "token", "create", "--agent", "ghost")
    assert no_team.exit_code == 2 and "name it with --team" in no_team.stderr
    bad = cli(cp, "token", "create", "--agent", "Bad_Name", "--team", "t")
    assert bad.exit_code == 2 and "not a valid agent name" in bad.stderr
    unauthenticated = cli(cp, "token", "list", token="wrong")
    assert unauthenticated.exit_code == 1 and "refused" in unauthenticated.stderr

    shown = cli(cp, "ca", "show")
    assert shown.exit_code == 0, shown.stderr
    assert "Trust domain:    agentmesh.local" in shown.stdout
    assert "own root" in shown.stdout and "Workload TTL:    6s" in shown.stdout
    data = json.loads(cli(cp, "ca", "show", "-o", "json").stdout)
    assert data["trust_domain"] == "agentmesh.local" and int(data["issued"]) >= 0
    assert data["trust_bundle_pem"] == cli(cp, "ca", "bundle").stdout


def test_cli_exit_code_when_unreachable() -> None:
    done = subprocess.run(
        [*AGENTMESH, "ca", "show", "--control-plane", "127.0.0.1:1", "--token", "t"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3 and "cannot reach the control plane" in done.stderr


# --- rotation ---------------------------------------------------------------------------------------------------------


async def test_rotator_rotates_several_times(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    token = create_token(cp, "--agent", "researcher", "--team", "research")
    registry = CollectorRegistry()
    rotator = Rotator(cp.address, join_token=token, directory=tmp_path / "identity", registry=registry)
    published: list[IdentityMaterial] = []
    arrived = asyncio.Event()

    def take(material: IdentityMaterial) -> None:
        published.append(material)
        arrived.set()

    rotator.subscribe(take)
    try:
        first = await rotator.start()
        async with asyncio.timeout(60):
            while len(published) < 4:
                arrived.clear()
                await arrived.wait()
    finally:
        await rotator.stop()
    assert first.spiffe_id == RESEARCHER
    assert [m.generation for m in published] == list(range(1, len(published) + 1))
    assert len({m.private_key_pem for m in published}) == len(published) >= 4
    assert all(m.spiffe_id == RESEARCHER for m in published)
    on_disk = read_material(tmp_path / "identity")
    assert on_disk is not None and on_disk.certificate_chain_pem == published[-1].certificate_chain_pem
    assert registry.get_sample_value("agentmesh_identity_rotations_total", {"result": "success"}) == len(published)
    verify_chain(published[-1], published[-1].trust_bundle_pem)


# --- intermediate under a user root -----------------------------------------------------------------------------------


async def test_intermediate_under_a_user_root(tmp_path: Path) -> None:
    cert_file, key_file, root, _ = user_root(tmp_path, now=dt.datetime.now(dt.UTC))
    args = ("--ca-cert", str(cert_file), "--ca-key", str(key_file), "--trust-domain", "example.org")
    cp = ControlPlaneProcess(tmp_path, tmp_path / "cp.db", *args)
    try:
        token = create_token(cp, "--agent", "researcher", "--team", "research")
        async with grpc.aio.insecure_channel(cp.address) as channel:
            material = await IdentityClient(channel).enroll(token, generate_key())
        assert material.spiffe_id == SpiffeId("example.org", "research", "researcher")
        chain = x509.load_pem_x509_certificates(material.certificate_chain_pem)
        assert len(chain) == 2
        chain[1].verify_directly_issued_by(root)
        assert x509.load_pem_x509_certificates(material.trust_bundle_pem) == [root]
        verify_chain(material, material.trust_bundle_pem)
        shown = cli(cp, "ca", "show")
        assert "intermediate under a user root" in shown.stdout and "example.org" in shown.stdout
        before = json.loads(cli(cp, "ca", "show", "-o", "json").stdout)
    finally:
        cp.stop()
    again = ControlPlaneProcess(tmp_path, tmp_path / "cp.db", *args)
    try:
        after = json.loads(cli(again, "ca", "show", "-o", "json").stdout)
        assert after["issuer_pem"] == before["issuer_pem"]  # the intermediate is kept
        assert int(after["issued"]) == int(before["issued"]) == 1  # the count survives restarts
    finally:
        again.stop()


def test_bad_ca_options_stop_the_start(tmp_path: Path) -> None:
    cert_file, _, _, _ = user_root(tmp_path)

    def start(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*AGENTMESH, "control-plane", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        argv += ["--db", str(tmp_path / "cp.db"), "--token", "t", *args]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)

    alone = start("--ca-cert", str(cert_file))
    assert alone.returncode == 2 and "--ca-cert and --ca-key go together" in alone.stderr
    # A CA directory made for one trust domain is refused for another.
    made = ControlPlaneProcess(tmp_path, tmp_path / "cp.db")
    made.stop()
    other = start("--trust-domain", "example.org")
    assert other.returncode == 2
    assert f"{tmp_path / 'cp.db.ca' / ROOT_CERT}: this CA belongs to trust domain agentmesh.local" in other.stderr


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (("--trust-domain", "Not_Valid"), "not a valid trust domain"),
        (("--workload-cert-ttl", "forever"), "invalid duration 'forever'"),
        (("--workload-cert-ttl", "500ms"), "must be at least 1s"),
    ],
)
def test_invalid_identity_options(option: tuple[str, str], expected: str) -> None:
    result = CliRunner().invoke(main.cli, ["control-plane", "--token", "t", *option])
    assert result.exit_code == 2 and expected in result.stderr
