"""promtool on the Prometheus configuration, the rules and their unit tests.

promtool comes with Debian's `prometheus` package (`apt-get install
prometheus`); without it these tests skip, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.collectors.promql import PROMETHEUS_DIR, RULE_FILES, RULE_TEST_FILES

PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def promtool(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=100, check=False
    )


def test_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also checks every rule file it names: all of them.
    for path in RULE_FILES:
        assert f"Checking {path.relative_to(PROMETHEUS_DIR)}" in result.stdout


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", RULE_TEST_FILES, ids=lambda path: path.name)
def test_rule_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against a rule with a wrong threshold."""
    rules_dir = tmp_path / "rules"
    tests_dir = tmp_path / "tests"
    rules_dir.mkdir()
    tests_dir.mkdir()
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8")
        if path.name == "alerts.yml":
            text = text.replace('up{job="agentmesh-control-plane"} == 0', 'up{job="agentmesh-control-plane"} == 2')
        (rules_dir / path.name).write_text(text, encoding="utf-8")
    shutil.copy(PROMETHEUS_DIR / "tests" / "alerts_test.yml", tests_dir)
    result = promtool("test", "rules", "alerts_test.yml", cwd=tests_dir)
    assert result.returncode != 0
    assert "ControlPlaneDown" in result.stdout + result.stderr


def test_invalid_rules_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - record: x\n        expr: sum(\n", encoding="utf-8")
    result = promtool("check", "rules", bad)
    assert result.returncode != 0
