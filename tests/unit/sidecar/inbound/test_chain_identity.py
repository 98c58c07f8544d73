"""The inbound chain acts on the caller's certificate identity: RBAC principal, metrics, spans, access log.

Identity headers a caller sends are claims: they never authorize anything and
never label a metric; a claim that differs from the proof is logged as
`claimed_source`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import grpc
import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.identity.spiffe import SpiffeId
from agentmesh.protoc import compile_descriptor_set
from agentmesh.telemetry.logs import ACCESS_LOGGER, configure_logging, flush_access_log
from control_plane.policy.model import AccessPolicy
from control_plane.translate.rbac import AgentAccess, rbac_filters
from sidecar.contract import ContractSet, MessageChecker
from sidecar.errors import AccessDenied, Unauthenticated
from sidecar.filters.authn import PLAINTEXT, Peer, PeerReader
from sidecar.filters.rbac import RbacConfig, RbacFilter
from sidecar.inbound.call import InboundCall
from sidecar.inbound.chain import AUTHENTICATION_POLICY, Admission, InboundChain
from sidecar.stats import SidecarStats
from sidecar.upstream.base import Payload
from tests.unit.sidecar.contract.conftest import SHOP_PROTO
from tests.unit.sidecar.inbound.test_chain import FakeAdapter, bootstrap, sample

GET_ITEM = "/shop.v1.Shop/GetItem"
PLANNER = Peer.authenticated(SpiffeId("agentmesh.local", "planning", "planner"))
WRITER = Peer.authenticated(SpiffeId("agentmesh.local", "writing", "writer"))
FOREIGN = Peer.refused("spiffe://evil.example/team/planning/agent/planner belongs to trust domain 'evil.example'")
CLAIMS = {"x-agentmesh-source-agent": "planner", "x-agentmesh-source-team": "planning"}


def shop_access(*rules: dict[str, Any], default: str = "deny") -> RbacFilter | None:
    policy = AccessPolicy.model_validate(
        {"metadata": {"name": "shop-access"}, "spec": {"target": "shop", "default_action": default, "rules": rules}}
    )
    configs = []
    for http_filter in rbac_filters(AgentAccess(own=policy)):
        message = rbac_filter.RBAC()
        http_filter.typed_config.Unpack(message)
        configs.append(RbacConfig.from_proto(message, name=http_filter.name))
    return RbacFilter.build(configs)


ONLY_PLANNER = shop_access({"name": "planner-only", "action": "allow", "from": {"agents": ["planner"]}})


class Shop:
    def __init__(self, tmp_path: Path, access: RbacFilter | None = ONLY_PLANNER) -> None:
        self.contract = ContractSet.compile(compile_descriptor_set([SHOP_PROTO]))
        self.stats = SidecarStats(agent="shop", version="v3", team="retail")
        self.adapter = FakeAdapter(Payload(b'{"id": "a1", "price": 3.5}', "json"))
        self.chain = InboundChain(
            bootstrap=bootstrap(tmp_path),
            contract=self.contract,
            checker=MessageChecker(),
            upstream=self.adapter,
            stats=self.stats,
            admission=Admission(agent_healthy=True),
            access=lambda: access,
            peers=PeerReader("agentmesh.local"),
        )

    async def call(self, peer: Peer, metadata: dict[str, str] | None = None) -> Any:
        call = InboundCall(
            method=self.contract.method(GET_ITEM),
            body={"id": "a1"},
            metadata=metadata or {},
            time_remaining=None,
            peer=peer,
        )
        return await self.chain.unary(call)


class AccessLines(Sequence[dict[str, Any]]):
    """The access lines the chain wrote, parsed (the JSON log configured to a string stream)."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def _lines(self) -> list[dict[str, Any]]:
        flush_access_log()
        entries = [json.loads(line) for line in self._stream.getvalue().splitlines()]
        return [entry for entry in entries if entry.get("logger") == ACCESS_LOGGER]

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        return self._lines()[index]

    def __len__(self) -> int:
        return len(self._lines())


@pytest.fixture
def access_log(logging_state: None) -> Iterator[AccessLines]:
    stream = io.StringIO()
    configure_logging("info", component="sidecar", agent="shop", stream=stream)
    yield AccessLines(stream)


async def test_the_certificate_identity_is_the_principal_and_the_source(
    tmp_path: Path, access_log: AccessLines, spans: InMemorySpanExporter
) -> None:
    shop = Shop(tmp_path)
    reply = await shop.call(PLANNER)
    assert reply.message.price == 3.5
    (sent,) = shop.adapter.calls
    assert (sent.headers["x-agentmesh-source-agent"], sent.headers["x-agentmesh-source-team"]) == (
        "planner",
        "planning",
    )
    assert sample(shop.stats, "agentmesh_requests_total", source_agent="planner", grpc_code="OK") == 1
    assert sample(shop.stats, "agentmesh_inbound_plaintext_requests_total", agent="shop") == 0
    (line,) = access_log
    assert (line["source"], line["caller"], line["policy"]) == ("planner", PLANNER.identity, "")
    assert "claimed_source" not in line
    # SERVER spans name no caller (CLIENT spans carry `agentmesh.source_agent`, the caller's own name).
    (span,) = spans.get_finished_spans()
    assert span.attributes is not None and "agentmesh.source_agent" not in span.attributes


async def test_forged_headers_on_plaintext_are_ignored_and_logged_as_a_claim(
    tmp_path: Path, access_log: AccessLines
) -> None:
    shop = Shop(tmp_path)
    with pytest.raises(AccessDenied) as caught:
        await shop.call(PLAINTEXT, CLAIMS)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "an unauthenticated caller may not call /shop.v1.Shop/GetItem (policy default-deny)" in caught.value.message
    assert shop.adapter.calls == []
    assert sample(shop.stats, "agentmesh_access_denied_total", source_agent="unknown", policy="default-deny") == 1
    assert sample(shop.stats, "agentmesh_access_denied_total", source_agent="planner") == 0
    assert sample(shop.stats, "agentmesh_requests_total", source_agent="unknown", grpc_code="PERMISSION_DENIED") == 1
    assert sample(shop.stats, "agentmesh_inbound_plaintext_requests_total", agent="shop") == 1
    (line,) = access_log
    assert (line["source"], line["caller"], line["claimed_source"]) == ("unknown", "unauthenticated", "planner")
    assert (line["code"], line["policy"]) == ("PERMISSION_DENIED", "default-deny")


async def test_forged_headers_with_a_valid_certificate_of_another_agent_are_ignored(
    tmp_path: Path, access_log: AccessLines
) -> None:
    shop = Shop(tmp_path)
    with pytest.raises(AccessDenied) as caught:
        await shop.call(WRITER, CLAIMS)
    assert WRITER.identity in caught.value.message
    assert sample(shop.stats, "agentmesh_access_denied_total", source_agent="writer", policy="default-deny") == 1
    (line,) = access_log
    assert (line["source"], line["caller"], line["claimed_source"]) == ("writer", WRITER.identity, "planner")


async def test_a_deny_rule_names_its_policy_and_the_caller(tmp_path: Path, access_log: AccessLines) -> None:
    shop = Shop(
        tmp_path, shop_access({"name": "no-writer", "action": "deny", "from": {"teams": ["writing"]}}, default="allow")
    )
    with pytest.raises(AccessDenied) as caught:
        await shop.call(WRITER)
    assert caught.value.policy == "shop-access/no-writer"
    assert sample(shop.stats, "agentmesh_access_denied_total", source_agent="writer", policy="shop-access/no-writer")
    (line,) = access_log
    assert (line["policy"], line["caller"]) == ("shop-access/no-writer", WRITER.identity)
    # The same claim from the planner's certificate is no claim at all: the header agrees with the proof.
    await shop.call(PLANNER, CLAIMS)
    assert "claimed_source" not in access_log[-1]


async def test_a_certificate_naming_no_agent_of_this_mesh_is_refused_whatever_the_policy(
    tmp_path: Path, access_log: AccessLines
) -> None:
    shop = Shop(tmp_path, access=None)  # no AccessPolicy: every caller is welcome, but not this one
    with pytest.raises(Unauthenticated) as caught:
        await shop.call(FOREIGN, CLAIMS)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.policy == AUTHENTICATION_POLICY
    assert "belongs to trust domain 'evil.example'" in caught.value.message
    assert shop.adapter.calls == []
    assert sample(shop.stats, "agentmesh_access_denied_total", source_agent="unknown", policy=AUTHENTICATION_POLICY)
    (line,) = access_log
    assert (line["code"], line["policy"], line["claimed_source"]) == (
        "UNAUTHENTICATED",
        AUTHENTICATION_POLICY,
        "planner",
    )


async def test_plaintext_calls_are_counted_even_when_admitted(tmp_path: Path) -> None:
    shop = Shop(tmp_path, shop_access({"action": "allow", "from": {"agents": ["*"]}}))
    await shop.call(PLAINTEXT)
    await shop.call(PLAINTEXT)
    await shop.call(PLANNER)
    assert sample(shop.stats, "agentmesh_inbound_plaintext_requests_total", agent="shop") == 2
    (sent, _, _) = shop.adapter.calls
    assert sent.headers["x-agentmesh-source-agent"] == "unknown"
    assert "x-agentmesh-source-team" not in sent.headers


async def test_peer_of_reads_the_auth_context_with_the_chains_reader(tmp_path: Path) -> None:
    shop = Shop(tmp_path)

    class Context:
        def auth_context(self) -> dict[str, list[bytes]]:
            return {"transport_security_type": [b"ssl"], "peer_spiffe_id": [PLANNER.identity.encode()]}

    assert shop.chain.peer_of(Context()) == PLANNER
    assert shop.chain.peers.trust_domain == "agentmesh.local"
