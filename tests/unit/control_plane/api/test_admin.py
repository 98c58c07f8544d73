"""The admin API over a real grpc.aio server: every RPC, its answers and its refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.config import ConfigError, ConfigIssue
from agentmesh.v1 import control_pb2, control_pb2_grpc
from control_plane.access.roles import BOOTSTRAP_NAME
from control_plane.policy.store import PolicyStoreError
from control_plane.xds.ack_tracker import SyncStatus
from control_plane.xds.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from tests.unit.control_plane.api.harness import EXAMPLES, RESEARCHER, TOKEN, AdminHarness, populate, start_admin
from tests.unit.control_plane.xds.ads_client import AdsClient
from tests.unit.control_plane.xds.resources import agent_snapshot

AUTH = (("authorization", f"Bearer {TOKEN}"),)

CANARY = """\
apiVersion: agentmesh.io/v1
kind: TrafficPolicy
metadata:
  name: {name}
spec:
  target: {target}
  split:
    - {{version: v1, weight: {v1}}}
    - {{version: {v2_name}, weight: {v2}}}
"""


def canary(name: str = "researcher-canary", *, target: str = "researcher", v1: int = 90, v2: int = 10, v2_name="v2"):
    return CANARY.format(name=name, target=target, v1=v1, v2=v2, v2_name=v2_name)


def example_files() -> list[control_pb2.PolicyFile]:
    return [
        control_pb2.PolicyFile(name=f"policies/{path.name}", content=path.read_text())
        for path in sorted(EXAMPLES.glob("*.yaml"))
    ]


def refs(items: Any) -> list[str]:
    return [f"{ref.kind}/{ref.name}" for ref in items]


class Admin:
    """The stub with the token attached."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = control_pb2_grpc.ControlPlaneStub(channel)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self._stub, method)

        async def invoke(request: Any) -> Any:
            return await call(request, metadata=AUTH, timeout=10)

        return invoke


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminHarness]:
    harness = await start_admin(tmp_path / "cp.db")
    populate(harness.registry)
    yield harness
    await harness.stop()


@pytest.fixture
async def api(admin: AdminHarness) -> AsyncIterator[Admin]:
    channel = grpc.aio.insecure_channel(admin.address)
    yield Admin(channel)
    await channel.close(None)


async def apply(api: Admin, *files: tuple[str, str], **options: Any) -> control_pb2.PolicyChange:
    request = control_pb2.ApplyPoliciesRequest(
        files=[control_pb2.PolicyFile(name=name, content=content) for name, content in files],
        author=options.pop("author", "alice"),
        **options,
    )
    return await api.ApplyPolicies(request)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def details(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


def bad_request(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return [(v.field, v.description) for v in bad.field_violations]
    return []


# --- ApplyPolicies ------------------------------------------------------------------------------------------------


async def test_apply_stores_a_new_version_and_announces_it(admin: AdminHarness, api: Admin):
    change = await api.ApplyPolicies(
        control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice", message="first")
    )

    assert change.version == 1
    assert not change.dry_run
    assert refs(change.added) == [
        "AccessPolicy/researcher-access",
        "AgentConfig/researcher-config",
        "TrafficPolicy/researcher-canary",
    ]
    assert list(change.warnings) == []
    assert "+++ b/TrafficPolicy/researcher-canary" in change.diff
    assert admin.changes == [1]
    assert admin.store.history()[0].author == BOOTSTRAP_NAME
    assert admin.store.history()[0].message == "first"


async def test_applying_the_same_documents_again_changes_nothing(admin: AdminHarness, api: Admin):
    await api.ApplyPolicies(control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice"))

    again = await api.ApplyPolicies(control_pb2.ApplyPoliciesRequest(files=example_files(), author="bob"))

    assert again.version == 1
    assert len(again.unchanged) == 3
    assert not (again.added or again.changed or again.removed)
    assert admin.changes == [1]


async def test_a_change_reports_what_was_configured(admin: AdminHarness, api: Admin):
    await apply(api, ("canary.yaml", canary(v1=90, v2=10)))

    change = await apply(api, ("canary.yaml", canary(v1=50, v2=50)))

    assert change.version == 2
    assert refs(change.changed) == ["TrafficPolicy/researcher-canary"]
    assert "-    weight: 90\n+    weight: 50\n" in change.diff
    assert admin.changes == [1, 2]


async def test_a_dry_run_stores_nothing_and_returns_the_diff(admin: AdminHarness, api: Admin):
    change = await api.ApplyPolicies(
        control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice", dry_run=True)
    )

    assert change.dry_run
    assert change.version == 0
    assert len(change.added) == 3
    assert "+++ b/AccessPolicy/researcher-access" in change.diff
    assert admin.store.current_version() == 0
    assert admin.store.history() == []
    assert admin.changes == []


async def test_invalid_yaml_is_refused_with_file_and_line_and_nothing_is_stored(admin: AdminHarness, api: Admin):
    error = await refused(
        apply(api, ("good.yaml", canary(name="fine", target="writer-two")), ("bad.yaml", canary(v1=90, v2=20)))
    )

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == "bad.yaml:7: spec.split: weights must sum to 100, got 110"
    assert bad_request(error) == [("bad.yaml:7 spec.split", "weights must sum to 100, got 110")]
    assert admin.store.current_version() == 0
    assert admin.changes == []


async def test_every_issue_of_every_file_is_listed(api: Admin):
    broken = "apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata: {name: x\n"
    unknown_key = canary().replace("  target: researcher\n", "  target: researcher\n  jitter: 5\n")

    error = await refused(
        apply(api, ("broken.yaml", broken), ("extra.yaml", unknown_key), ("v3.yaml", canary(name="c", v2_name="v3")))
    )

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    lines = details(error).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("broken.yaml:")
    assert lines[1].startswith("extra.yaml:7: spec.jitter:")
    # Checked against the registry: researcher is registered without a v3.
    assert lines[2] == (
        "v3.yaml:9: spec.split[1].version: version 'v3' of researcher is not registered (registered: v1, v2)"
    )
    assert len(bad_request(error)) == 3


async def test_warnings_do_not_block_the_change(admin: AdminHarness, api: Admin):
    change = await apply(api, ("ghost.yaml", canary(name="ghost-canary", target="ghost")))

    assert change.version == 1
    assert list(change.warnings) == [
        "ghost.yaml:6: spec.target: agent 'ghost' is not registered; the policy applies once it registers"
    ]


async def test_a_second_policy_for_a_stored_target_conflicts_unless_pruned(admin: AdminHarness, api: Admin):
    await apply(api, ("canary.yaml", canary()))

    error = await refused(apply(api, ("other.yaml", canary(name="other"))))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "other.yaml:6: spec.target: researcher already has TrafficPolicy/researcher-canary" in details(error)

    change = await apply(api, ("other.yaml", canary(name="other")), prune=True)
    assert refs(change.added) == ["TrafficPolicy/other"]
    assert refs(change.removed) == ["TrafficPolicy/researcher-canary"]


async def test_prune_deletes_what_the_files_do_not_hold(admin: AdminHarness, api: Admin):
    await api.ApplyPolicies(control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice"))

    traffic = EXAMPLES / "researcher-traffic.yaml"
    change = await apply(api, ("traffic.yaml", traffic.read_text()), prune=True)

    assert refs(change.removed) == ["AccessPolicy/researcher-access", "AgentConfig/researcher-config"]
    assert refs(change.unchanged) == ["TrafficPolicy/researcher-canary"]
    assert [p.kind for p in admin.store.get()] == ["TrafficPolicy"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ((), "no policy files given"),
        ((("empty.yaml", "# nothing here\n"),), "no policy documents in empty.yaml"),
    ],
)
async def test_nothing_to_apply_is_refused(api: Admin, files: tuple[tuple[str, str], ...], message: str):
    error = await refused(apply(api, *files, prune=True))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == message


async def test_a_file_without_a_name_is_named_in_errors(api: Admin):
    error = await refused(apply(api, ("", "kind: Gateway\n")))

    assert details(error).startswith("<unnamed>:1: ")


async def test_store_refusals_are_failed_precondition(admin: AdminHarness, api: Admin, monkeypatch: pytest.MonkeyPatch):
    def locked(*_: Any, **__: Any) -> Any:
        raise PolicyStoreError("the store is read-only")

    monkeypatch.setattr(admin.store, "apply", locked)

    error = await refused(apply(api, ("canary.yaml", canary())))

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert details(error) == "the store is read-only"


async def test_a_conflict_found_by_the_store_is_invalid_argument(
    admin: AdminHarness, api: Admin, monkeypatch: pytest.MonkeyPatch
):
    def conflicting(*_: Any, **__: Any) -> Any:
        raise ConfigError([ConfigIssue("TrafficPolicy/b", None, "spec.target", "researcher already has one")])

    monkeypatch.setattr(admin.store, "apply", conflicting)

    error = await refused(apply(api, ("canary.yaml", canary())))

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == "TrafficPolicy/b: spec.target: researcher already has one"
    assert bad_request(error) == [("TrafficPolicy/b spec.target", "researcher already has one")]


@pytest.mark.parametrize("claimed", ["", "mallory"])
async def test_the_author_is_the_credential_whatever_the_request_claims(admin: AdminHarness, api: Admin, claimed: str):
    await apply(api, ("canary.yaml", canary()), author=claimed)

    assert admin.store.history()[0].author == BOOTSTRAP_NAME


# --- GetPolicies --------------------------------------------------------------------------------------------------


async def test_get_lists_filters_and_reads_past_versions(admin: AdminHarness, api: Admin):
    await api.ApplyPolicies(control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice"))
    await apply(api, ("canary.yaml", canary(v1=50, v2=50)))

    every = await api.GetPolicies(control_pb2.GetPoliciesRequest())
    assert every.version == 2
    assert [(p.kind, p.name) for p in every.policies] == [
        ("AccessPolicy", "researcher-access"),
        ("AgentConfig", "researcher-config"),
        ("TrafficPolicy", "researcher-canary"),
    ]

    traffic = await api.GetPolicies(control_pb2.GetPoliciesRequest(kind="TrafficPolicy"))
    assert [p.name for p in traffic.policies] == ["researcher-canary"]
    assert "weight: 50" in traffic.policies[0].yaml

    old = await api.GetPolicies(
        control_pb2.GetPoliciesRequest(kind="TrafficPolicy", name="researcher-canary", version=1)
    )
    assert old.version == 1
    assert "weight: 90" in old.policies[0].yaml
    assert old.policies[0].yaml.startswith("apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\n")

    empty = await api.GetPolicies(control_pb2.GetPoliciesRequest(version=0, kind="AgentConfig"))
    assert len(empty.policies) == 1


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"kind": "Gateway"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown kind 'Gateway'"),
        ({"name": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "a name needs a kind"),
        ({"version": -1}, grpc.StatusCode.INVALID_ARGUMENT, "version must not be negative"),
        ({"kind": "TrafficPolicy", "name": "nope"}, grpc.StatusCode.NOT_FOUND, "TrafficPolicy/nope not found"),
        ({"version": 7}, grpc.StatusCode.NOT_FOUND, "no version 7"),
    ],
)
async def test_get_refusals(api: Admin, request_fields: dict[str, Any], code: grpc.StatusCode, message: str):
    await apply(api, ("canary.yaml", canary()))

    error = await refused(api.GetPolicies(control_pb2.GetPoliciesRequest(**request_fields)))

    assert error.code() is code
    assert message in details(error)


# --- DeletePolicy, PolicyHistory, RollbackPolicies ----------------------------------------------------------------


async def test_delete_removes_one_policy(admin: AdminHarness, api: Admin):
    await api.ApplyPolicies(control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice"))

    dry = await api.DeletePolicy(
        control_pb2.DeletePolicyRequest(kind="AgentConfig", name="researcher-config", author="bob", dry_run=True)
    )
    assert (dry.dry_run, dry.version, refs(dry.removed)) == (True, 1, ["AgentConfig/researcher-config"])
    assert "--- a/AgentConfig/researcher-config" in dry.diff
    assert admin.store.current_version() == 1

    change = await api.DeletePolicy(
        control_pb2.DeletePolicyRequest(kind="AgentConfig", name="researcher-config", author="bob")
    )
    assert (change.version, refs(change.removed)) == (2, ["AgentConfig/researcher-config"])
    assert admin.changes == [1, 2]
    assert admin.store.history()[0].author == BOOTSTRAP_NAME


@pytest.mark.parametrize(
    ("kind", "name", "code"),
    [
        ("TrafficPolicy", "nope", grpc.StatusCode.NOT_FOUND),
        ("Gateway", "x", grpc.StatusCode.INVALID_ARGUMENT),
        ("TrafficPolicy", "", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_delete_refusals(admin: AdminHarness, api: Admin, kind: str, name: str, code: grpc.StatusCode):
    await apply(api, ("canary.yaml", canary()))

    error = await refused(api.DeletePolicy(control_pb2.DeletePolicyRequest(kind=kind, name=name, author="bob")))

    assert error.code() is code
    assert admin.store.current_version() == 1


async def test_history_lists_versions_newest_first(api: Admin):
    await apply(api, ("canary.yaml", canary()), message="canary 10%")
    await apply(api, ("canary.yaml", canary(v1=50, v2=50)), author="bob", message="canary 50%")

    history = await api.PolicyHistory(control_pb2.PolicyHistoryRequest())

    assert [(v.version, v.author, v.message) for v in history.versions] == [
        (2, BOOTSTRAP_NAME, "canary 50%"),
        (1, BOOTSTRAP_NAME, "canary 10%"),
    ]
    assert refs(history.versions[0].changed) == ["TrafficPolicy/researcher-canary"]
    assert refs(history.versions[1].added) == ["TrafficPolicy/researcher-canary"]
    assert history.versions[0].time.seconds > 0
    assert "+    weight: 50" in history.versions[0].diff

    newest = await api.PolicyHistory(control_pb2.PolicyHistoryRequest(limit=1))
    assert [v.version for v in newest.versions] == [2]


async def test_rollback_makes_a_new_version_equal_to_an_old_one(admin: AdminHarness, api: Admin):
    await apply(api, ("canary.yaml", canary()))
    await apply(api, ("canary.yaml", canary(v1=0, v2=100)))

    dry = await api.RollbackPolicies(control_pb2.RollbackPoliciesRequest(version=1, author="carol", dry_run=True))
    assert (dry.dry_run, dry.version, refs(dry.changed)) == (True, 2, ["TrafficPolicy/researcher-canary"])
    assert admin.store.current_version() == 2

    change = await api.RollbackPolicies(control_pb2.RollbackPoliciesRequest(version=1, author="carol"))
    assert change.version == 3
    assert admin.store.get()[0] == admin.store.get(version=1)[0]
    assert admin.changes == [1, 2, 3]

    to_empty = await api.RollbackPolicies(control_pb2.RollbackPoliciesRequest(version=0, author="carol"))
    assert (to_empty.version, refs(to_empty.removed)) == (4, ["TrafficPolicy/researcher-canary"])


async def test_rollback_to_an_unknown_version_is_not_found(admin: AdminHarness, api: Admin):
    await apply(api, ("canary.yaml", canary()))

    error = await refused(api.RollbackPolicies(control_pb2.RollbackPoliciesRequest(version=5, author="carol")))

    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert details(error) == "no version 5 (current: 1)"
    assert admin.store.current_version() == 1


# --- ListAgents ---------------------------------------------------------------------------------------------------


async def test_list_agents_reports_versions_instances_health_and_skills(admin: AdminHarness, api: Admin):
    admin.clock.now = 1010.0
    admin.registry.heartbeat("127.0.0.1:7002", healthy=False)

    response = await api.ListAgents(control_pb2.ListAgentsRequest())

    assert [a.name for a in response.agents] == ["planner", "researcher", "writer"]
    researcher = response.agents[1]
    assert (researcher.team, list(researcher.services)) == ("research", [RESEARCHER])
    assert [v.version for v in researcher.versions] == ["v1", "v2"]
    v1 = researcher.versions[0]
    assert [(i.address, i.healthy) for i in v1.instances] == [("127.0.0.1:7001", True), ("127.0.0.1:7002", False)]
    # Registry times become wall-clock times.
    assert v1.instances[0].last_report.seconds == 1_800_001_000
    assert v1.instances[1].last_report.seconds == 1_800_001_010
    assert researcher.versions[1].instances[0].zone == "eu-1"
    # The skills of the most recently registered manifest: researcher v2.
    assert [(s.method, s.idempotent) for s in researcher.skills] == [
        ("/research.v1.Researcher/Search", True),
        ("/research.v1.Researcher/Cite", False),
    ]
    assert list(researcher.skills[0].tags) == ["search", "web"]
    assert researcher.skills[0].default_timeout.seconds == 20


async def test_list_one_agent_or_not_found(admin: AdminHarness, api: Admin):
    one = await api.ListAgents(control_pb2.ListAgentsRequest(name="writer"))
    assert [a.name for a in one.agents] == ["writer"]

    error = await refused(api.ListAgents(control_pb2.ListAgentsRequest(name="ghost")))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert details(error) == "agent 'ghost' is not registered (registered: planner, researcher, writer)"


async def test_an_agent_without_a_manifest_has_no_skills(admin: AdminHarness, api: Admin):
    admin.registry.register(agent="bare", version="v1", address="127.0.0.1:7301", manifest=b"\xff\xff")

    response = await api.ListAgents(control_pb2.ListAgentsRequest(name="bare"))

    assert list(response.agents[0].skills) == []
    assert response.agents[0].team == ""


# --- ProxyStatus --------------------------------------------------------------------------------------------------


async def eventually(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_proxy_status_merges_connected_nodes_with_ack_state(admin: AdminHarness, api: Admin):
    admin.cache.set_default(agent_snapshot("7", endpoints={"v1": [7001]}))
    admin.snapshot_version = "p3-g7"
    planner = AdsClient(admin.port, "planner-1")
    writer = AdsClient(admin.port, "writer-1")
    try:
        await planner.subscribe_all()
        for _ in range(4):
            response = await planner.recv()
            if response.type_url == ROUTE_TYPE:
                await planner.nack(response, "route agent: unknown cluster")
            else:
                await planner.ack(response)
        await writer.send(CLUSTER_TYPE)
        await writer.recv()  # sent, never answered: STALE
        tracker = admin.tracker
        await eventually(
            lambda: (
                tracker.status("planner-1", ROUTE_TYPE) is SyncStatus.NACKED
                and all(tracker.status("planner-1", t) is SyncStatus.SYNCED for t in (LISTENER_TYPE, CLUSTER_TYPE))
                and tracker.status("planner-1", ENDPOINT_TYPE) is SyncStatus.SYNCED
            ),
            "planner-1 ACKs and NACK",
        )

        status = await api.ProxyStatus(control_pb2.ProxyStatusRequest())
    finally:
        await planner.close()
        await writer.close()

    assert status.snapshot_version == "p3-g7"
    assert [(p.node_id, p.cluster, p.user_agent) for p in status.proxies] == [
        ("planner-1", "planner", "test-client 1.0"),
        ("writer-1", "planner", "test-client 1.0"),
    ]
    planner_row, writer_row = status.proxies
    assert planner_row.connected_since.seconds > 0
    assert [(r.type, r.status) for r in planner_row.resources] == [
        ("lds", "SYNCED"),
        ("rds", "NACKED"),
        ("cds", "SYNCED"),
        ("eds", "SYNCED"),
    ]
    rds = planner_row.resources[1]
    assert (rds.sent_version, rds.acked_version, rds.error) == ("7", "", "route agent: unknown cluster")
    assert planner_row.resources[0].acked_version == "7"
    assert [(r.type, r.status) for r in writer_row.resources] == [
        ("lds", "NOT_SENT"),
        ("rds", "NOT_SENT"),
        ("cds", "STALE"),
        ("eds", "NOT_SENT"),
    ]


async def test_proxy_status_without_proxies(api: Admin):
    status = await api.ProxyStatus(control_pb2.ProxyStatusRequest())

    assert status.snapshot_version == "p0-g1"
    assert list(status.proxies) == []


# --- Check --------------------------------------------------------------------------------------------------------


async def test_check_lints_stored_policy_against_the_registry(admin: AdminHarness, api: Admin):
    await api.ApplyPolicies(control_pb2.ApplyPoliciesRequest(files=example_files(), author="alice"))
    assert list((await api.Check(control_pb2.CheckRequest())).findings) == []

    admin.registry.deregister("127.0.0.1:7011")  # researcher v2 is gone; the canary still sends it 10%
    admin.registry.deregister("127.0.0.1:7201")  # planner is gone
    admin.registry.heartbeat("127.0.0.1:7101", healthy=False)  # writer's only instance

    findings = [(f.severity, f.subject, f.message) for f in (await api.Check(control_pb2.CheckRequest())).findings]

    assert findings == [
        (
            "error",
            "TrafficPolicy/researcher-canary",
            "spec.routes[0].split[0].version: version 'v2' of researcher is not registered (registered: v1)",
        ),
        (
            "error",
            "TrafficPolicy/researcher-canary",
            "spec.split[1].version: version 'v2' of researcher is not registered (registered: v1)",
        ),
        ("error", "agent/writer", "its only instance is unhealthy"),
        ("error", "service/writing.v1.Writer", "no healthy implementation (implemented by: writer)"),
        (
            "warning",
            "AccessPolicy/researcher-access",
            "spec.rules[0].from.agents[0]: agent 'planner' is not registered; the rule applies once it registers",
        ),
    ]
