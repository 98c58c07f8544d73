"""The suite's command line: choosing scenarios with --only (nothing is run)."""

from __future__ import annotations

import pytest

from bench.__main__ import SCENARIOS, main, parse_only


def test_only_keeps_the_suite_order_and_drops_repeats():
    assert parse_only("streaming, hop,hop") == ("hop", "streaming")
    assert parse_only(",".join(SCENARIOS)) == SCENARIOS


@pytest.mark.parametrize("value", ["hops", "", " , "])
def test_only_names_what_it_does_not_know(value: str):
    with pytest.raises(ValueError, match="expected some of contract, idle, hop"):
        parse_only(value)


def test_bad_only_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "hop,warp"])

    assert exit_info.value.code == 2
    assert "--only: unknown scenario warp" in capsys.readouterr().err
