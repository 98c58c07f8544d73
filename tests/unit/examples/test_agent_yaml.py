"""The example mesh's configuration: every agent.yaml loads, every contract compiles, ports never clash."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from google.protobuf import descriptor_pb2

from agentmesh import codegen
from agentmesh.local.meshfile import MeshFile
from agentmesh.local.replicas import ReplicaPorts
from agentmesh.protoc import ProtoCompileError, compile_descriptor_set
from sidecar.config.bootstrap import Bootstrap
from sidecar.contract import ContractSet, HttpRule

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
AGENTS = EXAMPLES / "agents"
BOOTSTRAPS = sorted(AGENTS.glob("*/agent*.yaml"))
PROTOS = sorted(AGENTS.glob("*/*.proto"))


def test_every_agent_has_a_bootstrap_and_a_proto():
    assert {p.parent.name for p in BOOTSTRAPS} == {"planner", "researcher", "writer", "summarizer"}
    assert {p.parent.name for p in PROTOS} == {"planner", "researcher", "writer", "summarizer"}
    assert (AGENTS / "researcher" / "agent-v2.yaml") in BOOTSTRAPS


@pytest.mark.parametrize("path", BOOTSTRAPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_bootstrap_loads_and_its_contract_compiles(path: Path):
    bootstrap = Bootstrap.load(path)
    if bootstrap.upstream.protocol == "grpc":
        assert bootstrap.contract.descriptor_set is not None
        assert bootstrap.health.grpc is not None
        fds = descriptor_pb2.FileDescriptorSet.FromString(bootstrap.contract.descriptor_set.read_bytes())
    else:
        assert bootstrap.health.http is not None and bootstrap.health.http.path == "/healthz"
        fds = compile_descriptor_set(list(bootstrap.contract.protos))
    contract = ContractSet.compile(fds, services=bootstrap.contract.services)
    assert contract.services
    for name in bootstrap.contract.skills:
        contract.method(name)


def test_ports_are_distinct_across_the_mesh():
    seen: dict[int, str] = {}
    for path in BOOTSTRAPS:
        bootstrap = Bootstrap.load(path)
        listen = bootstrap.listen
        ports = {
            "upstream": urlsplit(bootstrap.upstream.url).port,
            **{kind: int(getattr(listen, kind).rpartition(":")[2]) for kind in type(listen).model_fields},
        }
        for kind, port in ports.items():
            assert port is not None
            owner = f"{path.parent.name}/{path.name} {kind}"
            assert port not in seen, f"port {port} used by {seen[port]} and {owner}"
            seen[port] = owner


def test_planner_targets_are_the_inbound_listeners_of_researcher_and_writer():
    planner = Bootstrap.load(AGENTS / "planner" / "agent.yaml")
    targets = {t.name: t.address for t in planner.targets}
    assert targets == {
        "researcher": Bootstrap.load(AGENTS / "researcher" / "agent.yaml").listen.inbound,
        "writer": Bootstrap.load(AGENTS / "writer" / "agent.yaml").listen.inbound,
    }


def test_researcher_versions_share_name_and_contract():
    v1 = Bootstrap.load(AGENTS / "researcher" / "agent.yaml")
    v2 = Bootstrap.load(AGENTS / "researcher" / "agent-v2.yaml")
    assert (v1.agent.name, v1.agent.version) == ("researcher", "v1")
    assert (v2.agent.name, v2.agent.version) == ("researcher", "v2")
    assert v1.contract.protos == v2.contract.protos


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_proto_compiles_with_validation_rules(proto: Path):
    fds = compile_descriptor_set([proto])
    names = [f.name for f in fds.file]
    assert "buf/validate/validate.proto" in names
    contract = ContractSet.compile(fds)
    assert len(contract.services) == 1
    for method in contract.methods.values():
        assert method.skill.idempotent is (method.name in ("Search", "Summarize"))


def test_researcher_search_has_http_rule_idempotency_and_skill_options():
    contract = ContractSet.compile(compile_descriptor_set([AGENTS / "researcher" / "researcher.proto"]))
    search = contract.method("/research.v1.Researcher/Search")
    assert search.http_rule == HttpRule("POST", "/v1/search", "*")
    assert search.skill.idempotent
    assert search.skill.timeout == 10.0
    assert search.skill.tags == ("search", "web")
    assert not search.server_streaming


def test_streaming_skills_are_server_streaming():
    writer = ContractSet.compile(compile_descriptor_set([AGENTS / "writer" / "writer.proto"]))
    assert writer.method("/writing.v1.Writer/StreamDraft").server_streaming
    assert not writer.method("/writing.v1.Writer/Draft").server_streaming
    summarizer = ContractSet.compile(
        descriptor_pb2.FileDescriptorSet.FromString((AGENTS / "summarizer" / "summarizer.binpb").read_bytes())
    )
    assert summarizer.method("/summarize.v1.Summarizer/StreamSummary").server_streaming


def test_writer_skill_override_from_agent_yaml():
    bootstrap = Bootstrap.load(AGENTS / "writer" / "agent.yaml")
    # ContractSet keys overrides by "/package.Service/Method".
    overrides = {"/" + k.lstrip("/"): v.model_dump(exclude_none=True) for k, v in bootstrap.contract.skills.items()}
    contract = ContractSet.compile(compile_descriptor_set(list(bootstrap.contract.protos)), overrides=overrides)
    stream = contract.method("writing.v1.Writer/StreamDraft")
    assert stream.skill.timeout == 120.0
    assert stream.skill.tags == ("writing", "streaming")


def test_committed_descriptor_set_is_fresh_and_has_no_source_info():
    targets = codegen.descriptor_set_targets()
    assert [binpb.relative_to(AGENTS).as_posix() for _, binpb in targets] == ["summarizer/summarizer.binpb"]
    for proto, binpb in targets:
        assert binpb.read_bytes() == codegen.descriptor_set_bytes(proto), f"{binpb} is stale"
        fds = descriptor_pb2.FileDescriptorSet.FromString(binpb.read_bytes())
        assert not any(f.HasField("source_code_info") for f in fds.file)


def test_descriptor_set_bytes_are_deterministic():
    proto = AGENTS / "summarizer" / "summarizer.proto"
    assert codegen.descriptor_set_bytes(proto) == codegen.descriptor_set_bytes(proto)


def test_codegen_check_reports_a_stale_descriptor_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    agent = tmp_path / "summarizer"
    agent.mkdir()
    shutil.copy(AGENTS / "summarizer" / "summarizer.proto", agent)
    (agent / "summarizer.binpb").write_bytes(b"")
    monkeypatch.setattr(codegen, "EXAMPLE_AGENTS_DIR", tmp_path)
    assert codegen.main(["--check"]) == 1
    assert f"stale descriptor sets: {agent / 'summarizer.binpb'}" in capsys.readouterr().err


def test_descriptor_set_without_its_proto_is_an_error(tmp_path: Path):
    with pytest.raises(ProtoCompileError, match=r"sibling \.proto"):
        codegen.descriptor_set_bytes(tmp_path / "gone.proto")


def test_mesh_file_lists_every_bootstrap_with_a_runnable_command():
    mesh = MeshFile.load(EXAMPLES / "mesh.yaml")
    names = [agent.name for agent in mesh.agents]
    assert len(names) == len(set(names))
    assert sorted(agent.sidecar for agent in mesh.agents) == sorted(p.resolve() for p in BOOTSTRAPS)
    for agent in mesh.agents:
        bootstrap = Bootstrap.load(agent.sidecar)
        values = ReplicaPorts.for_replica(bootstrap, 0).placeholders(0)
        command = agent.argv(values)
        assert (EXAMPLES / command[1]).is_file()
        # Replica 0 of the agent listens where its sidecar expects it.
        assert int(command[command.index("--port") + 1]) == urlsplit(bootstrap.upstream.url).port
        env = agent.environment(values)
        if "AGENTMESH_EGRESS_HTTP" in env:
            assert env["AGENTMESH_EGRESS_HTTP"] == f"http://{bootstrap.listen.egress_http}"
