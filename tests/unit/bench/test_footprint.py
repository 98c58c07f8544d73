"""Reading CPU and memory of a process, with psutil and from /proc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import footprint


@pytest.fixture(params=["psutil", "proc"])
def source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "proc":
        monkeypatch.setattr(footprint, "psutil", None)
    elif footprint.psutil is None:
        pytest.skip("psutil is not installed")
    return str(request.param)


def test_readings_of_this_process(source: str):
    assert footprint.cpu_seconds(os.getpid()) > 0
    assert footprint.rss_bytes(os.getpid()) > 10 * 1024 * 1024
    assert footprint.source().startswith("psutil" if source == "psutil" else "/proc")
    assert footprint.machine_busy_seconds() > 0


def test_watch_measures_a_busy_child_and_survives_its_exit(source: str):
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.3: pass"])
    with footprint.Watch({"child": child.pid, "me": os.getpid()}, interval=0.01) as watch:
        child.wait(10)
    # The child is gone (a zombie reaped by wait): only this process is measured at the end.
    assert "me" in watch.usage
    me = watch.usage["me"]
    assert me.wall_s > 0 and me.rss_peak_mb >= me.rss_start_mb > 0
    assert me.to_dict()["cores"] == me.cores
    assert watch.machine_cores >= 0


def test_reading_a_process_that_does_not_exist_raises(source: str):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    with pytest.raises(footprint._GONE):
        footprint.rss_bytes(child.pid)
