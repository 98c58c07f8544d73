"""`agentmesh policy ...` against a real admin API: output formats, kind aliases and exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from tests.unit.cli.conftest import BackgroundAdmin, Run
from tests.unit.control_plane.api.harness import EXAMPLES

TRAFFIC = EXAMPLES / "researcher-traffic.yaml"

CANARY = """\
apiVersion: agentmesh.io/v1
kind: TrafficPolicy
metadata:
  name: {name}
spec:
  target: {target}
  split:
    - {{version: v1, weight: {v1}}}
    - {{version: v2, weight: {v2}}}
"""


def write(directory: Path, name: str, *, policy: str = "canary", target: str = "researcher", v1=90, v2=10) -> Path:
    path = directory / name
    path.write_text(CANARY.format(name=policy, target=target, v1=v1, v2=v2))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- apply --------------------------------------------------------------------------------------------------------


def test_apply_a_directory_prints_what_was_created(run: Run, admin: BackgroundAdmin):
    result = run("policy", "apply", "-f", str(EXAMPLES), "-m", "first")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "accesspolicy/researcher-access created",
        "agentconfig/researcher-config created",
        "trafficpolicy/researcher-canary created",
    ]
    assert result.stderr == "policy version 1\n"
    assert admin.harness.store.history()[0].message == "first"


def test_apply_again_is_unchanged(run: Run):
    run("policy", "apply", "-f", str(EXAMPLES))

    result = run("policy", "apply", "-f", str(EXAMPLES))

    assert result.exit_code == 0
    assert all(line.endswith(" unchanged") for line in result.stdout.splitlines())
    assert result.stderr == "no changes (policy version 1)\n"


def test_apply_dry_run_prints_the_diff_and_stores_nothing(run: Run, admin: BackgroundAdmin):
    result = run("policy", "apply", "-f", str(TRAFFIC), "--dry-run")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "trafficpolicy/researcher-canary created (dry run)"
    assert "+++ b/TrafficPolicy/researcher-canary" in lines
    assert "+  target: researcher" in lines
    assert "dry run: nothing stored (policy version 0)" in result.stderr
    assert admin.harness.store.current_version() == 0


def test_apply_with_diff_configures_and_shows_the_change(run: Run, tmp_path: Path):
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml")))

    result = run("policy", "apply", "-f", str(write(tmp_path, "c.yaml", v1=50, v2=50)), "--diff")

    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "trafficpolicy/canary configured"
    assert "-    weight: 90\n+    weight: 50\n" in result.stdout
    assert result.stderr == "policy version 2\n"


def test_apply_prune_deletes_what_the_files_do_not_hold(run: Run):
    run("policy", "apply", "-f", str(EXAMPLES))

    result = run("policy", "apply", "-f", str(TRAFFIC), "--prune")

    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "accesspolicy/researcher-access deleted",
        "agentconfig/researcher-config deleted",
        "trafficpolicy/researcher-canary unchanged",
    ]


def test_apply_reads_stdin(run: Run):
    result = run("policy", "apply", "-f", "-", input=TRAFFIC.read_text())

    assert result.exit_code == 0
    assert result.stdout == "trafficpolicy/researcher-canary created\n"


def test_invalid_policy_exits_2_with_file_and_line_and_stores_nothing(run: Run, admin: BackgroundAdmin, tmp_path: Path):
    bad = write(tmp_path, "bad.yaml", v1=90, v2=20)
    good = write(tmp_path, "good.yaml", policy="other", target="ghost")

    result = run("policy", "apply", "-f", str(good), "-f", str(bad))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {bad}:7: spec.split: weights must sum to 100, got 110\n"
    assert admin.harness.store.current_version() == 0


def test_registry_errors_and_warnings(run: Run, tmp_path: Path):
    unknown_version = CANARY.format(name="c", target="researcher", v1=90, v2=10).replace("version: v2", "version: v7")
    (tmp_path / "v7.yaml").write_text(unknown_version)

    refused = run("policy", "apply", "-f", str(tmp_path / "v7.yaml"))
    assert refused.exit_code == 2
    assert "spec.split[1].version: version 'v7' of researcher is not registered (registered: v1, v2)" in refused.stderr

    warned = run("policy", "apply", "-f", str(write(tmp_path, "ghost.yaml", target="ghost")))
    assert warned.exit_code == 0
    assert warned.stdout == "trafficpolicy/canary created\n"
    assert f"warning: {tmp_path / 'ghost.yaml'}:6: spec.target: agent 'ghost' is not registered" in warned.stderr


@pytest.mark.parametrize(
    ("path", "message"),
    [("missing.yaml", "missing.yaml: no such file or directory"), ("empty-dir", "no .yaml or .yml files")],
)
def test_unreadable_input_exits_2_before_calling(run: Run, tmp_path: Path, path: str, message: str):
    (tmp_path / "empty-dir").mkdir()

    result = run("policy", "apply", "-f", str(tmp_path / path))

    assert result.exit_code == 2
    assert message in result.stderr


# --- get / describe -----------------------------------------------------------------------------------------------


def test_get_table(run: Run):
    run("policy", "apply", "-f", str(EXAMPLES))

    result = run("policy", "get")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "TARGET", "SUMMARY"]
    assert lines[1].split()[:3] == ["AccessPolicy", "researcher-access", "researcher"]
    assert lines[1].endswith("default deny, 2 rules")
    assert lines[2].endswith("2 values: max-sources, model")
    assert lines[3].endswith("split v1:90 v2:10, 1 route, timeout 20s, retries 2")
    # Columns line up.
    assert len({line.index("researcher ") for line in lines[1:]}) == 1


def test_get_json_and_yaml(run: Run):
    run("policy", "apply", "-f", str(EXAMPLES))

    as_json = json.loads(run("policy", "get", "-o", "json").stdout)
    assert as_json["version"] == 1
    assert [item["kind"] for item in as_json["items"]] == ["AccessPolicy", "AgentConfig", "TrafficPolicy"]
    assert as_json["items"][2]["spec"]["split"] == [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]

    as_yaml = run("policy", "get", "-o", "yaml").stdout
    documents = list(yaml.safe_load_all(as_yaml))
    assert documents == as_json["items"]
    assert as_yaml.count("---\n") == 2


@pytest.mark.parametrize("alias", ["TrafficPolicy", "trafficpolicy", "trafficpolicies", "tp", "TP", "TrafficPolicies"])
def test_kind_aliases(run: Run, alias: str):
    run("policy", "apply", "-f", str(EXAMPLES))

    result = run("policy", "get", alias, "-o", "json")

    assert result.exit_code == 0
    assert [item["kind"] for item in json.loads(result.stdout)["items"]] == ["TrafficPolicy"]


@pytest.mark.parametrize(("alias", "kind"), [("ap", "AccessPolicy"), ("agentconfigs", "AgentConfig")])
def test_other_kind_aliases(run: Run, alias: str, kind: str):
    run("policy", "apply", "-f", str(EXAMPLES))

    documents = list(yaml.safe_load_all(run("policy", "get", alias, "-o", "yaml").stdout))

    assert [d["kind"] for d in documents] == [kind]


def test_an_unknown_kind_is_a_usage_error(run: Run):
    result = run("policy", "get", "gateway")

    assert result.exit_code == 2
    assert "unknown kind 'gateway'" in result.stderr
    assert "TrafficPolicy (trafficpolicy, trafficpolicies, tp)" in result.stderr


def test_get_one_past_version_and_not_found(run: Run, tmp_path: Path):
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml")))
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml", v1=50, v2=50)))

    old = yaml.safe_load(run("policy", "get", "tp", "canary", "--version", "1", "-o", "yaml").stdout)
    assert old["spec"]["split"][0]["weight"] == 90

    missing = run("policy", "get", "tp", "nope")
    assert missing.exit_code == 1
    assert missing.stderr == "error: TrafficPolicy/nope not found at version 2\n"

    no_version = run("policy", "get", "--version", "9")
    assert no_version.exit_code == 1
    assert "no version 9" in no_version.stderr


def test_get_nothing(run: Run):
    result = run("policy", "get")

    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "No policies found (policy version 0).\n"


def test_describe_shows_the_document_and_the_versions_that_changed_it(run: Run, tmp_path: Path):
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml")), "-m", "canary 10%")
    run("policy", "apply", "-f", str(EXAMPLES / "researcher-config.yaml"))
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml", v1=50, v2=50)), "-m", "canary 50%")

    result = run("policy", "describe", "trafficpolicy", "canary")

    assert result.exit_code == 0
    out = result.stdout
    assert "Name:     canary\nKind:     TrafficPolicy\nTarget:   researcher\n" in out
    history = out[out.index("History:") : out.index("Document:")].splitlines()[1:]
    assert history[0].split()[:1] == ["VERSION"]
    assert [row.split()[0] for row in history[1:]] == ["3", "1"]
    assert "configured" in history[1] and history[1].endswith("canary 50%")
    assert "created" in history[2]
    assert "  spec:\n    target: researcher\n" in out


# --- delete / history / rollback ----------------------------------------------------------------------------------


def test_delete(run: Run, admin: BackgroundAdmin):
    run("policy", "apply", "-f", str(EXAMPLES))

    dry = run("policy", "delete", "ac", "researcher-config", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.splitlines()[0] == "agentconfig/researcher-config deleted (dry run)"
    assert "--- a/AgentConfig/researcher-config" in dry.stdout
    assert admin.harness.store.current_version() == 1

    done = run("policy", "delete", "agentconfig", "researcher-config")
    assert done.exit_code == 0
    assert done.stdout == "agentconfig/researcher-config deleted\n"
    assert done.stderr == "policy version 2\n"

    missing = run("policy", "delete", "agentconfig", "researcher-config")
    assert missing.exit_code == 1
    assert missing.stderr == "error: AgentConfig/researcher-config is not stored\n"


def test_history_in_every_format(run: Run, tmp_path: Path):
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml")), "-m", "canary 10%")
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml", v1=50, v2=50)), "-m", "canary 50%")

    table = run("policy", "history").stdout.splitlines()
    assert table[0].split() == ["VERSION", "TIME", "AUTHOR", "CHANGES", "MESSAGE"]
    assert table[1].split()[0] == "2"
    assert "~trafficpolicy/canary" in table[1]
    assert table[1].endswith("canary 50%")
    assert "+trafficpolicy/canary" in table[2]

    versions = json.loads(run("policy", "history", "--limit", "1", "-o", "json").stdout)
    assert [v["version"] for v in versions] == ["2"]  # int64 is a string in the protobuf JSON mapping
    assert versions[0]["changed"] == [{"kind": "TrafficPolicy", "name": "canary"}]
    assert "+    weight: 50" in versions[0]["diff"]

    as_yaml = yaml.safe_load(run("policy", "history", "-o", "yaml").stdout)
    assert [v["message"] for v in as_yaml] == ["canary 50%", "canary 10%"]


def test_history_when_empty(run: Run):
    result = run("policy", "history")

    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "No policy versions yet.\n")


def test_rollback(run: Run, admin: BackgroundAdmin, tmp_path: Path):
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml")))
    run("policy", "apply", "-f", str(write(tmp_path, "c.yaml", v1=0, v2=100)))

    dry = run("policy", "rollback", "1", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.splitlines()[0] == "trafficpolicy/canary configured (dry run)"
    assert "+    weight: 90" in dry.stdout
    assert admin.harness.store.current_version() == 2

    done = run("policy", "rollback", "1")
    assert (done.exit_code, done.stdout, done.stderr) == (0, "trafficpolicy/canary configured\n", "policy version 3\n")

    unknown = run("policy", "rollback", "9")
    assert unknown.exit_code == 1
    assert unknown.stderr == "error: no version 9 (current: 3)\n"


# --- validate (offline) -------------------------------------------------------------------------------------------


def test_validate_needs_no_control_plane(tmp_path: Path):
    from click.testing import CliRunner

    from agentmesh.cli.main import cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["policy", "validate", "-f", str(EXAMPLES)])
    assert (ok.exit_code, ok.stdout) == (0, "3 documents valid\n")

    bad = runner.invoke(cli, ["policy", "validate", "-f", str(write(tmp_path, "bad.yaml", v1=1, v2=1))])
    assert bad.exit_code == 2
    assert bad.stderr == f"error: {tmp_path / 'bad.yaml'}:7: spec.split: weights must sum to 100, got 2\n"


# --- connection ---------------------------------------------------------------------------------------------------


def test_an_unreachable_control_plane_exits_3(run: Run):
    address = f"127.0.0.1:{closed_port()}"

    result = run("policy", "get", env={"AGENTMESH_CONTROL_PLANE": address})

    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: cannot reach the control plane at {address}: ")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("wrong", "error: the control plane refused the call: invalid token"),
        ("", "(no token given: pass --token or set AGENTMESH_TOKEN)"),
    ],
)
def test_a_bad_token_exits_1(run: Run, token: str, message: str):
    result = run("policy", "get", env={"AGENTMESH_TOKEN": token})

    assert result.exit_code == 1
    assert message in result.stderr


def test_command_line_options_win_over_the_environment_on_the_group_or_the_command(run: Run, admin: BackgroundAdmin):
    wrong = {"AGENTMESH_CONTROL_PLANE": f"127.0.0.1:{closed_port()}", "AGENTMESH_TOKEN": "wrong"}

    on_command = run("policy", "get", "--control-plane", admin.address, "--token", "s3cret-token", env=wrong)
    on_group = run("policy", "--control-plane", admin.address, "--token", "s3cret-token", "get", env=wrong)

    assert (on_command.exit_code, on_group.exit_code) == (0, 0)
