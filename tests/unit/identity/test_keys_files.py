"""Keys, CSRs and proofs of possession; identity files written so that they switch together."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agentmesh.identity.files import (
    CHAIN_FILE,
    DATA_LINK,
    KEY_FILE,
    ROOTS_FILE,
    MaterialFileError,
    read_material,
    write_material,
)
from agentmesh.identity.keys import (
    MaterialError,
    build_csr,
    csr_der,
    generate_key,
    material_from_pem,
    private_key_pem,
    sign,
)
from agentmesh.identity.material import IdentityMaterial
from agentmesh.identity.spiffe import SpiffeId
from control_plane.identity.ca import CertificateAuthority
from control_plane.identity.csr import parse_csr, verify_possession

RESEARCHER = SpiffeId("agentmesh.local", "research", "researcher")
CA = CertificateAuthority.in_memory(trust_domain="agentmesh.local")


def _material(generation: int = 1) -> IdentityMaterial:
    key = generate_key()
    issued = CA.issue(parse_csr(build_csr(key)), RESEARCHER)
    return material_from_pem(private_key_pem(key), issued.chain_pem, issued.trust_bundle_pem, generation=generation)


def test_key_and_csr() -> None:
    key = generate_key()
    assert isinstance(key.curve, ec.SECP256R1)
    csr = parse_csr(build_csr(key, RESEARCHER))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [RESEARCHER.uri]


def test_proof_of_possession_over_the_csr_der() -> None:
    for key in (generate_key(), rsa.generate_private_key(public_exponent=65537, key_size=2048)):
        leaf = CA.issue(parse_csr(build_csr(key)), RESEARCHER).certificate
        new_csr = build_csr(generate_key())
        assert verify_possession(leaf, sign(key, csr_der(new_csr)), csr_der(new_csr))


def test_material_from_pem_checks_the_parts() -> None:
    material = _material()
    assert material.spiffe_id == RESEARCHER
    assert material.not_after > material.not_before
    other_key = private_key_pem(generate_key())
    with pytest.raises(MaterialError, match="does not certify this private key"):
        material_from_pem(other_key, material.certificate_chain_pem, material.trust_bundle_pem)
    with pytest.raises(MaterialError, match="not a PEM certificate chain"):
        material_from_pem(material.private_key_pem, b"junk", material.trust_bundle_pem)
    with pytest.raises(MaterialError, match="not an unencrypted PEM private key"):
        material_from_pem(b"junk", material.certificate_chain_pem, material.trust_bundle_pem)


def test_write_and_read(tmp_path: Path) -> None:
    directory = tmp_path / "identity"
    assert read_material(directory) is None
    material = _material(generation=7)
    write_material(directory, material)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / KEY_FILE).st_mode) == 0o600
    for name in (KEY_FILE, CHAIN_FILE, ROOTS_FILE):
        assert (directory / name).is_symlink()
        assert os.readlink(directory / name) == f"{DATA_LINK}/{name}"
    assert (directory / CHAIN_FILE).read_bytes() == material.certificate_chain_pem
    assert (directory / ROOTS_FILE).read_bytes() == material.trust_bundle_pem
    read = read_material(directory)
    assert read is not None
    assert read.generation == 0
    assert (read.spiffe_id, read.private_key_pem, read.certificate_chain_pem, read.not_after) == (
        material.spiffe_id,
        material.private_key_pem,
        material.certificate_chain_pem,
        material.not_after,
    )


def test_rewrites_switch_all_files_and_keep_one_previous_version(tmp_path: Path) -> None:
    directory = tmp_path / "identity"
    materials = [_material(generation=n) for n in range(1, 5)]
    for material in materials:
        write_material(directory, material)
        read = read_material(directory)
        assert read is not None and read.certificate_chain_pem == material.certificate_chain_pem
    versions = [p for p in directory.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(versions) == 2
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_plain_files_are_read_and_replaced(tmp_path: Path) -> None:
    material = _material()
    (tmp_path / KEY_FILE).write_bytes(material.private_key_pem)
    (tmp_path / CHAIN_FILE).write_bytes(material.certificate_chain_pem)
    (tmp_path / ROOTS_FILE).write_bytes(material.trust_bundle_pem)
    read = read_material(tmp_path)
    assert read is not None and read.spiffe_id == RESEARCHER
    newer = _material()
    write_material(tmp_path, newer)
    assert (tmp_path / KEY_FILE).is_symlink()
    assert (tmp_path / KEY_FILE).read_bytes() == newer.private_key_pem


def test_unusable_files_are_named(tmp_path: Path) -> None:
    material = _material()
    write_material(tmp_path, material)
    os.unlink(tmp_path / os.readlink(tmp_path / DATA_LINK) / CHAIN_FILE)
    with pytest.raises(MaterialFileError, match=rf"cannot read {CHAIN_FILE}"):
        read_material(tmp_path)
    other = tmp_path / "other"
    (other).mkdir()
    (other / KEY_FILE).write_bytes(private_key_pem(generate_key()))
    (other / CHAIN_FILE).write_bytes(material.certificate_chain_pem)
    (other / ROOTS_FILE).write_bytes(material.trust_bundle_pem)
    with pytest.raises(MaterialFileError, match="does not certify this private key"):
        read_material(other)
