"""Summaries of py-spy's collapsed stacks."""

from __future__ import annotations

import pytest

from bench.profile import frame_name, stage_of, summarise

SITE = "/work/.venv/lib/python3.11/site-packages"
STACKS = [
    "<module> (/work/main/sidecar/app.py:10);run (/usr/lib/python3.11/asyncio/runners.py:118);"
    "unary (/work/main/sidecar/inbound/server.py:93);parse (/work/main/sidecar/contract/checker.py:40) 30\n",
    f"<module> (/work/main/sidecar/app.py:10);run (/usr/lib/python3.11/asyncio/runners.py:118);"
    f"unary (/work/main/sidecar/inbound/server.py:95);labels ({SITE}/prometheus_client/metrics.py:199) 50\n",
    "<module> (/work/main/sidecar/app.py:10);run (/usr/lib/python3.11/asyncio/runners.py:118) 20\n",
    "not a stack line\n",
]


def test_frame_names_drop_line_numbers_and_machine_prefixes():
    assert frame_name("parse (/work/main/sidecar/contract/checker.py:40)") == (
        "parse (sidecar/contract/checker.py)",
        "sidecar/contract/checker.py",
    )
    assert frame_name(f"labels ({SITE}/prometheus_client/metrics.py:199)")[1] == "prometheus_client/metrics.py"
    assert frame_name("run (/usr/lib/python3.11/asyncio/runners.py:118)")[1] == "stdlib/asyncio/runners.py"
    assert frame_name("thread-name") == ("thread-name", "")


def test_summarise_self_inclusive_and_files():
    summary = summarise(STACKS)
    assert summary.samples == 100
    own = dict(summary.self_by_function)
    assert own["labels (prometheus_client/metrics.py)"] == pytest.approx(0.5)
    assert own["parse (sidecar/contract/checker.py)"] == pytest.approx(0.3)
    total = dict(summary.total_by_function)
    assert total["unary (sidecar/inbound/server.py)"] == pytest.approx(0.8)  # lines 93 and 95: one function
    assert total["<module> (sidecar/app.py)"] == pytest.approx(1.0)
    assert dict(summary.self_by_file)["stdlib/asyncio/runners.py"] == pytest.approx(0.2)
    assert summary.to_dict()["samples"] == 100


def test_summarise_nothing():
    assert summarise([]).samples == 0
    assert summarise(["garbage\n"]).to_dict()["self_by_function"] == []


LOOP = "_run_module_as_main (<frozen runpy>:198);run (asyncio/runners.py:190);Handle._run (asyncio/events.py:80)"
CHAIN = "unary (sidecar/inbound/chain.py:130)"
GRPC = "0x7f (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"


def test_stages_file_each_loop_sample_under_its_innermost_step():
    summary = summarise(
        [
            f"{LOOP};{CHAIN};{GRPC};sendmsg (libc.so.6) 40\n",
            f"{LOOP};{CHAIN};start (sidecar/filters/tracing.py:60);start_span ({SITE}/opentelemetry/sdk/x.py:1) 20\n",
            f"{LOOP};{CHAIN};parse (sidecar/contract/checker.py:40) 10\n",
            f"{LOOP};{CHAIN};finish (sidecar/stats.py:110);inc ({SITE}/prometheus_client/values.py:28) 10\n",
            f"{LOOP};{CHAIN};log (agentmesh/telemetry/logs.py:380) 5\n",
            f"{LOOP};{CHAIN} 5\n",
            f"{LOOP};_run_once (asyncio/base_events.py:1922) 10\n",
            # Other threads (grpc's poller, the log writer) are not the loop: not in the stages.
            f"Thread._bootstrap (threading.py:1002);{GRPC};epoll_wait (libc.so.6) 300\n",
        ]
    )
    assert summary.loop_samples == 100
    stages = dict(summary.stages)
    assert stages["grpc.aio call machinery (Cython, core, syscalls under it)"] == pytest.approx(0.4)
    assert stages["tracing (OpenTelemetry spans, context)"] == pytest.approx(0.2)
    assert stages["contract validation (parse, protovalidate)"] == pytest.approx(0.1)
    assert stages["metrics (prometheus-client)"] == pytest.approx(0.1)
    assert stages["access log"] == pytest.approx(0.05)
    assert stages["rest of the sidecar (chain, adapter, listener)"] == pytest.approx(0.05)
    assert stages["asyncio event loop"] == pytest.approx(0.1)
    assert summary.to_dict()["loop_samples"] == 100


def test_a_loop_sample_in_no_known_file_is_other():
    assert stage_of(["<frozen runpy>", "libc.so.6"]) == "other"
    assert summarise([f"{GRPC};epoll_wait (libc.so.6) 5\n"]).stages == []
