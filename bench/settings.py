"""How long and how hard each scenario runs: the full suite and `--quick`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Knobs of one suite run; `full()` fits 15 minutes on 2 cores, `quick()` 3."""

    quick: bool
    work: Path
    # 1. hop
    rates: tuple[float, ...] = (200.0, 1000.0)
    fixed_s: float = 10.0
    saturation_s: float = 10.0
    warmup_s: float = 2.0
    saturation_clients: int = 2
    saturation_streams: int = 32
    payload_bytes: int = 1000
    reply_bytes: int = 1024
    python_client: bool = True
    # Each run of the Python generator beside h2load (the mTLS and proxyless comparisons), fixed rate or saturation.
    python_s: float = 10.0
    # 1c. tracing cost (a fresh sidecar per sampling setting)
    tracing: bool = True
    # 2. HTTP/JSON
    http_rate: float = 200.0
    http_s: float = 8.0
    # 3. streaming
    ttfm_calls: int = 300
    streams: int = 10_000
    stream_open_rate: float = 500.0
    stream_hold_s: float = 30.0
    stream_interval_ms: int = 5000
    # 4. control plane
    ads_clients: tuple[int, ...] = (1000, 5000, 10_000)
    ads_processes: int = 4
    ads_agents: int = 5
    # 6. contract
    contract_s: float = 0.5
    # hot spots
    profile: bool = True
    profile_s: float = 8.0

    @classmethod
    def full(cls, work: Path) -> Settings:
        return cls(quick=False, work=work)

    @classmethod
    def quick_run(cls, work: Path) -> Settings:
        return replace(
            cls(quick=True, work=work),
            rates=(200.0, 1000.0),
            fixed_s=3.0,
            saturation_s=3.0,
            warmup_s=1.0,
            python_client=True,
            python_s=1.5,
            http_s=3.0,
            ttfm_calls=100,
            streams=1000,
            stream_hold_s=4.0,
            stream_interval_ms=1000,
            ads_clients=(1000,),
            ads_processes=2,
            contract_s=0.2,
            profile=False,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["work"] = str(self.work)
        return data
