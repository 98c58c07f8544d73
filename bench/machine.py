"""What the numbers were measured on: CPU, cores, memory, versions, and how busy the machine was."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench import footprint, h2load
from bench.topology import envoy_version
from tests.integration.procs import envoy_binary


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as lines:
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _h2load_version() -> str:
    executable = h2load.binary()
    if executable is None:
        return "not installed"
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip().replace("h2load ", "") or "unknown"


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def describe() -> dict[str, Any]:
    binary = envoy_binary()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "protovalidate": _version("protovalidate"),
        "envoy": envoy_version(binary) if binary is not None else "not installed",
        "h2load": _h2load_version(),
        "resource_readings": footprint.source(),
        "load_average_start": load_average(),
    }
