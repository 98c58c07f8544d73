"""Validation: every issue names file, line and field path; errors block, warnings don't."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.config import ConfigError
from control_plane.policy.model import AgentConfig, TrafficPolicy
from control_plane.policy.validate import (
    PolicyDocument,
    check_policy_set,
    load_documents,
    parse_documents,
    read_documents,
    validate_documents,
    validate_paths,
)
from control_plane.translate import AgentView, InstanceView, MeshView

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "policies"

REGISTRY = MeshView.of(
    AgentView(
        "researcher",
        team="research",
        versions={"v1": (InstanceView("127.0.0.1:7001"),), "v2": (InstanceView("127.0.0.1:7002"),)},
        services=("research.v1.Researcher",),
        methods=("research.v1.Researcher/Search",),
    ),
    AgentView(
        "planner",
        team="planning",
        versions={"v1": (InstanceView("127.0.0.1:7003"),)},
        services=("planning.v1.Planner",),
        methods=("planning.v1.Planner/Plan",),
    ),
    AgentView(
        "writer",
        team="writing",
        versions={"v1": (InstanceView("127.0.0.1:7004"),)},
        services=("writing.v1.Writer",),
        methods=("writing.v1.Writer/Draft", "writing.v1.Writer/StreamDraft"),
    ),
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def messages(issues) -> list[str]:
    return [str(i) for i in issues]


def test_examples_are_valid_against_the_example_registry() -> None:
    documents, report = validate_paths([EXAMPLES], registry=REGISTRY)
    assert report.errors == () and report.warnings == ()
    assert sorted(str(d.ref) for d in documents) == [
        "AccessPolicy/researcher-access",
        "AgentConfig/researcher-config",
        "TrafficPolicy/researcher-canary",
    ]


def test_parse_errors_name_file_line_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """\
apiVersion: agentmesh.io/v1
kind: TrafficPolicy
metadata:
  name: canary
spec:
  target: researcher
  split:
    - version: v1
      weight: 90
    - version: v2
      weight: 20
  retries:
    attempts: two
    jitter: 1
---
apiVersion: agentmesh.io/v2
kind: Gateway
---
- just a list
""",
    )
    documents, issues = read_documents([path])
    assert documents == []
    assert messages(issues) == [
        f"{path}:7: spec.split: weights must sum to 100, got 110",
        f"{path}:13: spec.retries.attempts: Input should be a valid integer, unable to parse string as an integer",
        f"{path}:14: spec.retries.jitter: unknown key",
        f"{path}:16: apiVersion: unsupported 'agentmesh.io/v2': use agentmesh.io/v1",
        f"{path}:17: kind: unknown kind 'Gateway': expected one of TrafficPolicy, AccessPolicy, AgentConfig",
        f"{path}:19: expected a mapping with apiVersion, kind, metadata and spec",
    ]
    with pytest.raises(ConfigError) as caught:
        load_documents([path])
    assert str(caught.value).splitlines() == messages(issues)


def test_yaml_syntax_error_and_missing_paths(tmp_path: Path) -> None:
    bad = write(tmp_path, "broken.yaml", "kind: [unclosed\n")
    _, issues = read_documents([bad, tmp_path / "absent.yaml"])
    assert messages(issues)[0].startswith(f"{bad}:2: invalid YAML: ")
    assert messages(issues)[1] == f"{tmp_path / 'absent.yaml'}: no such file or directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    _, issues = read_documents([empty])
    assert messages(issues) == [f"{empty}: no .yaml or .yml files in this directory"]


def test_directories_are_read_recursively_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    write(
        tmp_path / "b",
        "z.yml",
        "apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {name: z}\nspec: {target: writer}\n",
    )
    write(
        tmp_path,
        "a.yaml",
        "apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {name: a}\nspec: {target: researcher}\n---\n"
        "apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {name: c}\nspec: {target: planner}\n",
    )
    write(tmp_path, "notes.txt", "not a policy")
    documents = load_documents([tmp_path])
    assert [d.policy.metadata.name for d in documents] == ["a", "c", "z"]
    assert documents[1].line() == 6
    assert documents[1].line(("spec", "target")) == 9


def test_duplicates_and_conflicts_point_at_both_places(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "one.yaml",
        "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec: {target: researcher}\n",
    )
    second = write(
        tmp_path,
        "two.yaml",
        "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: a}\nspec: {target: writer}\n---\n"
        "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: b}\nspec:\n  target: researcher\n",
    )
    _, report = validate_paths([first, second])
    assert messages(report.errors) == [
        f"{second}:3: metadata.name: duplicate TrafficPolicy/a: also defined at {first}:1",
        f"{second}:10: spec.target: researcher already has TrafficPolicy/a ({first}:1): "
        "one TrafficPolicy per target; merge them into one document",
    ]


def test_conflicts_with_stored_policies_but_not_with_the_one_replaced() -> None:
    stored = [
        AgentConfig.model_validate({"metadata": {"name": "old"}, "spec": {"target": "researcher"}}),
        AgentConfig.model_validate({"metadata": {"name": "mine"}, "spec": {"target": "planner"}}),
    ]
    documents, issues = parse_documents(
        "apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {name: new}\nspec: {target: researcher}\n---\n"
        "apiVersion: agentmesh.io/v1\nkind: AgentConfig\nmetadata: {name: mine}\nspec: {target: planner}\n",
        "cfg.yaml",
    )
    assert issues == []
    report = validate_documents(documents, stored=stored)
    assert messages(report.errors) == [
        "cfg.yaml:4: spec.target: researcher already has AgentConfig/old (stored AgentConfig/old): "
        "one AgentConfig per target; merge them into one document"
    ]


def test_registry_errors_and_warnings() -> None:
    documents, issues = parse_documents(
        """\
apiVersion: agentmesh.io/v1
kind: TrafficPolicy
metadata: {name: r}
spec:
  target: researcher
  split:
    - {version: v1, weight: 50}
    - {version: v3, weight: 50}
  routes:
    - match:
        - method: writing.v1.Writer/Draft
        - method: research.v1.Researcher/Fetch
        - method: research.v1.Researcher/*
---
apiVersion: agentmesh.io/v1
kind: TrafficPolicy
metadata: {name: s}
spec:
  target: writing.v1.Writer
  split:
    - {agent: researcher, weight: 40}
    - {agent: ghost, weight: 30}
    - {agent: writer, version: v9, weight: 30}
  routes:
    - match: [{method: writing.v1.Writer/Erase}]
---
apiVersion: agentmesh.io/v1
kind: AccessPolicy
metadata: {name: a}
spec:
  target: researcher
  rules:
    - action: allow
      from: {agents: [planner, editor]}
      to:
        services: [writing.v1.Writer]
        methods: [research.v1.Researcher/Search]
---
apiVersion: agentmesh.io/v1
kind: AgentConfig
metadata: {name: c}
spec: {target: summarizer}
""",
        "p.yaml",
    )
    assert issues == []
    report = validate_documents(documents, registry=REGISTRY)
    assert messages(report.errors) == [
        "p.yaml:8: spec.split[1].version: version 'v3' of researcher is not registered (registered: v1, v2)",
        "p.yaml:11: spec.routes[0].match[0].method: researcher does not serve writing.v1.Writer "
        "(serves: research.v1.Researcher)",
        "p.yaml:12: spec.routes[0].match[1].method: research.v1.Researcher has no method 'Fetch' (methods: Search)",
        "p.yaml:21: spec.split[0].agent: researcher does not implement writing.v1.Writer",
        "p.yaml:23: spec.split[2].version: version 'v9' of writer is not registered (registered: v1)",
        "p.yaml:25: spec.routes[0].match[0].method: writing.v1.Writer has no method 'Erase' "
        "(methods: Draft, StreamDraft)",
        "p.yaml:36: spec.rules[0].to.services[0]: researcher does not serve writing.v1.Writer "
        "(serves: research.v1.Researcher)",
    ]
    assert messages(report.warnings) == [
        "p.yaml:22: spec.split[1].agent: agent 'ghost' is not registered; the policy applies once it registers",
        "p.yaml:34: spec.rules[0].from.agents[1]: agent 'editor' is not registered; the rule applies once it registers",
        "p.yaml:42: spec.target: agent 'summarizer' is not registered; the policy applies once it registers",
    ]
    assert not report.ok
    with pytest.raises(ConfigError):
        report.raise_for_errors()


def test_unknown_agent_target_is_only_a_warning() -> None:
    documents, _ = parse_documents(
        "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: x}\n"
        "spec:\n  target: translator\n  split: [{version: v7, weight: 100}]\n",
        "x.yaml",
    )
    report = validate_documents(documents, registry=REGISTRY)
    assert report.ok
    assert messages(report.warnings) == [
        "x.yaml:5: spec.target: agent 'translator' is not registered; the policy applies once it registers"
    ]
    report.raise_for_errors()


def test_service_with_no_implementation_is_a_warning() -> None:
    documents, _ = parse_documents(
        "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: x}\n"
        "spec: {target: translate.v1.Translator}\n",
        "x.yaml",
    )
    report = validate_documents(documents, registry=REGISTRY)
    assert messages(report.warnings) == [
        "x.yaml:4: spec.target: no registered agent implements translate.v1.Translator; "
        "the policy applies once one registers"
    ]


def test_policy_set_check_without_files() -> None:
    one = TrafficPolicy.model_validate({"metadata": {"name": "a"}, "spec": {"target": "researcher"}})
    two = TrafficPolicy.model_validate({"metadata": {"name": "b"}, "spec": {"target": "researcher"}})
    assert messages(check_policy_set([one, two])) == [
        "TrafficPolicy/b: spec.target: researcher already has TrafficPolicy/a (TrafficPolicy/a): "
        "one TrafficPolicy per target; merge them into one document"
    ]
    assert PolicyDocument.unplaced(one).where() == "TrafficPolicy/a"


def test_complete_documents_in_the_docs_are_valid() -> None:
    text = (EXAMPLES.parents[1] / "docs" / "policy.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    complete = [b for b in blocks if b.startswith("apiVersion: agentmesh.io/v1") and "target:" in b]
    assert len(complete) == 4
    for block in complete:
        documents, issues = parse_documents(block, "docs/policy.md")
        assert issues == [] and len(documents) == 1
        assert validate_documents(documents, registry=REGISTRY).errors == ()
