"""The quick suite is a smaller full suite."""

from __future__ import annotations

from pathlib import Path

from bench.settings import Settings


def test_quick_is_smaller_in_every_dimension_that_costs_time():
    full, quick = Settings.full(Path("/tmp")), Settings.quick_run(Path("/tmp"))
    assert quick.quick and not full.quick
    assert quick.fixed_s < full.fixed_s and quick.saturation_s < full.saturation_s
    assert quick.streams < full.streams == 10_000
    assert quick.ads_clients == (1000,) and full.ads_clients == (1000, 5000, 10_000)
    assert quick.python_s < full.python_s
    assert not quick.profile
    assert full.to_dict()["work"] == "/tmp"
