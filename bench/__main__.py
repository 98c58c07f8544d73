"""`python -m bench [--quick] [--out bench/results] [--only hop,idle]`: the benchmark suite, one command.

Runs every scenario on this machine, side by side, prints the tables and the
targets (PASS/FAIL), and writes `<out>/<full|quick>.json` (everything
measured) and `<out>/<full|quick>.md` (the summary with machine info). A
scenario that fails is recorded with its error and the others still run.
`--only` runs the named scenarios (SCENARIOS) and writes
`<stem>-<names>.json`/`.md`, so a partial run never overwrites a whole one.
Processes are started on loopback and stopped at the end; logs go to a
temporary folder (kept with `--keep-logs`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.settings import Settings

log = logging.getLogger("bench")

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Every scenario, in the order a whole run takes them; idle, hop, tracing and streaming share one set of processes.
SCENARIOS: tuple[str, ...] = ("contract", "idle", "hop", "tracing", "streaming", "http_json", "control_plane")
_NEEDS_HOP_RIG = frozenset({"idle", "hop", "tracing", "streaming"})


def _json_safe(value: Any) -> Any:
    """NaN and infinity become null: JSON has no spelling for them."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _guarded(results: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    started = time.monotonic()
    log.info("scenario %s: start", name)
    try:
        results[name] = work()
    except Exception as exc:
        log.exception("scenario %s failed", name)
        results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    log.info("scenario %s: %.0f s", name, time.monotonic() - started)


def _transcoding_share(results: dict[str, Any]) -> None:
    """HTTP/JSON added p50 minus the gRPC passthrough hop's added p50 at the same rate."""
    http = results.get("http_json") or {}
    rate = http.get("rate")
    added = (http.get("added") or {}).get("p50_ms")
    if rate is None or added is None:
        return
    paths = (results.get("hop") or {}).get("paths") or {}
    key = str(int(rate)) if float(rate).is_integer() else str(rate)
    try:
        sidecar = paths["sidecar"]["rates"][key]["load"]["latency"]["p50_ms"]
        direct = paths["direct"]["rates"][key]["load"]["latency"]["p50_ms"]
    except KeyError:
        return
    http["transcoding_over_passthrough_p50_ms"] = added - (sidecar - direct)


def parse_only(value: str) -> tuple[str, ...]:
    """'hop,idle' -> ('idle', 'hop') in suite order; raises ValueError naming an unknown scenario."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(SCENARIOS))
    if unknown or not names:
        raise ValueError(
            f"unknown scenario {', '.join(unknown) or repr(value)}: expected some of {', '.join(SCENARIOS)}"
        )
    return tuple(name for name in SCENARIOS if name in names)


def run_suite(settings: Settings, only: tuple[str, ...] = SCENARIOS) -> dict[str, Any]:
    from bench.scenarios import contract, control_plane, hop, http_json, idle, streaming, tracing

    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "settings": settings.to_dict(),
        "scenarios": list(only),
    }
    began = time.monotonic()
    if "contract" in only:
        _guarded(results, "contract", lambda: contract.run(settings.contract_s))
    with contextlib.ExitStack() as stack:
        rig = None
        if _NEEDS_HOP_RIG & set(only):
            try:
                rig = stack.enter_context(hop.hop_rig(settings, stack))
            except Exception as exc:
                log.exception("cannot start the hop benchmark's processes")
                results.setdefault("errors", {})["hop"] = f"start-up: {type(exc).__name__}: {str(exc)[:2000]}"
        if rig is not None:
            if "idle" in only:
                _guarded(results, "idle", lambda: idle.measure(rig))
            if "hop" in only:
                _guarded(results, "hop", lambda: hop.run(settings, rig))
            if "tracing" in only and settings.tracing:
                _guarded(results, "tracing", lambda: tracing.run(settings, rig))
            if "streaming" in only:
                _guarded(results, "streaming", lambda: streaming.run(settings, rig))
    if "http_json" in only:
        _guarded(results, "http_json", lambda: http_json.run(settings))
    if "control_plane" in only:
        _guarded(results, "control_plane", lambda: control_plane.run(settings))
    _transcoding_share(results)
    results["machine"]["load_average_end"] = machine.load_average()
    results["elapsed_s"] = time.monotonic() - began
    return results


def write_report(results: dict[str, Any], out: Path, stem: str) -> None:
    """Targets into the results, then `<stem>.json`, `<stem>.md` and the tables on standard output."""
    targets = report.evaluate_targets(results)
    results["targets"] = [t.to_dict() for t in targets]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    (out / f"{stem}.md").write_text(report.markdown(results, targets))
    for table in report.tables(results, targets):
        print(report.text(table), end="\n\n")
    print(f"results: {out / (stem + '.json')}, {out / (stem + '.md')}")


def render(path: Path) -> int:
    """Re-evaluates targets and rewrites the summary of a stored run (after a change to the report)."""
    results = json.loads(path.read_text())
    write_report(results, path.parent, path.stem)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer streams and ADS clients (< 3 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and markdown results")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the sidecar")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed at the end)")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}")
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="run nothing: report again from a results file"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render)
    only = SCENARIOS
    if args.only is not None:
        try:
            only = parse_only(args.only)
        except ValueError as exc:
            parser.error(f"--only: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-"))
    settings = Settings.quick_run(work) if args.quick else Settings.full(work)
    if args.no_profile:
        from dataclasses import replace

        settings = replace(settings, profile=False)
    try:
        results = run_suite(settings, only)
        stem = "quick" if settings.quick else "full"
        if only != SCENARIOS:
            stem += "-" + "-".join(only)
        raw_profile = ((results.get("hop") or {}).get("profile") or {}).get("raw")
        if raw_profile and Path(raw_profile).exists():
            args.out.mkdir(parents=True, exist_ok=True)
            kept = args.out / f"{stem}-sidecar-profile.txt"
            shutil.copyfile(raw_profile, kept)
            results["hop"]["profile"]["raw"] = str(kept)
        write_report(results, args.out, stem)
    finally:
        if args.keep_logs:
            print(f"logs: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
