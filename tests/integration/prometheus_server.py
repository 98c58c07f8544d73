"""A real Prometheus process running the repository's configuration, for integration tests.

The configuration is collectors/prometheus/prometheus.yml with only what a
test must change: the control plane's address (its `/sd/prometheus` for the
sidecars job, its `/metrics` for the control-plane job), short scrape,
evaluation and discovery intervals, and the rule files by absolute path.
Alertmanager and the OpenTelemetry Collector are not part of these tests, so
the alerting block and the Collector's job are left out. The binary is
Debian's `prometheus`; callers skip when `PROMETHEUS` is None.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.procs import ROOT, Process, free_port, running, wait_for

PROMETHEUS = shutil.which("prometheus")
CONFIG = ROOT / "collectors" / "prometheus" / "prometheus.yml"
SIDECARS_JOB = "agentmesh-sidecars"
CONTROL_PLANE_JOB = "agentmesh-control-plane"
DEFAULT_WAIT = 30.0


class PrometheusError(Exception):
    """The HTTP API answered with an error (a bad query, an evaluation failure)."""


def prometheus_config(control_plane_http: str, *, interval: str = "1s") -> dict[str, Any]:
    """The repository's prometheus.yml pointed at a control plane's HTTP address (host:port), sped up."""
    with CONFIG.open(encoding="utf-8") as handle:
        config: dict[str, Any] = yaml.safe_load(handle)
    config["global"] = {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval}
    config.pop("alerting", None)
    config["rule_files"] = [str((CONFIG.parent / path).resolve()) for path in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sidecars, control_plane = jobs[SIDECARS_JOB], jobs[CONTROL_PLANE_JOB]
    sidecars["http_sd_configs"] = [
        {**sd, "url": f"http://{control_plane_http}/sd/prometheus", "refresh_interval": interval}
        for sd in sidecars["http_sd_configs"]
    ]
    control_plane["static_configs"] = [{"targets": [control_plane_http]}]
    config["scrape_configs"] = [sidecars, control_plane]
    return config


@dataclass
class PrometheusServer:
    """A running Prometheus and its HTTP API."""

    process: Process
    url: str

    def api(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """`data` of a GET on /api/v1/<path>; raises PrometheusError with Prometheus' message on an error."""
        query = f"?{urllib.parse.urlencode(list(params))}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                body = error.read().decode(errors="replace")
            try:
                reply = json.loads(body)
            except ValueError:
                raise PrometheusError(f"HTTP {error.code}: {body}") from None
        if reply.get("status") != "success":
            raise PrometheusError(f"{reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: the result's series (or the scalar as one sample)."""
        data = self.api("query", [("query", expr)])
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait(self, check: Callable[[], bool], what: str, timeout: float = DEFAULT_WAIT) -> None:
        wait_for(check, what=what, timeout=timeout, process=self.process)


@contextlib.contextmanager
def running_prometheus(tmp: Path, config: dict[str, Any]) -> Iterator[PrometheusServer]:
    """Prometheus with `config`, storage under `tmp`, exemplar storage on, on a free loopback port; ready."""
    assert PROMETHEUS is not None, "prometheus is not installed"
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    url = f"http://127.0.0.1:{port}"
    with running(f"prometheus-{port}", argv, tmp) as process:
        wait_for(
            lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200,
            what="prometheus ready",
            process=process,
        )
        yield PrometheusServer(process, url)
