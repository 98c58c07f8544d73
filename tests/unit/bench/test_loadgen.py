"""Turning a generator's output into a LoadResult."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import h2load, loadgen


def test_h2load_result_counts_log_successes_and_every_kind_of_failure():
    summary = h2load.Summary(
        elapsed_s=2.0, rps=3.0, total=6, started=6, done=6, succeeded=5, failed=1, errored=1, timeout=0
    )
    log = h2load.parse_log(["1\t200\t1000", "2\t200\t3000", "3\t200\t2000", "4\t503\t10", "5\t-1\t0"])
    result = loadgen.result_from_h2load(summary, log, h2load.open_loop(3, 2))
    assert (result.ok, result.errors, result.sent) == (3, 2, 5)
    assert result.achieved_rps == 1.5
    assert result.latency.p50_ms == 2.0
    assert result.error_detail == {"h2load_failed": 1, "http_503": 1}
    assert result.to_dict()["rate"] == 3


def test_missing_h2load_is_a_load_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(h2load, "binary", lambda: None)
    with pytest.raises(loadgen.LoadError, match="nghttp2-client"):
        loadgen.run_h2load("http://127.0.0.1:1/x", h2load.Load(duration_s=1), body=b"", work_dir=tmp_path)


def test_client_options_repeat_metadata():
    options = loadgen.client_options(
        "xds:///echo", "/a.B/C", Path("/tmp/body"), authority="echo", metadata={"x-a": "1", "x-b": "2"}
    )
    assert options[:2] == ["--target", "xds:///echo"]
    assert options.count("--metadata") == 2 and "x-b=2" in options and "--authority" in options


def test_client_options_carry_the_client_certificate():
    certificate = loadgen.ClientCertificate(Path("/tmp/client.identity"), "echo-mtls.bench.agentmesh.local")

    options = loadgen.client_options(
        "127.0.0.1:1", "/a.B/C", Path("/tmp/body"), authority=None, metadata={}, certificate=certificate
    )

    assert options[-4:] == ["--tls-dir", "/tmp/client.identity", "--tls-server-name", "echo-mtls.bench.agentmesh.local"]
    assert "--tls-dir" not in loadgen.client_options("127.0.0.1:1", "/a.B/C", Path("/b"), authority=None, metadata={})


@pytest.mark.skipif(h2load.binary() is None, reason="h2load (nghttp2-client) is not installed")
def test_h2load_against_a_closed_port_reports_every_request_as_an_error(tmp_path: Path):
    from tests.integration.procs import free_port

    load = h2load.Load(duration_s=1, rate=2, clients=1, streams=1)
    result = loadgen.run_h2load(f"http://127.0.0.1:{free_port()}/a.B/C", load, body=b"x", work_dir=tmp_path)
    assert result.ok == 0 and result.errors == 2
    assert result.error_detail == {"h2load_failed": 2}
