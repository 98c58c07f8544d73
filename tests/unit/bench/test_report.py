"""Targets, tables and rendering from hand-made results."""

from __future__ import annotations

import math
from typing import Any

from bench import report


def run(p50: float, p99: float, *, rps: float = 1000.0, cpu_1k: float = math.nan, cores: float = 0.0) -> dict[str, Any]:
    latency = {"count": 100, "p50_ms": p50, "p90_ms": (p50 + p99) / 2, "p99_ms": p99, "max_ms": p99, "mean_ms": p50}
    return {
        "load": {"achieved_rps": rps, "latency": latency, "errors": 0, "ok": 100},
        "proxy_cpu_s_per_1k": cpu_1k,
        "proxy_cores": cores,
        "proxy_peak_rss_mb": {"p": 50.0} if cores else {},
        "unserved_successes": 0,
        "machine_busy_cores": 1.0,
    }


def results(*, sidecar_p50: float = 1.2, sidecar_p99: float = 3.0) -> dict[str, Any]:
    paths = {
        "direct": {"rates": {"1000": run(1.0, 2.0)}, "saturation": run(5, 9, rps=3000)},
        "sidecar": {
            "rates": {"1000": run(sidecar_p50, sidecar_p99, cpu_1k=0.8, cores=0.8)},
            "saturation": run(50, 90, rps=1200, cores=1.0),
        },
        "envoy": {"rates": {"1000": run(1.2, 3.0, cpu_1k=0.2, cores=0.2)}},
        "envoy2": {"rates": {"1000": run(1.5, 4.0, cpu_1k=0.4, cores=0.4)}},
    }
    return {
        "machine": {"cpu_model": "Test CPU", "cores": 2},
        "settings": {"quick": True},
        "hop": {"tool": "h2load", "rates": [200.0, 1000.0], "paths": paths, "labels": {"direct": "client → backend"}},
        "idle": {"window_s": 5, "processes": {"sidecar": {"rss_mb": 58.0, "cpu_cores": 0.001}}},
        "streaming": {"open_streams": {"streams": 1000, "opened": 1000, "errors": 0, "rss_peak_mb": 150.0}},
    }


def by_name(targets: list[report.TargetResult]) -> dict[str, report.TargetResult]:
    return {t.name: t for t in targets}


def test_targets_pass_and_fail_on_ratios_and_limits():
    targets = by_name(report.evaluate_targets(results()))
    assert targets["sidecar hop at 1000 req/s: added p50"].verdict == "PASS"  # 0.2 vs 0.2
    assert targets["sidecar hop at 1000 req/s: added p99"].verdict == "PASS"  # 1.0 vs 1.0 (limit 2x)
    assert targets["sidecar req/s per core (saturation, all features)"].verdict == "FAIL"  # 1200 < 3000
    assert targets["sidecar CPU per 1,000 requests at 1000 req/s"].verdict == "FAIL"
    assert targets["idle sidecar RSS"].verdict == "PASS"
    streams = [t for name, t in targets.items() if "open streams" in name]
    assert [t.verdict for t in streams] == ["PASS", "PASS"]
    assert all("full run: 10,000" in t.name for t in streams)


def test_sidecar_slower_than_the_limits_fails():
    targets = by_name(report.evaluate_targets(results(sidecar_p50=1.5, sidecar_p99=4.5)))
    p50 = targets["sidecar hop at 1000 req/s: added p50"]
    assert p50.verdict == "FAIL" and "2.50x" in p50.measured
    assert targets["sidecar hop at 1000 req/s: added p99"].verdict == "FAIL"


def test_proxyless_uses_the_xds_client_runs_when_there_are_some():
    data = results()
    data["hop"]["proxyless"] = {
        "paths": {
            "direct": {"rates": {"1000": run(2.0, 5.0)}},
            "proxyless": {"rates": {"1000": run(2.5, 6.0)}},
            "envoy2": {"rates": {"1000": run(3.0, 9.0)}},
        }
    }
    targets = [t for t in report.evaluate_targets(data) if t.name.startswith("proxyless")]
    assert len(targets) == 4
    xds = [t for t in targets if "Python client" in t.name]
    assert [t.verdict for t in xds] == ["PASS", "PASS"]


def test_missing_measurements_are_not_applicable():
    targets = report.evaluate_targets({})
    assert targets and all(t.verdict == "n/a" for t in targets)
    assert all(t.measured == "not measured" for t in targets)


def test_stream_failures_count_streams_that_never_opened():
    data = results()
    data["streaming"]["open_streams"] = {"streams": 100, "opened": 90, "errors": 4, "rss_peak_mb": 10.0}
    errors = next(t for t in report.evaluate_targets(data) if t.name.endswith("errors"))
    assert errors.verdict == "FAIL" and errors.measured.startswith("10")


def test_fmt():
    assert report.fmt(None) == "—"
    assert report.fmt(math.nan) == "—"
    assert report.fmt(math.inf) == "∞"
    assert report.fmt(12345.6) == "12,346"
    assert report.fmt(1.23456) == "1.23"
    assert report.fmt(1.23456, 3) == "1.235"
    assert report.fmt(10000) == "10,000"
    assert report.fmt(True) == "yes"


def test_text_and_markdown_render_every_table():
    data = results()
    targets = report.evaluate_targets(data)
    tables = report.tables(data, targets)
    titles = [t.title for t in tables]
    assert titles[0].startswith("1. Unary hop") and titles[-1] == "Targets"
    rendered = report.text(tables[0])
    assert "client → backend" in rendered and "+p50" in rendered
    lines = rendered.splitlines()
    assert len({len(line) for line in lines[2:4]}) >= 1  # header and rule are present
    document = report.markdown(data, targets)
    assert "| cpu_model | Test CPU |" in document
    assert "### Targets" in document and "FAIL" in document and "PASS" in document


def test_markdown_escapes_pipes_and_lists_failed_scenarios():
    table = report.Table("T", ["a|b"], [["x|y"]], ["note"])
    assert "a\\|b" in report.markdown_table(table) and "- note" in report.markdown_table(table)
    document = report.markdown({"errors": {"streaming": "LoadError: boom"}}, [])
    assert "streaming: LoadError: boom" in document


def test_a_reference_below_zero_is_not_comparable():
    data = results()
    data["hop"]["paths"]["envoy"]["rates"]["1000"] = run(0.9, 1.5)  # faster than direct: noise
    targets = by_name(report.evaluate_targets(data))
    p50 = targets["sidecar hop at 1000 req/s: added p50"]
    assert p50.verdict == "n/a" and "noisier" in p50.measured


def test_tracing_table_has_one_row_per_setting_with_throughput_per_core():
    entry = {"fixed": run(1.5, 4.0, cpu_1k=0.7, cores=0.7), "saturation": run(40, 80, rps=1500, cores=1.2)}
    tracing = {"rate": 1000.0, "settings": {"off": entry, "100%": entry}}

    table = report.tracing_table(tracing)

    assert table is not None
    assert [row[0] for row in table.rows] == ["off", "100%"]
    assert table.rows[0][table.headers.index("req/s per core")] == "1,250"
    assert table.rows[0][table.headers.index("CPU-s/1k")] == "0.700"
    assert table in report.tables({**results(), "tracing": tracing}, [])


def test_tracing_table_reports_an_error_and_is_absent_when_not_run():
    table = report.tracing_table({"error": "h2load is not installed"})

    assert table is not None and table.rows == [["h2load is not installed"]]
    assert report.tracing_table({}) is None


def with_mtls(data: dict[str, Any], *, mtls_p50: float = 2.4, mtls_p99: float = 7.0) -> dict[str, Any]:
    """The Python generator's set beside h2load: direct, sidecar, sidecar-mtls and envoy, with saturation."""
    data["hop"]["labels"] = {**data["hop"]["labels"], report.MTLS_PATH: "client → sidecar (mTLS) → backend"}
    data["hop"]["mtls"] = {
        "tool": "grpc.aio (Python), same client for every path",
        "paths": {
            "direct": {"rates": {"1000": run(2.0, 5.0)}, "saturation": run(20, 40, rps=2500)},
            "sidecar": {
                "rates": {"1000": run(2.2, 6.0, cpu_1k=0.8, cores=0.8)},
                "saturation": run(50, 90, rps=1000, cores=0.9),
            },
            report.MTLS_PATH: {
                "rates": {"1000": run(mtls_p50, mtls_p99, cpu_1k=0.9, cores=0.9)},
                "saturation": run(60, 99, rps=900, cores=0.9),
            },
            "envoy": {"rates": {"1000": run(2.3, 6.0, cpu_1k=0.2, cores=0.2)}, "saturation": run(20, 40, rps=2000)},
        },
    }
    return data


def test_mtls_targets_compare_with_envoy_driven_by_the_same_generator():
    targets = by_name(report.evaluate_targets(with_mtls(results(), mtls_p50=2.6)))

    p50 = targets["sidecar (mTLS) hop at 1000 req/s: added p50 [Python]"]
    assert p50.verdict == "FAIL" and "0.600 ms vs 0.300 ms (2.00x)" in p50.measured  # over the Python direct
    p99 = targets["sidecar (mTLS) hop at 1000 req/s: added p99 [Python]"]
    assert p99.verdict == "PASS"  # 2.0 vs 1.0, limit 2x
    assert targets["sidecar (mTLS) req/s per core (saturation, all features) [Python]"].verdict == "FAIL"
    assert targets["sidecar (mTLS) CPU per 1,000 requests at 1000 req/s [Python]"].measured == "0.90 CPU-s"
    # The plaintext targets still read the h2load paths.
    assert targets["sidecar hop at 1000 req/s: added p50"].verdict == "PASS"


def test_mtls_targets_are_not_applicable_without_the_mtls_path():
    targets = report.evaluate_targets(results())

    mtls = [t for t in targets if t.name.startswith("sidecar (mTLS)")]
    assert len(mtls) == 4 and all(t.verdict == "n/a" for t in mtls)


def test_hop_table_marks_the_python_rows_and_says_why():
    table = report.hop_table(with_mtls(results())["hop"])

    python_rows = [row for row in table.rows if row[0].endswith(report.PYTHON_MARK)]
    assert [row[0].split(" ")[0] for row in python_rows] == [
        "direct",
        "direct",
        "sidecar",
        "sidecar",
        report.MTLS_PATH,
        report.MTLS_PATH,
        "envoy",
        "envoy",
    ]
    mtls_at_rate = next(row for row in python_rows if row[0].startswith(report.MTLS_PATH) and row[1] == "1000")
    assert mtls_at_rate[table.headers.index("+p50")] == "0.40"  # 2.4 - the Python direct's 2.0
    assert mtls_at_rate[table.headers.index("peak RSS MB")] == "50"
    notes = " ".join(table.notes)
    assert "h2load cannot present a TLS client certificate" in notes
    assert "mTLS over the plaintext sidecar at 1000 req/s, same generator: p50 +0.20 ms, p99 +1.00 ms" in notes
    assert "CPU-s/1k +0.100." in notes and "past saturation" not in notes


def test_mtls_cost_past_saturation_says_it_compares_queues():
    data = with_mtls(results())
    data["hop"]["mtls"]["paths"][report.MTLS_PATH]["rates"]["1000"]["load"]["rate"] = 1000.0
    data["hop"]["mtls"]["paths"][report.MTLS_PATH]["rates"]["1000"]["load"]["achieved_rps"] = 730.0

    cost = report.mtls_cost(data["hop"]["mtls"]["paths"])
    notes = " ".join(report.hop_table(data["hop"]).notes)

    assert cost["1000"]["overloaded"] is True
    assert "(past saturation: a path achieved less than the rate offered, so the latencies are queues)." in notes


def test_hop_table_says_why_the_mtls_path_is_missing():
    data = results()
    data["hop"]["mtls"] = {"error": "start-up: AssertionError: timed out waiting for the mTLS sidecar"}

    table = report.hop_table(data["hop"])

    assert not any(row[0].endswith(report.PYTHON_MARK) for row in table.rows)
    assert any(note.startswith("sidecar-mtls not measured: start-up: AssertionError") for note in table.notes)


def test_without_h2load_the_mtls_path_is_one_of_the_hop_paths():
    data = results()
    data["hop"]["tool"] = "grpc.aio (Python; h2load absent)"
    data["hop"]["paths"][report.MTLS_PATH] = {"rates": {"1000": run(1.4, 4.0, cpu_1k=0.9, cores=0.9)}}

    targets = by_name(report.evaluate_targets(data))
    table = report.hop_table(data["hop"])

    assert targets["sidecar (mTLS) hop at 1000 req/s: added p50 [Python]"].verdict == "FAIL"  # 0.4 vs 0.2
    assert not any(row[0].endswith(report.PYTHON_MARK) for row in table.rows)
    assert any("mTLS over the plaintext sidecar at 1000 req/s" in note for note in table.notes)


def control_plane_step(clients: int, *, p99_ms: float, max_ms: float, rss: float, missing: int = 0) -> dict[str, Any]:
    latency = {"count": clients, "p50_ms": p99_ms / 2, "p99_ms": p99_ms, "max_ms": max_ms}
    return {"clients": clients, "missing": missing, "ack_latency": latency, "rss_peak_mb": rss}


def test_control_plane_and_validation_targets():
    data = results()
    data["control_plane"] = {
        "steps": [
            control_plane_step(1_000, p99_ms=1_200.0, max_ms=1_300.0, rss=150.0),
            control_plane_step(10_000, p99_ms=2_800.0, max_ms=2_900.0, rss=1_100.0),
        ]
    }
    data["contract"] = {"1KiB": {"parse_and_validate_us": 4.7}}
    targets = by_name(report.evaluate_targets(data))
    assert targets["control plane, 1,000 clients ACK a change (p99)"].verdict == "FAIL"
    assert targets["control plane, 10,000 clients ACK a change (all)"].verdict == "PASS"
    assert targets["control plane RSS at 10,000 clients"].verdict == "FAIL"
    assert targets["contract validation per 1 KiB message"].verdict == "PASS"


def test_a_control_plane_step_with_missing_acks_fails():
    data = results()
    data["control_plane"] = {"steps": [control_plane_step(1_000, p99_ms=100.0, max_ms=100.0, rss=1.0, missing=3)]}
    targets = by_name(report.evaluate_targets(data))
    failed = targets["control plane, 1,000 clients ACK a change (p99)"]
    assert failed.verdict == "FAIL" and failed.measured == "3 clients never ACKed"
    assert targets["control plane, 10,000 clients ACK a change (all)"].verdict == "n/a"


def with_floor(data: dict[str, Any]) -> dict[str, Any]:
    """The bare grpc.aio proxy measured beside the sidecar: cheaper, but over the CPU and memory limits too."""
    data["hop"]["paths"]["floor"] = {
        "rates": {"1000": run(1.1, 2.4, cpu_1k=0.5, cores=0.5)},
        "saturation": run(30, 60, rps=1900, cores=1.0),
    }
    data["idle"]["processes"]["floor"] = {"rss_mb": 40.0, "cpu_cores": 0.0}
    data["streaming"]["open_streams"] |= {"rss_before_mb": 90.0, "rss_all_open_mb": 140.0}
    data["streaming"]["open_streams_floor"] = {
        "streams": 1000,
        "opened": 1000,
        "errors": 0,
        "rss_before_mb": 40.0,
        "rss_all_open_mb": 84.0,
        "rss_peak_mb": 85.0,
    }
    return data


def test_targets_show_the_floor_beside_the_sidecar_where_it_was_measured():
    targets = by_name(report.evaluate_targets(with_floor(results())))

    cpu = targets["sidecar CPU per 1,000 requests at 1000 req/s"]
    assert cpu.verdict == "FAIL" and cpu.floor == "0.50 CPU-s (FAIL)"
    assert targets["sidecar req/s per core (saturation, all features)"].floor == "1,900 req/s (FAIL)"
    assert targets["sidecar hop at 1000 req/s: added p50"].floor.startswith("0.100 ms vs 0.200 ms (0.50x)")
    assert targets["idle sidecar RSS"].floor == "40.00 MB (PASS)"
    peak = next(t for name, t in targets.items() if name.endswith("peak RSS"))
    assert peak.floor == "85.00 MB (PASS)"
    # Measured by the Python generator only: no floor to compare with.
    assert targets["contract validation per 1 KiB message"].floor == "—"
    rendered = report.text(report.targets_table(list(targets.values())))
    assert "bare grpc.aio proxy" in rendered and "0.50 CPU-s (FAIL)" in rendered


def test_targets_without_a_floor_run_leave_its_column_empty():
    targets = report.evaluate_targets(results())
    assert {t.floor for t in targets} == {"—"}


def test_open_streams_table_has_a_column_per_proxy_with_memory_per_stream():
    data = with_floor(results())
    table = next(t for t in report.streaming_tables(data["streaming"]) if t.title.startswith("3b."))

    assert list(table.headers) == ["", "sidecar", "bare grpc.aio proxy"]
    per_stream = next(row for row in table.rows if row[0] == "RSS per open stream (KB)")
    assert per_stream[1:] == ["51.2", "45.1"]


def test_a_failed_floor_stream_run_shows_its_error_in_its_column():
    data = with_floor(results())
    data["streaming"]["open_streams_floor"] = {"error": "streams client failed (1): boom", "streams": 1000}
    table = next(t for t in report.streaming_tables(data["streaming"]) if t.title.startswith("3b."))
    assert table.rows[0][2].startswith("streams client failed")
    assert report.stream_kb_per_stream(data["streaming"]["open_streams_floor"]) is None


def test_profile_tables_show_the_loop_by_step_before_self_time():
    profile = {
        "available": True,
        "rate_hz": 200,
        "samples": 1000,
        "loop_samples": 400,
        "stages": [["grpc.aio call machinery", 0.6], ["tracing", 0.1]],
        "self_by_function": [["epoll_wait (libc.so.6)", 0.5]],
        "self_by_file": [["libc.so.6", 0.7]],
    }
    stages, functions = report.profile_tables(profile)
    assert stages.rows == [["grpc.aio call machinery", "60.0%"], ["tracing", "10.0%"]]
    assert "400 samples" in stages.notes[0]
    assert functions.rows == [["epoll_wait (libc.so.6)", "50.0%"]]


def test_profile_tables_without_py_spy_say_why():
    (table,) = report.profile_tables({"available": False, "reason": "py-spy is not installed"})
    assert table.rows == [["py-spy is not installed"]]
    assert report.profile_tables(None) == []
