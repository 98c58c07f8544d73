"""The last good config on disk: atomic round trip, and files that must be ignored."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message

from control_plane.translate import translate
from sidecar.config import persist
from sidecar.config.decode import CLUSTER_TYPE, ROUTE_TYPE, TYPE_URLS, assemble, decode_all
from sidecar.config.snapshot import MeshSnapshot
from tests.unit.control_plane.translate.meshes import example_mesh, example_policies


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@pytest.fixture(scope="module")
def snapshot() -> MeshSnapshot:
    resources = translate(example_policies(), example_mesh())
    decoded = {t: decode_all(t, [pack(m) for m in resources[t].values()], agent="researcher") for t in TYPE_URLS}
    return assemble(decoded, {t: f"p1-g{i}" for i, t in enumerate(TYPE_URLS)})


def test_round_trip(tmp_path: Path, snapshot: MeshSnapshot) -> None:
    path = tmp_path / "xds" / "last-good.json"
    persist.save(path, snapshot, agent="researcher", clock=lambda: 1700000000.0)
    saved = persist.read(path, agent="researcher")
    assert saved is not None
    assert saved.written_at == 1700000000.0
    assert saved.snapshot == snapshot
    assert persist.load(path, agent="researcher") == snapshot
    assert [p.name for p in path.parent.iterdir()] == ["last-good.json"]  # no temporary file left


def test_save_replaces_the_previous_copy(tmp_path: Path, snapshot: MeshSnapshot) -> None:
    path = tmp_path / "last-good.json"
    persist.save(path, MeshSnapshot(), agent="researcher")
    assert persist.load(path, agent="researcher") == MeshSnapshot()
    persist.save(path, snapshot, agent="researcher")
    loaded = persist.load(path, agent="researcher")
    assert loaded is not None and set(loaded.clusters) == set(snapshot.clusters)


def test_a_failed_save_keeps_the_old_copy_and_no_temporary_file(
    tmp_path: Path, snapshot: MeshSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(OSError):
        persist.save(blocker / "last-good.json", snapshot, agent="researcher")
    path = tmp_path / "last-good.json"
    persist.save(path, MeshSnapshot(), agent="researcher")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(persist.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        persist.save(path, snapshot, agent="researcher")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-good.json", "not-a-directory"]
    assert persist.load(path, agent="researcher") == MeshSnapshot()


def test_missing_file_is_none_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert persist.load(tmp_path / "absent.json", agent="researcher") is None
    assert caplog.records == []


def _document(snapshot: MeshSnapshot, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "good.json"
    persist.save(path, snapshot, agent="researcher")
    document: dict[str, object] = json.loads(path.read_text())
    return document


def _broken_route(snapshot: MeshSnapshot, tmp_path: Path) -> str:
    document = _document(snapshot, tmp_path)
    types = document["types"]
    assert isinstance(types, dict)
    route = any_pb2.Any(type_url=ROUTE_TYPE, value=b"\x0a\x01r\x12\x00")  # a virtual host without domains
    types[ROUTE_TYPE]["resources"] = [base64.b64encode(route.SerializeToString()).decode()]
    return json.dumps(document)


CORRUPT: list[tuple[str, str]] = [
    ("garbage", "not JSON"),
    ("not-json", "not JSON"),
    ("list", "not a agentmesh.sidecar.xds-config/v1 file"),
    ("other-format", "not a agentmesh.sidecar.xds-config/v1 file"),
    ("other-agent", "written for agent 'planner', not 'researcher'"),
    ("no-types", "no 'types' object"),
    ("unknown-type", "unknown resource type 'type.googleapis.com/x.Secret'"),
    ("bad-entry", f"{CLUSTER_TYPE}: expected an object with a 'resources' list"),
    ("bad-base64", f"{CLUSTER_TYPE}: a resource is corrupt"),
    ("not-a-string", f"{CLUSTER_TYPE}: a resource is not a base64 string"),
    ("undecodable", 'RouteConfiguration "r": virtual_hosts[0]: domains is empty'),
]


@pytest.mark.parametrize(("kind", "reason"), CORRUPT, ids=[k for k, _ in CORRUPT])
def test_unusable_files_are_ignored_with_a_warning(
    tmp_path: Path, snapshot: MeshSnapshot, caplog: pytest.LogCaptureFixture, kind: str, reason: str
) -> None:
    document = _document(snapshot, tmp_path)
    texts = {
        "garbage": "\x00\x01 not even text",
        "not-json": '{"format": ',
        "list": "[]",
        "other-format": json.dumps({**document, "format": "v0"}),
        "other-agent": json.dumps({**document, "agent": "planner"}),
        "no-types": json.dumps({**document, "types": None}),
        "unknown-type": json.dumps({**document, "types": {"type.googleapis.com/x.Secret": {"resources": []}}}),
        "bad-entry": json.dumps({**document, "types": {CLUSTER_TYPE: {"resources": "x"}}}),
        "bad-base64": json.dumps({**document, "types": {CLUSTER_TYPE: {"resources": ["!!!"]}}}),
        "not-a-string": json.dumps({**document, "types": {CLUSTER_TYPE: {"resources": [1]}}}),
        "undecodable": _broken_route(snapshot, tmp_path),
    }
    path = tmp_path / "last-good.json"
    path.write_text(texts[kind])
    with caplog.at_level(logging.WARNING, logger="agentmesh.sidecar.xds"):
        assert persist.load(path, agent="researcher") is None
    assert any(reason in record.getMessage() and str(path) in record.getMessage() for record in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_unreadable_bytes_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "last-good.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING, logger="agentmesh.sidecar.xds"):
        assert persist.load(path, agent="researcher") is None
    assert "cannot read it" in caplog.text
