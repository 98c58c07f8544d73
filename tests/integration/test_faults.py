"""Fault tests: real processes killed, slowed and reconfigured while calls run, and what callers see.

Every test runs its own control plane, a caller (the planner example behind
its sidecar, whose gRPC egress the test calls with `x-agentmesh-target`) and
the backends it needs: probe instances (tests/integration/backends.py, whose
replies name the instance and which count every attempt), or the writer and
researcher examples. Load runs in threads for the whole fault; every call's
outcome is kept, so "zero failed calls" is checked over all of them.

Faults: an instance's agent or whole sidecar SIGKILLed mid-load and brought
back; one instance slow; a non-idempotent skill failing under a retry policy;
100 policy versions applied while streams and calls run; the control plane
SIGKILLed and restarted from its database. Failed calls, dropped streams and
attempts are asserted; times (to route around, to recover, to resync) are
only measured. With `AGENTMESH_FAULT_REPORT=<file>` every figure is written
out as JSON lines. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.integration.admin import Admin, document, node_id
from tests.integration.backends import ECHO, WATCH, ProbeBackend, probe_messages, probe_with_sidecar
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import AgentUnderTest, Messages, agent_with_sidecar
from tests.integration.procs import grpc_serving, metric, start, wait_for

pytestmark = pytest.mark.timeout(240)

TARGET = "x-agentmesh-target"
SEARCH = "/research.v1.Researcher/Search"
DRAFT = "/writing.v1.Writer/Draft"
STREAM_DRAFT = "/writing.v1.Writer/StreamDraft"
# Every wait for the mesh to notice something or recover; generous, since nothing asserts on time.
NOTICE = 60.0
FIGURES: list[dict[str, Any]] = []


def report(test: str, **figures: Any) -> None:
    FIGURES.append({"test": test, **figures})


@pytest.fixture(scope="module", autouse=True)
def fault_report() -> Iterator[None]:
    yield
    path = os.environ.get("AGENTMESH_FAULT_REPORT")
    if path:
        Path(path).write_text("".join(json.dumps(f) + "\n" for f in FIGURES))


# --- the mesh -------------------------------------------------------------------------------------


class RestartableControlPlane(ControlPlaneProcess):
    """A control plane that can be SIGKILLed and started again on the same ports and database."""

    def __init__(self, tmp_path: Path, db: Path) -> None:
        super().__init__(tmp_path, db)
        self._tmp = tmp_path
        args = self.process.popen.args
        assert isinstance(args, list)
        self._argv = [str(a) for a in args]
        self.restarts = 0

    def kill(self) -> None:
        self.process.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.restarts += 1
        self.process = start(f"control-plane-{self.grpc_port}-{self.restarts}", self._argv, self._tmp)
        wait_for(lambda: grpc_serving(self.address), what="control plane serving again", process=self.process)


@dataclass
class Mesh:
    tmp: Path
    control_plane: RestartableControlPlane
    admin: Admin
    planner: AgentUnderTest
    messages: Messages

    def link(self, name: str) -> dict[str, str]:
        return {"address": self.control_plane.address, "config_cache": str(self.tmp / f"xds-{name}.json")}

    def egress(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.planner.ports.egress_grpc}")

    def apply(self, *documents: dict[str, Any], sidecars: tuple[str, ...] = ()) -> int:
        """Applies the documents as the whole policy set and waits until the planner (and `sidecars`) ACKed it."""
        version = self.admin.apply(documents, prune=True)
        nodes = (node_id("planner", self.planner.ports.inbound_address), *sidecars)
        wait_for(lambda: self.admin.acked(nodes, version), what=f"policy version {version} ACKed", timeout=NOTICE)
        return version


@pytest.fixture(scope="module")
def messages() -> Messages:
    return Messages()


@pytest.fixture
def mesh(tmp_path: Path, messages: Messages) -> Iterator[Mesh]:
    control_plane = RestartableControlPlane(tmp_path, tmp_path / "cp.db")
    admin = Admin(control_plane.address)
    try:
        link = {"address": control_plane.address, "config_cache": str(tmp_path / "xds-planner.json")}
        with agent_with_sidecar(tmp_path, "planner", control_plane=link) as planner:
            yield Mesh(tmp_path, control_plane, admin, planner, messages)
    finally:
        admin.close()
        control_plane.process.stop()


def traffic(target: str, **spec: Any) -> dict[str, Any]:
    return document("TrafficPolicy", f"{target}-traffic", {"target": target, **spec})


def config_dump(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin_url}/config_dump", timeout=5) as response:
        dump: dict[str, Any] = json.load(response)
    return dump


def endpoints(sidecar: AgentUnderTest, cluster: str) -> dict[str, dict[str, Any]]:
    """The caller's live view of a cluster's endpoints, by address."""
    found = config_dump(sidecar.ports.admin_url)["clusters"].get(cluster, {}).get("endpoints", [])
    return {e["address"]: e for e in found}


def retry_counter(mesh: Mesh, destination: str) -> Callable[[], float]:
    """The caller's count of retries to `destination`, read when called."""
    return lambda: metric(mesh.planner.ports.admin_url, "agentmesh_retries_total", destination_agent=destination)


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Result:
    at: float  # when the call started
    outcome: str  # the instance that answered, or a status name (upper case: a failure)
    detail: str = ""


@dataclass
class Load:
    """`threads` threads calling `call` back to back until stopped; every outcome kept with its time."""

    call: Callable[[], Result]
    threads: int = 2
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        while not self._stop.is_set():
            result = self.call()
            with self._lock:
                self.results.append(result)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_calls(self, more: int) -> None:
        """Waits until `more` further calls have finished."""
        target = self.count() + more
        wait_for(lambda: self.count() >= target, what=f"{more} more calls", timeout=NOTICE)

    def served(self, since: float = 0.0) -> Counter[str]:
        return Counter(r.outcome for r in self.snapshot() if r.at >= since)

    def failures(self) -> list[Result]:
        return [r for r in self.snapshot() if r.outcome.isupper()]


def echo_call(channel: grpc.Channel, path: str = ECHO) -> Callable[[], Result]:
    m = probe_messages()
    stub = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    request = m.request(key="fault").SerializeToString()

    def call() -> Result:
        started = time.monotonic()
        try:
            reply: Any = m.reply.FromString(stub(request, metadata=((TARGET, "probe"),), timeout=10))
            return Result(started, str(reply.instance))
        except grpc.RpcError as exc:
            return Result(started, exc.code().name, exc.details() or "")

    return call


@contextlib.contextmanager
def probes(mesh: Mesh, *instances: tuple[str, str]) -> Iterator[dict[str, ProbeBackend]]:
    """Probe instances (name, version) behind sidecars registered with the mesh's control plane."""
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(
                probe_with_sidecar(mesh.tmp, instance=name, version=version, control_plane=mesh.control_plane.address)
            )
            for name, version in instances
        }


def healthy_endpoints(mesh: Mesh, cluster: str) -> int:
    return sum(1 for e in endpoints(mesh.planner, cluster).values() if e["healthy"])


def healthy_count(mesh: Mesh, cluster: str, count: int) -> Callable[[], bool]:
    """A check for wait_for: the caller sees `count` healthy endpoints in `cluster`."""
    return lambda: healthy_endpoints(mesh, cluster) == count


# --- an instance dies -------------------------------------------------------------------------

RETRIES = {"attempts": 2, "retry_on": ["unavailable"], "backoff": {"base_interval": "10ms", "max_interval": "50ms"}}
OUTLIER = {"consecutive_errors": 2, "interval": "1s", "base_ejection_time": "2s", "max_ejection_percent": 50}


@pytest.mark.parametrize("victim", ["agent", "sidecar"])
def test_a_killed_instance_is_routed_around_and_used_again_after_it_recovers(mesh: Mesh, victim: str) -> None:
    """SIGKILL one of two instances (its agent, or its whole sidecar) under load: no call fails."""
    cluster = "agent/probe/v1"
    with probes(mesh, ("a", "v1"), ("b", "v1")) as backends, mesh.egress() as egress:
        b = backends["b"]
        mesh.apply(traffic("probe", retries=RETRIES, outlier_detection=OUTLIER))
        wait_for(healthy_count(mesh, cluster, 2), what="two healthy endpoints", timeout=NOTICE)
        retries = retry_counter(mesh, "probe")
        with Load(echo_call(egress), threads=2) as load:
            wait_for(lambda: {"a", "b"} <= set(load.served()), what="both instances serving", timeout=NOTICE)
            process = b.agent if victim == "agent" else b.sidecar
            assert process is not None
            killed = time.monotonic()
            process.stop(signal.SIGKILL)

            def routed_around() -> bool:
                state = endpoints(mesh.planner, cluster).get(b.inbound_address)
                # The agent's death: its sidecar reports it unhealthy. The sidecar's: it is deregistered.
                if victim == "sidecar":
                    return state is None
                return state is not None and not state["healthy"]

            wait_for(routed_around, what=f"b's {victim} routed around", timeout=NOTICE)
            out = time.monotonic() - killed
            ejections = endpoints(mesh.planner, cluster).get(b.inbound_address, {}).get("times_ejected", "removed")
            load.wait_calls(10)  # attempts that picked b before it was routed around have ended
            retried = retries()
            # From now on b gets nothing: no attempt is made on it, so no call needs a retry.
            load.wait_calls(100)
            retries_after = retries() - retried
            if victim == "agent":
                b.start_agent()
            else:
                b.start_sidecar()
            restarted = time.monotonic()
            wait_for(
                lambda: endpoints(mesh.planner, cluster).get(b.inbound_address, {}).get("healthy", False),
                what="b healthy again in the caller's endpoints",
                timeout=NOTICE,
            )
            healthy, retried = time.monotonic() - restarted, retries()
            wait_for(lambda: load.served(restarted)["b"] > 0, what="b serving again", timeout=NOTICE)
            back = time.monotonic() - restarted
            load.wait_calls(20)
            # Attempts on b that failed although it was healthy again (not asserted: see the report).
            retries_after_healthy = retries() - retried
        failures = load.failures()
        report(
            f"instance killed ({victim})",
            calls=load.count(),
            failed=len(failures),
            retries=retries(),
            ejections_of_b=ejections,
            seconds_to_route_around=round(out, 2),
            retries_after_routed_around=retries_after,
            seconds_to_healthy_again=round(healthy, 2),
            retries_after_healthy_again=retries_after_healthy,
            seconds_to_use_again=round(back, 2),
        )
        assert failures == [], failures[:5]
        assert retries_after == 0


# --- a slow instance ------------------------------------------------------------------------------


def in_parallel(call: Callable[[], Result], *, threads: int, each: int) -> Counter[str]:
    """`threads` callers making `each` calls at once; the outcomes counted."""
    served: Counter[str] = Counter()
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(each):
            outcome = call().outcome
            with lock:
                served[outcome] += 1

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=NOTICE)
    return served


def test_a_slow_instance_gets_less_traffic_from_latency_aware_balancers(mesh: Mesh) -> None:
    """b answers after 300 ms, a at once; four callers share 100 calls under each balancer."""
    cluster = "agent/probe/v1"
    shares: dict[str, float] = {}
    with probes(mesh, ("a", "v1"), ("b", "v1")) as backends, mesh.egress() as egress:
        backends["b"].behave(delay_ms=300)
        wait_for(healthy_count(mesh, cluster, 2), what="two healthy endpoints", timeout=NOTICE)
        call = echo_call(egress)
        for balancing in ("peak_ewma", "least_request", "round_robin"):
            mesh.apply(traffic("probe", load_balancing=balancing))
            served = in_parallel(call, threads=4, each=25)
            assert served.total() == 100 and set(served) <= {"a", "b"}, served
            shares[balancing] = served["b"] / served.total()
    report("slow instance", share_of_calls_on_the_slow_instance=shares)
    assert shares["round_robin"] == pytest.approx(0.5, abs=0.05)  # the control: rotation ignores latency
    assert shares["peak_ewma"] < 0.25, shares
    assert shares["least_request"] < shares["round_robin"], shares


# --- a skill that is not idempotent -------------------------------------------------------------


def writer_calls(writers: list[AgentUnderTest], path: str) -> int:
    """Calls of `path` the writer agents themselves saw."""
    total = 0
    for writer in writers:
        with urllib.request.urlopen(f"http://127.0.0.1:{writer.agent_port}/stats", timeout=5) as response:
            total += int(json.load(response)["calls"].get(path, 0))
    return total


def test_a_non_idempotent_skill_is_never_sent_twice(mesh: Mesh) -> None:
    """Draft and StreamDraft fail with UNAVAILABLE under a retry policy: each reaches a writer once."""
    retries = {**RETRIES, "attempts": 3}
    request = mesh.messages("writing.v1.DraftRequest", topic="__error__").SerializeToString()
    calls = 10
    with (
        agent_with_sidecar(mesh.tmp, "writer", control_plane=mesh.link("writer-1")) as one,
        agent_with_sidecar(mesh.tmp, "writer", control_plane=mesh.link("writer-2")) as two,
        mesh.egress() as egress,
    ):
        writers = [one, two]
        wait_for(healthy_count(mesh, "agent/writer/v1", 2), what="two writers", timeout=NOTICE)
        draft = egress.unary_unary(DRAFT, request_serializer=None, response_deserializer=None)
        stream = egress.unary_stream(STREAM_DRAFT, request_serializer=None, response_deserializer=None)

        def send_all() -> dict[str, tuple[Counter[str], int]]:
            seen: dict[str, tuple[Counter[str], int]] = {}
            for path, send in (
                (DRAFT, lambda: draft(request, metadata=((TARGET, "writer"),), timeout=10)),
                (STREAM_DRAFT, lambda: list(stream(request, metadata=((TARGET, "writer"),), timeout=10))),
            ):
                before = writer_calls(writers, path)
                codes: Counter[str] = Counter()
                for _ in range(calls):
                    try:
                        send()
                        codes["OK"] += 1
                    except grpc.RpcError as exc:
                        codes[exc.code().name] += 1
                seen[path] = (codes, writer_calls(writers, path) - before)
            return seen

        mesh.apply(traffic("writer", retries=retries))
        guarded = send_all()
        # The control: the same policy allowed to retry them sends each call 1 + 3 times.
        mesh.apply(traffic("writer", retries={**retries, "retry_non_idempotent": True}))
        allowed = send_all()
    report(
        "non-idempotent skill",
        calls_per_skill=calls,
        agent_saw_without_retry_non_idempotent={p: n for p, (_, n) in guarded.items()},
        agent_saw_with_retry_non_idempotent={p: n for p, (_, n) in allowed.items()},
    )
    for path in (DRAFT, STREAM_DRAFT):
        assert guarded[path] == (Counter(UNAVAILABLE=calls), calls), guarded
        assert allowed[path] == (Counter(UNAVAILABLE=calls), calls * 4), allowed


# --- config changes under load ------------------------------------------------------------------

STREAM_FACTS = [f"fact number {i} about the topic" for i in range(20)]
STREAM_CHUNKS = len(STREAM_FACTS) + 1  # the writer's opening sentence, then one per fact


def churn(i: int) -> list[dict[str, Any]]:
    """Policy version i of 100: splits, timeouts, retries, balancing, outlier detection, access and config change."""
    weight = (i * 37) % 101
    researcher: dict[str, Any] = {
        "split": [{"version": "v1", "weight": weight}, {"version": "v2", "weight": 100 - weight}],
        "timeout": f"{20 + i % 5}s",
        "retries": {"attempts": 1 + i % 3, "retry_on": ["unavailable"]},
    }
    if i % 10 < 5:
        researcher["load_balancing"] = "round_robin"
    if i % 20 >= 10:
        researcher["outlier_detection"] = {"consecutive_errors": 5}
    return [
        traffic("researcher", **researcher),
        traffic("writer", timeout=f"{120 + i}s", retries={"attempts": i % 3, "retry_on": ["unavailable"]}),
        document(
            "AccessPolicy",
            "writer-access",
            {
                "target": "writer",
                "default_action": "allow",
                "rules": [{"name": "no-ghost", "action": "deny", "from": {"agents": [f"ghost-{i}"]}}],
            },
        ),
        document("AgentConfig", "writer-config", {"target": "writer", "values": {"revision": str(i)}}),
    ]


def draft_stream_call(mesh: Mesh, channel: grpc.Channel, opened: Callable[[], None]) -> Callable[[], Result]:
    """One StreamDraft of STREAM_CHUNKS chunks, 250 ms apart: 'complete', or what went wrong."""
    request = mesh.messages(
        "writing.v1.DraftRequest", topic="churn", facts=STREAM_FACTS, chunk_delay_ms=250
    ).SerializeToString()
    chunk_cls = mesh.messages.cls("writing.v1.DraftChunk")
    stub = channel.unary_stream(STREAM_DRAFT, request_serializer=None, response_deserializer=None)

    def call() -> Result:
        started, indices = time.monotonic(), list[int]()
        try:
            for raw in stub(request, metadata=((TARGET, "writer"),), timeout=60):
                if not indices:
                    opened()
                chunk: Any = chunk_cls.FromString(raw)
                indices.append(chunk.index)
        except grpc.RpcError as exc:
            return Result(started, exc.code().name, f"after {len(indices)} chunks: {exc.details()}")
        if indices != list(range(STREAM_CHUNKS)):
            return Result(started, "INCOMPLETE", f"chunks {indices}")
        return Result(started, "complete")

    return call


def search_call(mesh: Mesh, channel: grpc.Channel) -> Callable[[], Result]:
    request = mesh.messages("research.v1.SearchRequest", query="under churn", max_results=1).SerializeToString()
    response_cls = mesh.messages.cls("research.v1.SearchResponse")
    stub = channel.unary_unary(SEARCH, request_serializer=None, response_deserializer=None)

    def call() -> Result:
        started = time.monotonic()
        try:
            reply: Any = response_cls.FromString(stub(request, metadata=((TARGET, "researcher"),), timeout=10))
            return Result(started, str(reply.model))
        except grpc.RpcError as exc:
            return Result(started, exc.code().name, exc.details() or "")

    return call


def test_a_hundred_policy_versions_drop_no_call_and_no_stream(mesh: Mesh) -> None:
    updates, streams = 100, 6
    with (
        agent_with_sidecar(mesh.tmp, "writer", control_plane=mesh.link("writer")) as writer,
        agent_with_sidecar(mesh.tmp, "researcher", version="v1", control_plane=mesh.link("researcher-v1")) as v1,
        agent_with_sidecar(mesh.tmp, "researcher", version="v2", control_plane=mesh.link("researcher-v2")) as v2,
        mesh.egress() as egress,
    ):
        nodes = tuple(node_id(a.name, a.ports.inbound_address) for a in (writer, v1, v2))
        for cluster in ("agent/writer/v1", "agent/researcher/v1", "agent/researcher/v2"):
            wait_for(healthy_count(mesh, cluster, 1), what=f"{cluster} healthy", timeout=NOTICE)
        mesh.apply(*churn(0), sidecars=nodes)
        opened = threading.Semaphore(0)
        with (
            Load(draft_stream_call(mesh, egress, opened.release), threads=streams) as stream_load,
            Load(search_call(mesh, egress), threads=2) as unary_load,
        ):
            for _ in range(streams):  # every stream thread is inside a stream before the first change
                assert opened.acquire(timeout=NOTICE)
            started = time.monotonic()
            for i in range(1, updates + 1):
                version = mesh.admin.apply(churn(i), prune=True, message=f"churn {i}")
            applied = time.monotonic() - started
            wait_for(
                lambda: mesh.admin.acked((node_id("planner", mesh.planner.ports.inbound_address), *nodes), version),
                what=f"every sidecar on policy version {version}",
                timeout=NOTICE,
            )
            unary_load.wait_calls(20)
        dropped, failed = stream_load.failures(), unary_load.failures()
        report(
            "100 policy versions under load",
            policy_versions=updates,
            seconds_to_apply=round(applied, 2),
            streams_completed=stream_load.served()["complete"],
            streams_dropped=len(dropped),
            unary_calls=unary_load.count(),
            unary_failed=len(failed),
        )
        assert dropped == [], dropped[:5]
        assert failed == [], failed[:5]


# --- the control plane dies ---------------------------------------------------------------------


def watch_call(channel: grpc.Channel) -> Callable[[], Result]:
    """One probe Watch of 10 replies, 100 ms apart: 'complete', or what went wrong."""
    m = probe_messages()
    request = m.request(key="watch", count=10, interval_ms=100).SerializeToString()
    stub = channel.unary_stream(WATCH, request_serializer=None, response_deserializer=None)

    def call() -> Result:
        started, indices = time.monotonic(), list[int]()
        try:
            for raw in stub(request, metadata=((TARGET, "probe"),), timeout=30):
                reply: Any = m.reply.FromString(raw)
                indices.append(reply.index)
        except grpc.RpcError as exc:
            return Result(started, exc.code().name, f"after {len(indices)} replies: {exc.details()}")
        return Result(started, "complete" if indices == list(range(10)) else "INCOMPLETE", str(indices))

    return call


def test_control_plane_killed_and_restarted_from_its_database_drops_no_call(mesh: Mesh) -> None:
    with probes(mesh, ("a", "v1"), ("c", "v2")) as backends, mesh.egress() as egress:
        nodes = (
            node_id("planner", mesh.planner.ports.inbound_address),
            *(node_id(b.name, b.inbound_address) for b in backends.values()),
        )
        split = [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]
        version = mesh.apply(traffic("probe", split=split, retries=RETRIES), sidecars=nodes[1:])
        with Load(echo_call(egress), threads=2) as load, Load(watch_call(egress), threads=2) as streams:
            wait_for(lambda: {"a", "c"} <= set(load.served()), what="both versions serving", timeout=NOTICE)
            killed = time.monotonic()
            mesh.control_plane.kill()
            load.wait_calls(500)  # the mesh runs on without its control plane
            down = time.monotonic() - killed
            during = sum(1 for r in load.snapshot() if r.at >= killed)
            mesh.control_plane.restart()
            restarted, restarted_at = time.monotonic(), time.time()
            wait_for(lambda: mesh.admin.acked(nodes, version), what="every sidecar back in sync", timeout=NOTICE)
            resynced = time.monotonic() - restarted
            # Each sidecar registered again: its instance is live, not only restored from the database.
            addresses = {mesh.planner.ports.inbound_address, *(b.inbound_address for b in backends.values())}
            wait_for(
                lambda: addresses <= mesh.admin.reported_since(restarted_at),
                what="every sidecar registered again",
                timeout=NOTICE,
            )
            reregistered = time.monotonic() - restarted
            load.wait_calls(100)
            # The restarted control plane steers the mesh: a new split reaches the caller.
            mesh.apply(traffic("probe", split=[{"version": "v1", "weight": 100}], retries=RETRIES))
            changed = time.monotonic()
            load.wait_calls(50)
            steered = load.served(changed)
        failures = load.failures() + streams.failures()
        report(
            "control plane killed and restarted",
            calls=load.count(),
            streams_completed=streams.served()["complete"],
            calls_while_down=during,
            seconds_down=round(down, 2),
            seconds_to_resync=round(resynced, 2),
            seconds_to_register_again=round(reregistered, 2),
            failed=len(failures),
        )
        assert failures == [], failures[:5]
        assert set(steered) == {"a"}, steered
