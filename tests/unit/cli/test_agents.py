"""`agentmesh agents` and `agents describe` against a real admin API."""

from __future__ import annotations

import json

import yaml

from tests.unit.cli.conftest import BackgroundAdmin, Run


def test_agents_table(run: Run, admin: BackgroundAdmin):
    admin.call(lambda: admin.harness.registry.heartbeat("127.0.0.1:7002", healthy=False))

    result = run("agents")

    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [
        ["NAME", "TEAM", "VERSIONS", "INSTANCES", "SERVICES"],
        ["planner", "planning", "v1", "1/1", "planning.v1.Planner"],
        ["researcher", "research", "v1,v2", "2/3", "research.v1.Researcher"],
        ["writer", "writing", "v1", "1/1", "writing.v1.Writer"],
    ]


def test_agents_json_and_yaml(run: Run):
    as_json = json.loads(run("agents", "-o", "json").stdout)
    as_yaml = yaml.safe_load(run("agents", "-o", "yaml").stdout)

    assert as_json == as_yaml
    researcher = as_json["agents"][1]
    assert researcher["name"] == "researcher"
    assert [v["version"] for v in researcher["versions"]] == ["v1", "v2"]
    instance = researcher["versions"][0]["instances"][0]
    assert instance["address"] == "127.0.0.1:7001"
    assert instance["healthy"] is True
    assert instance["last_report"].endswith("Z")
    assert researcher["skills"][0]["method"] == "/research.v1.Researcher/Search"


def test_no_agents(run: Run, admin: BackgroundAdmin):
    def empty() -> None:
        for instance in admin.harness.registry.instances():
            admin.harness.registry.deregister(instance.instance_id)

    admin.call(empty)

    result = run("agents")

    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "No agents registered.\n")


def test_describe_an_agent(run: Run):
    result = run("agents", "describe", "researcher")

    assert result.exit_code == 0
    out = result.stdout
    assert "Name:       researcher\nTeam:       research\nServices:   research.v1.Researcher\n" in out
    assert "Instances:  3/3 healthy\n" in out
    versions = out[out.index("Versions:") : out.index("Skills:")].splitlines()[1:]
    assert versions[0].split() == ["VERSION", "INSTANCE", "ADDRESS", "ZONE", "HEALTH", "LAST", "REPORT"]
    assert versions[3].split()[:5] == ["v2", "127.0.0.1:7011", "127.0.0.1:7011", "eu-1", "healthy"]
    assert versions[1].split()[3] == "<none>"
    skills = out[out.index("Skills:") :].splitlines()[1:]
    assert skills[0].split() == ["METHOD", "IDEMPOTENT", "TIMEOUT", "STREAMING", "TAGS"]
    assert skills[1].split() == ["/research.v1.Researcher/Search", "yes", "20s", "no", "search,web"]
    assert skills[2].split() == ["/research.v1.Researcher/Cite", "no", "20s", "no", "search,web"]


def test_describe_as_yaml(run: Run):
    agent = yaml.safe_load(run("agents", "describe", "writer", "-o", "yaml").stdout)

    assert agent["name"] == "writer"
    assert agent["skills"][0]["idempotent"] is False


def test_describe_an_unknown_agent_exits_1(run: Run):
    result = run("agents", "describe", "ghost")

    assert result.exit_code == 1
    assert result.stderr == "error: agent 'ghost' is not registered (registered: planner, researcher, writer)\n"


def test_connection_options_on_the_group_reach_describe(run: Run, admin: BackgroundAdmin):
    result = run(
        "agents", "--control-plane", admin.address, "describe", "writer", env={"AGENTMESH_CONTROL_PLANE": "x:1"}
    )

    assert result.exit_code == 0
