"""Which paths the Python generator drives in the hop scenario, and in what order (nothing is run)."""

from __future__ import annotations

from bench.scenarios.hop import MTLS_PATH, comparison_plan

EVERY_PATH = ("direct", "sidecar", "envoy", "envoy2", "proxyless", MTLS_PATH)


def test_mtls_and_proxyless_comparisons_share_the_direct_runs():
    fixed, saturated = comparison_plan(EVERY_PATH, mtls=True)

    assert fixed == ("direct", "sidecar", MTLS_PATH, "envoy", "proxyless", "envoy2")
    assert saturated == ("direct", "sidecar", MTLS_PATH, "envoy")


def test_without_the_mtls_path_only_the_proxyless_comparison_runs():
    available = [name for name in EVERY_PATH if name != MTLS_PATH]

    assert comparison_plan(available, mtls=False) == (("direct", "proxyless", "envoy2"), ())
    assert comparison_plan(EVERY_PATH, mtls=False) == (("direct", "proxyless", "envoy2"), ())


def test_without_envoy_the_mtls_path_is_compared_with_what_there_is():
    fixed, saturated = comparison_plan(("direct", "sidecar", "proxyless", MTLS_PATH), mtls=True)

    assert fixed == ("direct", "sidecar", MTLS_PATH, "proxyless")
    assert saturated == ("direct", "sidecar", MTLS_PATH)
