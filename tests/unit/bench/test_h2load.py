"""h2load's command line and output, parsed without running it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import h2load

OUTPUT = """starting benchmark...
spawning thread #0: 10 total client(s). 3000 total requests
Application protocol: h2c

finished in 4.00s, 1000.00 req/s, 1.05MB/s
requests: 3000 total, 3000 started, 2990 done, 2985 succeeded, 5 failed, 3 errored, 2 timeout
status codes: 2980 2xx, 0 3xx, 4 4xx, 1 5xx
traffic: 3.15MB (3300723) total, 12.45KB (12750) headers (space savings 96.06%), 3.97MB (4164000) data
                     min         max         mean         sd        +/- sd
time for request:      554us     22.93ms      2.99ms      1.65ms    79.00%
time for connect:        0us         0us         0us         0us     0.00%
"""


def test_grpc_frame_is_flag_length_and_message():
    assert h2load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert h2load.grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    assert len(h2load.grpc_frame(b"x" * 70000)) == 70005


def test_parse_summary_reads_totals_and_mean():
    summary = h2load.parse_summary(OUTPUT)
    assert summary.elapsed_s == 4.0
    assert summary.rps == 1000.0
    assert (summary.total, summary.done, summary.succeeded) == (3000, 2990, 2985)
    assert (summary.failed, summary.errored, summary.timeout) == (5, 3, 2)
    assert (summary.status_2xx, summary.status_other) == (2980, 5)
    assert summary.mean_request_s == pytest.approx(0.00299)


def test_parse_summary_without_totals_is_an_error_quoting_the_output():
    with pytest.raises(ValueError, match=r"connect to 127\.0\.0\.1"):
        h2load.parse_summary("starting benchmark...\ncould not connect to 127.0.0.1:1\n")


@pytest.mark.parametrize(("text", "seconds"), [("708us", 708e-6), ("26.63ms", 0.02663), ("4.00s", 4.0), (" 1s ", 1.0)])
def test_parse_duration(text, seconds):
    assert h2load.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3", "3m", "fast"])
def test_parse_duration_refuses_other_units(text):
    with pytest.raises(ValueError):
        h2load.parse_duration(text)


def test_parse_log_separates_failures_and_non_2xx():
    lines = [
        "1795618943705761\t200\t8223\n",
        "1795618943705762\t200\t8472\n",
        "1795618943705770\t-1\t100\n",
        "1795618943705790\t503\t300\n",
        "garbage line\n",
        "1\tnot-a-number\t3\n",
        "1795618944705761\t200\t1000\n",
    ]
    log = h2load.parse_log(lines)
    assert log.latencies_us == (8223, 8472, 1000)
    assert (log.failed, log.non_2xx) == (1, 1)
    assert log.statuses == {200: 3, -1: 1, 503: 1}
    assert log.span_s == pytest.approx(1.0)


def test_parse_log_of_nothing():
    log = h2load.parse_log([])
    assert log.latencies_us == () and log.span_s == 0.0


def test_open_loop_spreads_the_rate_over_clients_of_at_most_100_per_second():
    load = h2load.open_loop(1000, 10)
    assert (load.clients, load.per_client_rps(), load.requests()) == (10, 100.0, 10_000)
    small = h2load.open_loop(50, 2)
    assert small.clients == 2 and small.per_client_rps() == 25.0


def test_open_loop_argv_staggers_connections_and_counts_requests(tmp_path: Path):
    args = h2load.argv(
        "http://127.0.0.1:1/bench.v1.Echo/Echo",
        h2load.open_loop(200, 5),
        body=tmp_path / "b",
        log_file=tmp_path / "l",
        headers=[*h2load.GRPC_HEADERS, ":authority: echo-raw"],
    )
    joined = " ".join(args)
    assert "-n 1000" in joined and "-r 1 --rate-period 5ms" in joined and "--rps 100" in joined
    assert "-D" not in args
    assert args.count("-H") == 3 and ":authority: echo-raw" in args
    assert args[-1] == "http://127.0.0.1:1/bench.v1.Echo/Echo"


def test_closed_loop_argv_runs_for_a_duration_with_warm_up(tmp_path: Path):
    load = h2load.Load(duration_s=2.5, clients=2, streams=32, warmup_s=1)
    args = h2load.argv("http://h/x", load, body=tmp_path / "b", log_file=tmp_path / "l", http1=True)
    joined = " ".join(args)
    assert "-D 2500ms" in joined and "--warm-up-time 1s" in joined and "--h1" in args
    assert "--rps" not in args and "-m" not in args


def test_closed_loop_has_no_rate():
    load = h2load.Load(duration_s=1)
    with pytest.raises(ValueError):
        load.per_client_rps()
    with pytest.raises(ValueError):
        load.requests()
    assert math.isnan(h2load.Summary(1, 1, 1, 1, 1, 1, 0, 0, 0).mean_request_s)
