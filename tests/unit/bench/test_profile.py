"""Summaries of py-spy's collapsed stacks."""

from __future__ import annotations

import pytest

from bench.profile import frame_name, summarise

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
