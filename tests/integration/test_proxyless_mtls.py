"""A proxyless gRPC client (`xds:///researcher`) doing mTLS with certificates from the control plane.

Real processes: `agentmesh control-plane` (its CA); the researcher example
behind a sidecar enrolled with a join token (strict mTLS inbound);
`agentmesh identity-agent --no-sds --grpc-bootstrap` holding the client's
identity (planner) in files and writing its xDS bootstrap with a
`file_watcher` certificate provider; and a grpcio client process dialing
`xds:///<agent>` with `grpc.xds_channel_credentials`. The cluster's
UpstreamTlsContext (certificate provider instances, SAN = the target's
SPIFFE ID) comes from the control plane's translation.

Also: a server holding a valid mesh certificate of another agent is refused
by the client (SAN mismatch), and a client whose bootstrap lacks the
certificate provider NACKs the cluster, which `agentmesh proxy-status` shows.

`python -m tests.integration.test_proxyless_mtls --client TARGET` is the
client: it reads `batch N` lines and prints one JSON line per batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental
import pytest

from agentmesh.identity.files import CHAIN_FILE, KEY_FILE, ROOTS_FILE
from agentmesh.v1 import control_pb2, control_pb2_grpc, manifest_pb2
from tests.integration.controlplane import ControlPlaneProcess
from tests.integration.mesh import Messages, create_join_token, mtls_agent
from tests.integration.procs import AGENTMESH, ROOT, Process, free_port, start, wait_for

pytestmark = pytest.mark.timeout(180)

TEAM = "examples"
SEARCH = "/research.v1.Researcher/Search"


# --- the identity agent -------------------------------------------------------------------------


@dataclass
class IdentityAgentProcess:
    """One `agentmesh identity-agent` process and where it keeps things."""

    process: Process
    directory: Path
    bootstrap: Path | None
    sds: str

    @classmethod
    def start(
        cls,
        name: str,
        control_plane: ControlPlaneProcess,
        tmp: Path,
        *,
        token: str,
        sds: str | None = None,
        bootstrap: bool = False,
        extra: tuple[str, ...] = (),
    ) -> IdentityAgentProcess:
        """Starts it with `token` in a file; waits for its first certificate (files, bootstrap, SDS socket)."""
        directory = tmp / f"{name}.identity"
        token_file = tmp / f"{name}.token"
        token_file.write_text(token + "\n")
        argv = [
            *AGENTMESH,
            "identity-agent",
            "--control-plane",
            control_plane.address,
            "--join-token-file",
            str(token_file),
            "--dir",
            str(directory),
        ]
        argv += ["--sds-listen", sds] if sds else ["--no-sds"]
        path = tmp / f"{name}.bootstrap.json" if bootstrap else None
        if path is not None:
            argv += ["--grpc-bootstrap", str(path), "--refresh-interval", "1"]
        process = start(f"identity-agent-{name}", [*argv, *extra], tmp)
        found = cls(process, directory, path, sds or "")
        wait_for(found.ready, what=f"identity agent {name} holding a certificate", process=process)
        return found

    def ready(self) -> bool:
        if not all((self.directory / name).exists() for name in (KEY_FILE, CHAIN_FILE, ROOTS_FILE)):
            return False
        if self.bootstrap is not None and not self.bootstrap.exists():
            return False
        return not self.sds or "identity agent ready" in self.process.output()

    def files(self) -> tuple[bytes, bytes, bytes]:
        """(key, chain, roots) as they are now."""
        key, chain, roots = ((self.directory / name).read_bytes() for name in (KEY_FILE, CHAIN_FILE, ROOTS_FILE))
        return key, chain, roots

    def stop(self) -> None:
        assert self.process.stop() == 0, self.process.output()


# --- the proxyless client -----------------------------------------------------------------------


def _client_main(target: str) -> None:
    """Reads `batch N [fail-fast]` lines; calls Search on `xds:///<target>` N times; prints outcomes as JSON.

    Calls wait for the channel to be ready (wait_for_ready) unless the line says `fail-fast`: then a
    channel in transient failure answers at once with the reason.
    """
    credentials = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
    request = Messages()("research.v1.SearchRequest", query="proxyless", max_results=1).SerializeToString()
    with grpc.secure_channel(f"xds:///{target}", credentials) as channel:
        search = channel.unary_unary(SEARCH, request_serializer=None, response_deserializer=None)
        response_cls = Messages().cls("research.v1.SearchResponse")
        for line in sys.stdin:
            outcomes: list[str] = []
            words = line.split()
            for _ in range(int(words[1])):
                try:
                    answer = search(request, timeout=5, wait_for_ready="fail-fast" not in words)
                    reply: Any = response_cls.FromString(answer)
                    outcomes.append(str(reply.model))
                except grpc.RpcError as exc:
                    outcomes.append(f"{exc.code().name}: {exc.details()}")
            print(json.dumps(outcomes), flush=True)


class ProxylessClient:
    """A client process with its own bootstrap; `batch(n)` returns the n outcomes (model or `CODE: details`)."""

    def __init__(self, target: str, bootstrap: dict[str, Any], tmp: Path, name: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("GRPC_XDS_BOOTSTRAP")}
        env["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(bootstrap)
        self.node_id = str(bootstrap["node"]["id"])
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_proxyless_mtls", "--client", target],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=ROOT,
                env=env,
                text=True,
            )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put("")

    def batch(self, count: int = 5, *, fail_fast: bool = False) -> list[str]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(f"batch {count}{' fail-fast' if fail_fast else ''}\n")
        self.popen.stdin.flush()
        try:
            line = self._lines.get(timeout=15 + 6 * count)
        except queue.Empty:
            raise AssertionError(f"proxyless client silent:\n{self.log.read_text()[-4000:]}") from None
        if not line:
            raise AssertionError(f"proxyless client exited:\n{self.log.read_text()[-4000:]}")
        outcomes: list[str] = json.loads(line)
        return outcomes

    def until(
        self, check: Callable[[list[str]], bool], what: str, count: int = 5, *, fail_fast: bool = False
    ) -> list[str]:
        last: list[list[str]] = []

        def attempt() -> bool:
            last[:] = [self.batch(count, fail_fast=fail_fast)]
            return check(last[0])

        try:
            wait_for(attempt, what=what, timeout=45)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last batch {last}\n{self.log.read_text()[-4000:]}") from None
        return last[0]

    def stop(self) -> None:
        if self.popen.poll() is None:
            assert self.popen.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.close()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


# --- the mesh -----------------------------------------------------------------------------------


@dataclass
class Mesh:
    tmp: Path
    control_plane: ControlPlaneProcess
    client_identity: IdentityAgentProcess

    def client(self, target: str, name: str, *, bootstrap: dict[str, Any] | None = None) -> ProxylessClient:
        assert self.client_identity.bootstrap is not None
        document = bootstrap or json.loads(self.client_identity.bootstrap.read_text())
        document["node"]["id"] = f"proxyless~{name}"
        return ProxylessClient(target, document, self.tmp, name)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("proxyless-mtls")
    with contextlib.ExitStack() as stack:
        control_plane = ControlPlaneProcess(tmp, tmp / "cp.db")
        stack.callback(control_plane.process.stop)
        stack.enter_context(mtls_agent(tmp, control_plane.address, "researcher", team=TEAM))
        planner = IdentityAgentProcess.start(
            "planner",
            control_plane,
            tmp,
            token=create_join_token(control_plane.address, "planner", team=TEAM),
            bootstrap=True,
        )
        stack.callback(planner.stop)
        yield Mesh(tmp, control_plane, planner)


def test_the_bootstrap_names_the_identity_agents_files(mesh: Mesh) -> None:
    assert mesh.client_identity.bootstrap is not None
    bootstrap = json.loads(mesh.client_identity.bootstrap.read_text())
    assert bootstrap["node"]["id"] == "proxyless~planner"
    assert bootstrap["xds_servers"][0]["server_uri"] == mesh.control_plane.address
    provider = bootstrap["certificate_providers"]["default"]
    directory = mesh.client_identity.directory.resolve()
    assert provider == {
        "plugin_name": "file_watcher",
        "config": {
            "certificate_file": str(directory / CHAIN_FILE),
            "private_key_file": str(directory / KEY_FILE),
            "ca_certificate_file": str(directory / ROOTS_FILE),
            "refresh_interval": "1s",
        },
    }
    assert oct((directory / KEY_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_proxyless_client_calls_a_strict_mtls_sidecar_with_control_plane_certificates(mesh: Mesh) -> None:
    client = mesh.client("researcher", "planner-ok")
    try:
        outcomes = client.until(lambda o: o == ["research-sim-1"] * 5, "five calls answered over mTLS")
        assert outcomes == ["research-sim-1"] * 5
        wait_for(
            lambda: {s for s, _ in mesh.control_plane.proxy_status(client.node_id).values()} == {"SYNCED"},
            what="the proxyless client SYNCED on every type",
        )
    finally:
        client.stop()


class Registration:
    """An instance registered with the control plane over `Registration.Register`, as a sidecar would."""

    def __init__(self, control_plane: ControlPlaneProcess, agent: str, address: str, *, mtls: bool) -> None:
        report = control_pb2.InstanceReport(
            manifest=manifest_pb2.Manifest(name=agent, version="v1", team=TEAM, services=["research.v1.Researcher"]),
            address=address,
            healthy=True,
            mtls=mtls,
        )
        self._reports: queue.Queue[control_pb2.InstanceReport | None] = queue.Queue()
        self._reports.put(report)
        self._channel = grpc.insecure_channel(control_plane.address)
        self._stream = control_pb2_grpc.RegistrationStub(self._channel).Register(iter(self._reports.get, None))
        next(self._stream)

    def stop(self) -> None:
        self._reports.put(None)
        self._stream.cancel()
        self._channel.close()


class Impostor:
    """A gRPC server holding `identity`'s valid mesh certificate, registered with the control plane as `agent`."""

    def __init__(self, control_plane: ControlPlaneProcess, identity: IdentityAgentProcess, agent: str) -> None:
        key, chain, roots = identity.files()
        port = free_port()
        self._pool = futures.ThreadPoolExecutor(2)
        self.server = grpc.server(self._pool)
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("research.v1.Researcher", {"Search": handler})]
        )
        credentials = grpc.ssl_server_credentials([(key, chain)], roots, require_client_auth=True)
        self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.server.start()
        self.registration = Registration(control_plane, agent, f"127.0.0.1:{port}", mtls=True)

    def stop(self) -> None:
        self.registration.stop()
        self.server.stop(0)
        self._pool.shutdown(wait=False)


def test_a_server_with_another_agents_certificate_is_refused(mesh: Mesh) -> None:
    writer = IdentityAgentProcess.start(
        "writer", mesh.control_plane, mesh.tmp, token=create_join_token(mesh.control_plane.address, "writer", team=TEAM)
    )
    impostor = Impostor(mesh.control_plane, writer, "echo")
    client = mesh.client("echo", "planner-impostor")
    try:
        outcomes = client.until(
            lambda o: all("SANs from certificate did not match" in x for x in o),
            "calls to the impostor refused by the client's SAN check",
            fail_fast=True,
        )
        assert all(outcome.startswith("UNAVAILABLE") for outcome in outcomes), outcomes
    finally:
        client.stop()
        impostor.stop()
        writer.stop()


def test_a_client_without_the_certificate_provider_nacks_the_cluster_and_proxy_status_shows_it(mesh: Mesh) -> None:
    assert mesh.client_identity.bootstrap is not None
    bootstrap = json.loads(mesh.client_identity.bootstrap.read_text())
    del bootstrap["certificate_providers"]
    client = mesh.client("researcher", "planner-no-provider", bootstrap=bootstrap)
    try:
        client.batch(1)
        wait_for(
            lambda: mesh.control_plane.proxy_status(client.node_id).get("cds", ("",))[0] == "NACKED",
            what="CDS NACKED by the client",
            timeout=30,
        )
        error = mesh.control_plane.proxy_status(client.node_id)["cds"][1]
        assert "unrecognized certificate provider instance name: default" in error, error
    finally:
        client.stop()


def identity_agent(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTMESH, "identity-agent", "--control-plane", mesh.control_plane.address, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_identity_agent_refuses_bad_input_with_a_precise_message(mesh: Mesh) -> None:
    directory = str(mesh.tmp / "refused.identity")
    refused = identity_agent(mesh, "--join-token", "not-a-token", "--dir", directory, "--no-sds")
    assert refused.returncode == 3, refused.stderr
    assert f"cannot get a certificate from {mesh.control_plane.address}: enroll failed" in refused.stderr
    exposed = identity_agent(mesh, "--join-token", "x", "--dir", directory, "--sds-listen", "0.0.0.0:15012")
    assert exposed.returncode == 3, exposed.stderr
    assert "--sds-listen: SDS address '0.0.0.0:15012': SDS serves the private key" in exposed.stderr
    both = identity_agent(mesh, "--join-token", "x", "--join-token-file", __file__, "--dir", directory)
    assert both.returncode == 2 and "not both" in both.stderr


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        _client_main(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} --client TARGET")
