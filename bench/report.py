"""Turns a suite's results into targets, tables, a terminal report and a markdown summary (pure).

Targets are ratios and limits checked within one run on one machine
(`evaluate_targets`); each is PASS, FAIL, or n/a when its measurement is
missing. They are reported, never asserted: a benchmark informs, a test
decides. Every table is a `Table` (title, headers, rows of strings), rendered
aligned for the terminal (`text`) or as GitHub markdown (`markdown`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

TARGET_RATE = 1000.0
SIDECAR_P50_VS_ENVOY = 1.5
SIDECAR_P99_VS_ENVOY = 2.0
REQUESTS_PER_CORE = 3000.0
CPU_S_PER_1K = 0.35
IDLE_SIDECAR_MB = 60.0
STREAMS_RSS_MB = 300.0
FULL_STREAMS = 10_000
# Control plane: (clients, how long until the slowest ACK may take, which statistic) and memory at the largest step.
CP_ACK_TARGETS = ((1_000, 1_000.0, "p99_ms"), (10_000, 10_000.0, "max_ms"))
CP_RSS_MB = 1024.0
VALIDATION_1KIB_US = 20.0
# The hop path with workload identity on both ends (bench/scenarios/hop.py), and how rows of the Python generator
# are marked in the hop table.
MTLS_PATH = "sidecar-mtls"
PYTHON_MARK = "[Python]"


@dataclass(frozen=True)
class TargetResult:
    name: str
    measured: str
    limit: str
    passed: bool | None  # None: not measured in this run
    # The same measurement of the bare grpc.aio proxy (bench/floor.py) in this run, where it applies.
    floor: str = "—"

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "floor": self.floor,
            "limit": self.limit,
            "verdict": self.verdict,
        }

    def beside(self, floor: TargetResult) -> TargetResult:
        """This target with the floor's measurement of it, when the floor was measured."""
        return self if floor.passed is None else replace(self, floor=f"{floor.measured} ({floor.verdict})")


@dataclass(frozen=True)
class Table:
    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    notes: Sequence[str] = field(default_factory=tuple)


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers for tables: fixed decimals, thousands for large ones, '—' for missing or NaN."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _get(data: Any, *keys: str | int) -> Any:
    """data[k1][k2]...; None when any step is missing."""
    for key in keys:
        found = isinstance(data, Mapping) and key in data
        found = found or (isinstance(data, Sequence) and isinstance(key, int) and -len(data) <= key < len(data))
        if not found:
            return None
        data = data[key]
    return data


def _rate_key(rates: Sequence[float]) -> str:
    rate = TARGET_RATE if TARGET_RATE in rates else max(rates, default=TARGET_RATE)
    return str(int(rate)) if float(rate).is_integer() else str(rate)


def _added(paths: Mapping[str, Any], name: str, rate: str, pct: str) -> float | None:
    mine = _get(paths, name, "rates", rate, "load", "latency", pct)
    base = _get(paths, "direct", "rates", rate, "load", "latency", pct)
    if mine is None or base is None:
        return None
    return float(mine) - float(base)


def _ratio_target(name: str, value: float | None, reference: float | None, limit: float, what: str) -> TargetResult:
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return TargetResult(name, "not measured", f"≤ {limit:g}x {what}", None)
    if reference <= 0:
        # The direct run was slower at this percentile than the path through the proxy: background load,
        # not a property of either path. Not comparable.
        measured = f"{value:.3f} ms vs {reference:.3f} ms (reference ≤ 0: the direct run was noisier)"
        return TargetResult(name, measured, f"≤ {limit:g}x {what}", None)
    else:
        passed = value <= limit * reference
        measured = f"{value:.3f} ms vs {reference:.3f} ms ({value / reference:.2f}x)"
    return TargetResult(name, measured, f"≤ {limit:g}x {what}", passed)


def _limit_target(name: str, value: float | None, limit: float, unit: str, *, at_least: bool = False) -> TargetResult:
    bound = f"{'≥' if at_least else '≤'} {fmt(limit)} {unit}"
    if value is None or math.isnan(value):
        return TargetResult(name, "not measured", bound, None)
    passed = value >= limit if at_least else value <= limit
    return TargetResult(name, f"{fmt(value)} {unit}", bound, passed)


def mtls_paths(hop: Mapping[str, Any]) -> Mapping[str, Any]:
    """The mTLS path and the paths compared with it, all driven by one generator (the Python one).

    h2load cannot present a client certificate, so these are the Python
    generator's set (`hop.mtls.paths`), or, when h2load was absent and every
    path was driven by the Python generator, the hop paths themselves.
    """
    compared = _get(hop, "mtls", "paths")
    if compared:
        return dict(compared)
    paths = hop.get("paths") or {}
    return dict(paths) if MTLS_PATH in paths else {}


# A run that achieved less than this share of the rate offered was past saturation: its latency is queueing.
KEPT_UP = 0.95


def mtls_cost(compared: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What mTLS adds over the plaintext sidecar at each fixed rate, same generator.

    rate -> p50_ms, p99_ms, cpu_s_per_1k (differences, None when a run is
    missing) and `overloaded`: whether either run fell behind the rate
    offered, in which case the latencies compare queues, not mTLS.
    """
    found: dict[str, dict[str, Any]] = {}
    for rate in _get(compared, MTLS_PATH, "rates") or {}:
        cost: dict[str, Any] = {}
        for pct in ("p50_ms", "p99_ms"):
            mtls = _get(compared, MTLS_PATH, "rates", rate, "load", "latency", pct)
            plain = _get(compared, "sidecar", "rates", rate, "load", "latency", pct)
            cost[pct] = None if mtls is None or plain is None else float(mtls) - float(plain)
        mtls_cpu = _get(compared, MTLS_PATH, "rates", rate, "proxy_cpu_s_per_1k")
        plain_cpu = _get(compared, "sidecar", "rates", rate, "proxy_cpu_s_per_1k")
        cost["cpu_s_per_1k"] = None if mtls_cpu is None or plain_cpu is None else float(mtls_cpu) - float(plain_cpu)
        cost["overloaded"] = any(
            _fell_behind(_get(compared, name, "rates", rate, "load")) for name in (MTLS_PATH, "sidecar")
        )
        found[rate] = cost
    return found


def _fell_behind(load: Mapping[str, Any] | None) -> bool:
    if not load or not load.get("rate"):
        return False
    return float(load.get("achieved_rps") or 0.0) < KEPT_UP * float(load["rate"])


def _per_core(saturation: Mapping[str, Any] | None) -> float | None:
    """Saturation throughput per core the path's proxies kept busy."""
    if saturation is None or not saturation.get("proxy_cores") or "load" not in saturation:
        return None
    return float(saturation["load"]["achieved_rps"]) / float(saturation["proxy_cores"])


def _hop_targets(paths: Mapping[str, Any], rate: str, name: str, label: str, source: str) -> list[TargetResult]:
    """The all-features sidecar targets for one path: added p50/p99 vs Envoy's, req/s per core, CPU per 1,000."""
    targets = []
    for pct, limit in (("p50_ms", SIDECAR_P50_VS_ENVOY), ("p99_ms", SIDECAR_P99_VS_ENVOY)):
        targets.append(
            _ratio_target(
                f"{label} hop at {rate} req/s: added {pct[:3]}{source}",
                _added(paths, name, rate, pct),
                _added(paths, "envoy", rate, pct),
                limit,
                "Envoy's",
            )
        )
    targets.append(
        _limit_target(
            f"{label} req/s per core (saturation, all features){source}",
            _per_core(_get(paths, name, "saturation")),
            REQUESTS_PER_CORE,
            "req/s",
            at_least=True,
        )
    )
    targets.append(
        _limit_target(
            f"{label} CPU per 1,000 requests at {rate} req/s{source}",
            _get(paths, name, "rates", rate, "proxy_cpu_s_per_1k"),
            CPU_S_PER_1K,
            "CPU-s",
        )
    )
    return targets


def evaluate_targets(results: Mapping[str, Any]) -> list[TargetResult]:
    """The issue's targets, from one run's results; the mTLS sidecar's against Envoy measured by its generator."""
    hop = results.get("hop") or {}
    paths = hop.get("paths") or {}
    rate = _rate_key(hop.get("rates") or [])
    floor = _hop_targets(paths, rate, "floor", "floor", "")
    plain = [t.beside(f) for t, f in zip(_hop_targets(paths, rate, "sidecar", "sidecar", ""), floor, strict=True)]
    targets = plain[:2]
    proxyless = _get(hop, "proxyless", "paths") or {}
    sources = [("h2load; sidecar inbound, where xds:///echo resolves", paths, "sidecar")]
    if proxyless:
        sources.append(("xds:/// Python client", proxyless, "proxyless"))
    for source, compared, candidate in sources:
        for pct in ("p50_ms", "p99_ms"):
            name = f"proxyless vs two Envoys at {rate} req/s: added {pct[:3]} ({source})"
            two_envoys = _added(compared, "envoy2", rate, pct)
            target = _ratio_target(name, _added(compared, candidate, rate, pct), two_envoys, 1.0, "two Envoys'")
            targets.append(
                target.beside(_ratio_target(name, _added(compared, "floor", rate, pct), two_envoys, 1.0, ""))
            )
    targets += plain[2:]
    targets += _hop_targets(mtls_paths(hop), rate, MTLS_PATH, "sidecar (mTLS)", f" {PYTHON_MARK}")
    idle = [
        _limit_target("idle sidecar RSS", _get(results, "idle", "processes", name, "rss_mb"), IDLE_SIDECAR_MB, "MB")
        for name in ("sidecar", "floor")
    ]
    targets.append(idle[0].beside(idle[1]))
    streams = _get(results, "streaming", "open_streams") or {}
    count = streams.get("streams")
    label = f"{fmt(count) if count else '?'} open streams"
    if count and count != FULL_STREAMS:
        label += f" (full run: {FULL_STREAMS:,})"
    sidecar, floor_streams = (
        _stream_targets(label, _get(results, "streaming", key) or {}) for key in ("open_streams", "open_streams_floor")
    )
    targets += [t.beside(f) for t, f in zip(sidecar, floor_streams, strict=True)]
    targets += _control_plane_targets(results.get("control_plane") or {})
    targets.append(
        _limit_target(
            "contract validation per 1 KiB message",
            _get(results, "contract", "1KiB", "parse_and_validate_us"),
            VALIDATION_1KIB_US,
            "µs",
        )
    )
    return targets


def _stream_targets(label: str, streams: Mapping[str, Any]) -> list[TargetResult]:
    """Peak RSS and errors (streams never opened count as errors) of one open-streams run."""
    count = streams.get("streams")
    errors = streams.get("errors")
    if errors is not None and streams.get("opened") is not None:
        errors = int(errors) + max(0, int(count or 0) - int(streams["opened"]) - int(errors))
    return [
        _limit_target(f"{label}: sidecar peak RSS", streams.get("rss_peak_mb"), STREAMS_RSS_MB, "MB"),
        _limit_target(f"{label}: errors", None if errors is None else float(errors), 0, "errors"),
    ]


def _control_plane_targets(cp: Mapping[str, Any]) -> list[TargetResult]:
    """ACK after a policy change (p99 at 1,000 clients, the last one at 10,000) and RSS at the largest step."""
    steps = {int(step["clients"]): step for step in cp.get("steps") or []}
    targets = []
    for clients, limit_ms, stat in CP_ACK_TARGETS:
        step = steps.get(clients)
        what = "p99" if stat == "p99_ms" else "all"
        name = f"control plane, {clients:,} clients ACK a change ({what})"
        if step is not None and step.get("missing"):
            targets.append(
                TargetResult(name, f"{step['missing']:,} clients never ACKed", f"≤ {fmt(limit_ms)} ms", False)
            )
            continue
        targets.append(_limit_target(name, _get(step, "ack_latency", stat), limit_ms, "ms"))
    largest = steps.get(max(steps)) if steps else None
    rss = largest.get("rss_peak_mb") if largest is not None else None
    label = f"control plane RSS at {max(steps):,} clients" if steps else "control plane RSS"
    targets.append(_limit_target(label, rss, CP_RSS_MB, "MB"))
    return targets


def _latency_cells(latency: Mapping[str, Any] | None) -> list[str]:
    if latency is None:
        return ["—"] * 3
    return [fmt(latency.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")]


def _hop_rows(paths: Mapping[str, Any], labels: Mapping[str, str], *, mark: str = "") -> list[list[str]]:
    """Rows of the hop table for one set of paths measured by one generator; +pXX over that set's direct path."""
    rows: list[list[str]] = []
    for name, path in paths.items():
        runs = [(key, run) for key, run in (path.get("rates") or {}).items()]
        if path.get("saturation") is not None:
            runs.append(("max", path["saturation"]))
        cell = f"{name} ({labels[name]})" if labels.get(name) else name
        if mark:
            cell += f" {mark}"
        for key, run in runs:
            if "error" in run:
                rows.append([cell, key, run["error"][:60]] + ["—"] * 11)
                continue
            latency = run["load"]["latency"]
            added = ["—"] * 3
            if key != "max" and name != "direct":
                added = [fmt(_added(paths, name, key, pct)) for pct in ("p50_ms", "p90_ms", "p99_ms")]
            rss = run.get("proxy_peak_rss_mb") or {}
            rows.append(
                [
                    cell,
                    key,
                    fmt(run["load"]["achieved_rps"], 0),
                    *_latency_cells(latency),
                    *added,
                    fmt(run.get("proxy_cpu_s_per_1k"), 3),
                    fmt(run.get("proxy_cores")),
                    " + ".join(fmt(v, 0) for v in rss.values()) or "—",
                    fmt(run["load"]["errors"] + run.get("unserved_successes", 0)),
                    fmt(run.get("machine_busy_cores")),
                ]
            )
    return rows


def _mtls_notes(hop: Mapping[str, Any]) -> list[str]:
    """How the mTLS path was measured, what mTLS costs over the plaintext sidecar, or why it is missing."""
    mtls = hop.get("mtls") or {}
    compared = mtls_paths(hop)
    notes = []
    if mtls.get("paths"):
        notes.append(
            f"{PYTHON_MARK} rows: load generator {mtls.get('tool')} (bench/grpc_client.py), because h2load cannot "
            f"present a TLS client certificate. They are one set, interleaved at each rate, and their +pXX are over "
            f"the {PYTHON_MARK} direct row: compare them with each other, not with the h2load rows (the Python "
            "generator adds latency of its own and shares the cores with the proxies, so it saturates far sooner)."
        )
    if compared:
        client = _get(mtls, "identities", "client") or "bench-client of team bench"
        notes.append(
            f"{MTLS_PATH}: the client presents a workload certificate from the control plane ({client}, enrolled "
            "with a join token); the sidecar enrolled with its own token and accepts strict mTLS only, and its "
            "AccessPolicy allows that SPIFFE ID alone. Handshakes happen while connecting, before the clock starts "
            "(long-lived channels). The plaintext sidecar and Envoy allow any caller (a plaintext caller has no "
            "certificate to match); Envoy is plaintext from the client."
        )
        for rate, cost in mtls_cost(compared).items():
            note = (
                f"mTLS over the plaintext sidecar at {rate} req/s, same generator: p50 {_signed(cost['p50_ms'])} ms, "
                f"p99 {_signed(cost['p99_ms'])} ms, CPU-s/1k {_signed(cost['cpu_s_per_1k'], 3)}"
            )
            if cost["overloaded"]:
                note += " (past saturation: a path achieved less than the rate offered, so the latencies are queues)"
            notes.append(note + ".")
    if mtls.get("error"):
        notes.append(f"{MTLS_PATH} not measured: {str(mtls['error'])[:300]}")
    return notes


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:+.{digits}f}"


def hop_table(hop: Mapping[str, Any]) -> Table:
    labels = hop.get("labels") or {}
    rows = _hop_rows(hop.get("paths") or {}, labels)
    rows += _hop_rows(_get(hop, "mtls", "paths") or {}, labels, mark=PYTHON_MARK)
    notes = [
        f"load generator: {hop.get('tool')}; request {hop.get('request_bytes')} B, reply {hop.get('reply_bytes')} B "
        "payload; fixed rates are open loop, `max` is closed loop (saturation).",
        "latency in ms; +pXX = the path's percentile minus the direct path's at the same rate.",
        "CPU-s/1k and cores: the path's proxies only (both Envoys for envoy2); machine = busy cores of the whole "
        "machine during the run (ours, the load generator's and anyone else's).",
        *_mtls_notes(hop),
    ]
    headers = [
        "path",
        "req/s",
        "achieved",
        "p50",
        "p90",
        "p99",
        "+p50",
        "+p90",
        "+p99",
        "CPU-s/1k",
        "cores",
        "peak RSS MB",
        "errors",
        "machine",
    ]
    return Table("1. Unary hop (gRPC, ~1 KiB)", headers, rows, notes)


def proxyless_table(hop: Mapping[str, Any]) -> Table | None:
    proxyless = hop.get("proxyless")
    if not proxyless:
        return None
    paths = proxyless.get("paths") or {}
    labels = hop.get("labels") or {}
    rows = []
    for name, path in paths.items():
        for key, run in (path.get("rates") or {}).items():
            if "error" in run:
                rows.append([name, key, run["error"][:60]] + ["—"] * 7)
                continue
            added = ["—", "—"] if name == "direct" else [fmt(_added(paths, name, key, p)) for p in ("p50_ms", "p99_ms")]
            latency = run["load"]["latency"]
            rows.append(
                [
                    f"{name} ({labels.get(name, '')})",
                    key,
                    fmt(run["load"]["achieved_rps"], 0),
                    fmt(latency["p50_ms"]),
                    fmt(latency["p99_ms"]),
                    *added,
                    fmt(run.get("proxy_cpu_s_per_1k"), 3),
                    fmt(run["load"]["errors"] + run.get("unserved_successes", 0)),
                    fmt(run.get("machine_busy_cores")),
                ]
            )
    headers = ["path", "req/s", "achieved", "p50", "p99", "+p50", "+p99", "CPU-s/1k", "errors", "machine"]
    notes = [f"load generator: {proxyless.get('tool')} (open loop, latency from each call's scheduled time)."]
    return Table("1b. Proxyless (xds:///) vs two Envoys, same Python client", headers, rows, notes)


def tracing_table(tracing: Mapping[str, Any]) -> Table | None:
    """Scenario 1c: the sidecar hop by tracing setting (off, 0 %, 10 %, 100 % sampled)."""
    if not tracing:
        return None
    if "error" in tracing:
        return Table("1c. Tracing cost by sampling (sidecar hop)", ["note"], [[str(tracing["error"])[:100]]])
    rows: list[list[str]] = []
    for name, entry in (tracing.get("settings") or {}).items():
        fixed, saturation = entry.get("fixed") or {}, entry.get("saturation") or {}
        fixed_load, saturation_load = fixed.get("load") or {}, saturation.get("load") or {}
        cores = saturation.get("proxy_cores")
        achieved = saturation_load.get("achieved_rps")
        per_core = achieved / cores if achieved is not None and cores else None
        errors = sum(
            run.get("unserved_successes", 0) + (run.get("load") or {}).get("errors", 0) for run in (fixed, saturation)
        )
        rows.append(
            [
                name,
                fmt(fixed_load.get("achieved_rps"), 0),
                *_latency_cells(fixed_load.get("latency")),
                fmt(fixed.get("proxy_cpu_s_per_1k"), 3),
                fmt(achieved, 0),
                fmt(per_core, 0),
                fmt(saturation.get("proxy_cpu_s_per_1k"), 3),
                fmt(errors),
                fmt(fixed.get("machine_busy_cores")),
            ]
        )
    notes = [
        f"open loop at {fmt(tracing.get('rate'), 0)} req/s, then closed loop (saturation); a fresh sidecar per "
        "setting; off = OTEL_SDK_DISABLED, the others parentbased_traceidratio; no span exporter.",
        "latency in ms; CPU-s/1k of the sidecar; req/s per core = saturation throughput / sidecar cores busy.",
    ]
    headers = ["tracing", "achieved", "p50", "p90", "p99", "CPU-s/1k", "max req/s", "req/s per core", "CPU-s/1k max",
               "errors", "machine"]  # fmt: skip
    return Table("1c. Tracing cost by sampling (sidecar hop)", headers, rows, notes)


def http_table(http: Mapping[str, Any]) -> Table | None:
    if not http or "paths" not in http:
        return None
    rows = []
    for name, modes in http["paths"].items():
        for mode, run in modes.items():
            if "error" in run:
                rows.append([name, mode, run["error"][:60]] + ["—"] * 6)
                continue
            latency = run["load"]["latency"]
            rows.append(
                [
                    name,
                    fmt(http.get("rate"), 0) if mode == "rate" else "max",
                    fmt(run["load"]["achieved_rps"], 0),
                    *_latency_cells(latency),
                    fmt(run.get("proxy_cpu_s_per_1k"), 3),
                    fmt(run["load"]["errors"] + run.get("unserved_successes", 0)),
                    fmt(run.get("machine_busy_cores")),
                ]
            )
    added = http.get("added") or {}
    notes = [
        "direct: h2load HTTP/1.1 POST /v1/search with JSON; sidecar: h2load gRPC to the sidecar, which transcodes "
        "to that same HTTP/JSON call (researcher example agent).",
        f"added by the sidecar at {fmt(http.get('rate'), 0)} req/s: p50 {fmt(added.get('p50_ms'))} ms, "
        f"p90 {fmt(added.get('p90_ms'))} ms, p99 {fmt(added.get('p99_ms'))} ms.",
    ]
    if http.get("transcoding_over_passthrough_p50_ms") is not None:
        notes.append(
            "transcoding share (this added p50 minus the gRPC passthrough hop's at the same rate): "
            f"{fmt(http['transcoding_over_passthrough_p50_ms'])} ms."
        )
    headers = ["path", "req/s", "achieved", "p50", "p90", "p99", "CPU-s/1k", "errors", "machine"]
    return Table("2. HTTP/JSON agent (transcoding)", headers, rows, notes)


def streaming_tables(streaming: Mapping[str, Any]) -> list[Table]:
    tables = []
    ttfm = streaming.get("ttfm") or {}
    if ttfm:
        rows = []
        for name in ("direct", "sidecar"):
            entry = ttfm.get(name) or {}
            rows.append([name, *_latency_cells(entry.get("latency")), fmt(sum((entry.get("errors") or {}).values()))])
        added = ttfm.get("added") or {}
        rows.append(["added by sidecar", *(fmt(added.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")), "—"])
        tables.append(
            Table(
                "3a. Streaming: time to first message (ms)",
                ["path", "p50", "p90", "p99", "errors"],
                rows,
                [f"{fmt(ttfm.get('calls'))} sequential calls, Python gRPC client."],
            )
        )
    runs = {name: streaming[key] for key, name in STREAM_PROXIES.items() if streaming.get(key)}
    if runs:
        tables.append(
            Table(
                "3b. Streaming: open server streams through one proxy",
                ["", *runs],
                _stream_rows(list(runs.values())),
                [
                    "per open stream: (RSS with all open - RSS before) / streams.",
                    "bare grpc.aio proxy: bench/floor.py, one grpc.aio call in and one out per stream, no features.",
                ],
            )
        )
    return tables


# Results keys of the open-streams runs and their column names.
STREAM_PROXIES = {"open_streams": "sidecar", "open_streams_floor": "bare grpc.aio proxy"}


def stream_kb_per_stream(streams: Mapping[str, Any]) -> float | None:
    """What one open stream added to the proxy's RSS, in KB."""
    before, all_open, count = (streams.get(k) for k in ("rss_before_mb", "rss_all_open_mb", "opened"))
    if before is None or all_open is None or not count or math.isnan(all_open):
        return None
    return (float(all_open) - float(before)) * 1024 / int(count)


def _stream_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    def row(label: str, cell: Any) -> list[str]:
        return [label, *(str(streams["error"])[:100] if "error" in streams else cell(streams) for streams in runs)]

    return [
        row("streams", lambda s: fmt(s.get("streams"))),
        row("opened / completed", lambda s: f"{fmt(s.get('opened'))} / {fmt(s.get('completed'))}"),
        row("errors", lambda s: f"{fmt(s.get('errors'))} {s.get('error_detail') or ''}".strip()),
        row("time to open all (s)", lambda s: fmt(s.get("open_s"))),
        row(
            "RSS before / all open / peak (MB)",
            lambda s: " / ".join(fmt(s.get(k), 0) for k in ("rss_before_mb", "rss_all_open_mb", "rss_peak_mb")),
        ),
        row("RSS per open stream (KB)", lambda s: fmt(stream_kb_per_stream(s), 1)),
        row(
            "messages/s while all open (offered)",
            lambda s: f"{fmt(s.get('steady_rate'), 0)} ({fmt(s.get('offered_rate'), 0)})",
        ),
        row("proxy CPU-s over the run", lambda s: fmt(s.get("proxy_cpu_s"))),
        row("machine busy cores", lambda s: fmt(s.get("machine_busy_cores"))),
    ]


def control_plane_table(cp: Mapping[str, Any]) -> Table | None:
    steps = cp.get("steps") if cp else None
    if not steps:
        return None
    rows = []
    for step in steps:
        latency = step.get("ack_latency") or {}
        rows.append(
            [
                fmt(step.get("clients")),
                fmt(step.get("connect_s")),
                fmt(step.get("rss_connected_mb"), 0),
                fmt(latency.get("p50_ms"), 0),
                fmt(latency.get("p99_ms"), 0),
                fmt(latency.get("max_ms"), 0),
                fmt(step.get("missing", step.get("error"))),
                fmt(step.get("push_cpu_s")),
                fmt(step.get("machine_busy_cores")),
            ]
        )
    notes = [
        f"simulated sidecars over {cp.get('processes')} processes, each its own connection; {cp.get('agents')} "
        f"registered agents; idle control plane before any client: {fmt(cp.get('idle_rss_mb'), 0)} MB.",
        "ACK latency: from the admin API call changing a route timeout to each client's ACK of the new version.",
    ]
    headers = [
        "ADS clients",
        "all synced (s)",
        "RSS MB",
        "ACK p50 ms",
        "ACK p99 ms",
        "ACK max ms",
        "missing",
        "push CPU-s",
        "machine",
    ]
    return Table("4. Control plane scale", headers, rows, notes)


def idle_tables(idle: Mapping[str, Any]) -> list[Table]:
    processes = (idle or {}).get("processes")
    if not processes:
        return []
    rows = [[name, fmt(p.get("rss_mb"), 1), fmt(p.get("cpu_cores"), 3)] for name, p in processes.items()]
    found = [
        Table(
            "5. Idle footprint",
            ["process", "RSS MB", "CPU cores"],
            rows,
            [f"over {fmt(idle.get('window_s'))} s before any load."],
        )
    ]
    imports = idle.get("sidecar_imports")
    if imports:
        rows = [[step["step"], fmt(step["rss_mb"], 1), f"+{fmt(step['added_mb'], 1)}"] for step in imports]
        notes = [
            "a fresh interpreter importing the sidecar's dependencies in turn: code loaded before any state is kept."
        ]
        found.append(
            Table("5b. Where the idle sidecar's RSS comes from", ["import step", "RSS MB", "added"], rows, notes)
        )
    return found


def contract_table(contract: Mapping[str, Any]) -> Table | None:
    if not contract:
        return None
    rows = [
        [
            name,
            fmt(c.get("wire_bytes")),
            fmt(c.get("decode_us")),
            fmt(c.get("parse_and_validate_us")),
            fmt(c.get("validation_us")),
            fmt(c.get("from_json_us")),
        ]
        for name, c in contract.items()
    ]
    headers = ["message", "wire bytes", "decode µs", "parse+validate µs", "validation µs", "from JSON µs"]
    return Table("6. Contract validation per message (MessageChecker, in-process)", headers, rows)


def targets_table(targets: Sequence[TargetResult]) -> Table:
    rows = [[t.name, t.measured, t.limit, t.verdict, t.floor] for t in targets]
    notes = [
        "bare grpc.aio proxy: the same measurement of bench/floor.py in this run (a proxy with no features on the "
        "sidecar's runtime); where it fails too, the target is below what a grpc.aio data path costs before any "
        "feature."
    ]
    return Table("Targets", ["target", "measured", "limit", "verdict", "bare grpc.aio proxy"], rows, notes)


def profile_tables(profile: Mapping[str, Any] | None, *, top: int = 15) -> list[Table]:
    """Where the event loop's time goes by request-path step, then self time by function."""
    if not profile:
        return []
    if not profile.get("available"):
        return [Table("Sidecar profile", ["note"], [[str(profile.get("reason", "not taken"))]])]
    found = []
    stages = profile.get("stages") or []
    if stages:
        rows = [[name, f"{share * 100:.1f}%"] for name, share in stages]
        notes = [
            f"{fmt(profile.get('loop_samples'))} samples of the event loop's thread (the one serving calls), each "
            "filed under the innermost step its stack was in; grpc's poller and the log writer threads are not "
            "counted."
        ]
        found.append(Table("Sidecar profile: the event loop by step", ["step", "share"], rows, notes))
    rows = [[name, f"{share * 100:.1f}%"] for name, share in profile.get("self_by_function", [])[:top]]
    files = ", ".join(f"{name} {share * 100:.0f}%" for name, share in profile.get("self_by_file", [])[:8])
    notes = [
        f"py-spy, {fmt(profile.get('samples'))} samples at {profile.get('rate_hz')} Hz during a saturation run, "
        f"all threads (waits in grpc's poller count as samples); by file: {files}."
    ]
    found.append(Table("Sidecar profile (self time, top functions)", ["function", "self"], rows, notes))
    return found


def tables(results: Mapping[str, Any], targets: Sequence[TargetResult]) -> list[Table]:
    found: list[Table | None] = []
    hop = results.get("hop")
    if hop:
        found += [hop_table(hop), proxyless_table(hop)]
    found.append(tracing_table(results.get("tracing") or {}))
    found.append(http_table(results.get("http_json") or {}))
    found += streaming_tables(results.get("streaming") or {})
    found += [
        control_plane_table(results.get("control_plane") or {}),
        *idle_tables(results.get("idle") or {}),
        contract_table(results.get("contract") or {}),
        *profile_tables(_get(results, "hop", "profile")),
        targets_table(targets),
    ]
    return [t for t in found if t is not None]


def text(table: Table) -> str:
    """An aligned plain-text table with its title and notes."""
    widths = [len(h) for h in table.headers]
    for row in table.rows:
        for index, cell in enumerate(row[: len(widths)]):
            widths[index] = max(widths[index], len(cell))
    lines = [table.title, "=" * len(table.title)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(table.headers, widths, strict=False)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in table.rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    lines += [f"  * {note}" for note in table.notes]
    return "\n".join(lines)


def _md_cell(cell: str) -> str:
    return cell.replace("|", "\\|")


def markdown_table(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines)


def markdown(results: Mapping[str, Any], targets: Sequence[TargetResult]) -> str:
    """The summary document: machine, settings, every table, targets."""
    machine = results.get("machine") or {}
    settings = results.get("settings") or {}
    passed = sum(t.passed is True for t in targets)
    failed = sum(t.passed is False for t in targets)
    lines = [
        f"# AgentMesh benchmarks{' (quick)' if settings.get('quick') else ''}",
        "",
        f"Run {results.get('started', '')}, {fmt(results.get('elapsed_s'), 0)} s; targets: {passed} pass, "
        f"{failed} fail, {len(targets) - passed - failed} not measured.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, value in machine.items():
        lines.append(f"| {key} | {_md_cell(str(value))} |")
    lines += ["", "## Results", ""]
    for table in tables(results, targets):
        lines += [markdown_table(table), ""]
    if results.get("errors"):
        lines += ["## Scenarios that failed", ""]
        lines += [f"- {name}: {message}" for name, message in results["errors"].items()]
        lines.append("")
    return "\n".join(lines)
