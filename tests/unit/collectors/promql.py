"""The canonical metric names (ARCHITECTURE.md §5) and a small PromQL reader for checking queries against them.

Alerts, recording rules, dashboards and provisioning must only read metrics
the mesh emits under these names. The reader is not a PromQL parser: it strips
strings, label matchers, ranges and grouping clauses, and what is left that is
an identifier not followed by "(" is a metric name. Enough for the queries this
repository writes, and tested on the constructs they use (tests/unit/collectors/test_promql.py).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
COLLECTORS = ROOT / "collectors"
PROMETHEUS_DIR = COLLECTORS / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))

# name -> (type, labels). Histograms also stand for their _bucket, _count and _sum series.
CANONICAL: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels.split()))
    for name, kind, labels in (
        (
            "agentmesh_requests_total",
            "counter",
            "direction source_agent destination_agent destination_version rpc_method grpc_code",
        ),
        (
            "agentmesh_request_duration_seconds",
            "histogram",
            "direction source_agent destination_agent destination_version rpc_method grpc_code",
        ),
        ("agentmesh_requests_in_flight", "gauge", "direction destination_agent"),
        ("agentmesh_contract_violations_total", "counter", "agent rpc_method side reason"),
        ("agentmesh_access_denied_total", "counter", "destination_agent source_agent policy"),
        ("agentmesh_retries_total", "counter", "destination_agent rpc_method reason"),
        ("agentmesh_upstream_healthy", "gauge", "agent version"),
        ("agentmesh_tokens_total", "counter", "agent team model token_type"),
        ("agentmesh_xds_connected", "gauge", ""),
        ("agentmesh_xds_rejected_total", "counter", "type"),
        ("agentmesh_cp_connected_proxies", "gauge", ""),
        ("agentmesh_cp_push_duration_seconds", "histogram", "type"),
        ("agentmesh_cp_nacks_total", "counter", "type"),
        ("agentmesh_cp_policy_version", "gauge", ""),
        # The availability target of an agent's manifest (slo.availability), read by the SLO rules.
        ("agentmesh_slo_availability_target", "gauge", "agent"),
        # Prometheus' own per-target health.
        ("up", "gauge", ""),
    )
}

# Labels Prometheus adds to every scraped series: job and instance, and the control plane's service discovery labels.
TARGET_LABELS = frozenset({"job", "instance", "agent", "version", "team"})
# Labels PromQL or the rules themselves create.
DERIVED_LABELS = frozenset({"le", "quantile"})

_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "atan2"}
    | {"inf", "nan", "Inf", "NaN"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (recording rule names included)."""
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr)))
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(1)
        rest = text[match.end() :].lstrip()
        if name in _KEYWORDS or rest.startswith("("):
            continue
        names.add(name)
    return names


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    text = _STRING.sub('""', expr)
    labels: set[str] = set()
    for block in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(block))
    for _, names in _GROUPING.findall(text):
        labels.update(name.strip() for name in names.split(",") if name.strip())
    return labels


@functools.cache
def canonical_series() -> frozenset[str]:
    """Every series name the canonical metrics expose (histogram suffixes included)."""
    names: set[str] = set()
    for name, (kind, _) in CANONICAL.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return frozenset(names)


def known_labels() -> frozenset[str]:
    """Every label a query over the canonical metrics may use."""
    labels: set[str] = set(TARGET_LABELS | DERIVED_LABELS)
    for _, names in CANONICAL.values():
        labels.update(names)
    return frozenset(labels)


def load_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    assert isinstance(loaded, dict), f"{path}: not a YAML mapping"
    return loaded


def rules() -> list[dict]:
    """Every rule of collectors/prometheus/rules, with the group name under "group"."""
    found: list[dict] = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            found.extend({**rule, "group": group["name"], "file": path.name} for rule in group["rules"])
    return found


@functools.cache
def recording_rule_names() -> frozenset[str]:
    return frozenset(rule["record"] for rule in rules() if "record" in rule)
