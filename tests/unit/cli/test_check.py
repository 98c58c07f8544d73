"""`agentmesh check`: findings and the exit code that tells CI whether there is an error."""

from __future__ import annotations

import json

from tests.unit.cli.conftest import BackgroundAdmin, Run
from tests.unit.control_plane.api.harness import EXAMPLES


def test_a_consistent_mesh_passes(run: Run):
    run("policy", "apply", "-f", str(EXAMPLES))

    result = run("check")

    assert (result.exit_code, result.stdout) == (0, "No problems found.\n")


def test_warnings_alone_exit_0(run: Run, admin: BackgroundAdmin):
    run("policy", "apply", "-f", str(EXAMPLES))
    admin.call(lambda: admin.harness.registry.deregister("127.0.0.1:7101"))  # writer, named by the access policy

    result = run("check")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEVERITY", "SUBJECT", "MESSAGE"]
    assert lines[1].split()[:2] == ["warning", "AccessPolicy/researcher-access"]
    assert lines[-1] == "0 errors, 1 warning"


def test_errors_exit_1(run: Run, admin: BackgroundAdmin):
    run("policy", "apply", "-f", str(EXAMPLES))

    def break_things() -> None:
        admin.harness.registry.deregister("127.0.0.1:7011")  # researcher v2, still in the canary split
        admin.harness.registry.heartbeat("127.0.0.1:7201", healthy=False)  # planner's only instance

    admin.call(break_things)

    result = run("check")

    assert result.exit_code == 1
    rows = result.stdout.splitlines()
    assert [row.split()[:2] for row in rows[1:5]] == [
        ["error", "TrafficPolicy/researcher-canary"],
        ["error", "TrafficPolicy/researcher-canary"],
        ["error", "agent/planner"],
        ["error", "service/planning.v1.Planner"],
    ]
    assert rows[-1] == "4 errors, 0 warnings"

    as_json = run("check", "-o", "json")
    assert as_json.exit_code == 1
    findings = json.loads(as_json.stdout)["findings"]
    assert findings[2] == {"severity": "error", "subject": "agent/planner", "message": "its only instance is unhealthy"}
