"""Policy models: shape, local rules, rendering and rules spanning one document."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from control_plane.policy.model import (
    DEFAULT_VERSION_HEADER,
    AccessPolicy,
    AgentConfig,
    TrafficPolicy,
    format_duration,
    policy_from_dict,
    policy_to_dict,
    render_yaml,
    semantic_problems,
)


def traffic(spec: dict, name: str = "t") -> TrafficPolicy:
    return TrafficPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def errors(exc: pydantic.ValidationError) -> list[tuple[tuple, str]]:
    return [(e["loc"], e["msg"]) for e in exc.errors()]


@pytest.mark.parametrize(("seconds", "text"), [(0.5, "500ms"), (5.0, "5s"), (120.0, "120s"), (0.0005, "0.5ms")])
def test_durations_render_as_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    policy = traffic({"target": "researcher", "timeout": text})
    assert policy.spec.timeout == pytest.approx(seconds)
    assert policy_to_dict(policy)["spec"]["timeout"] == text


def test_defaults_follow_the_documented_values() -> None:
    spec = traffic({"target": "researcher", "retries": {}}).spec
    assert spec.version_header == DEFAULT_VERSION_HEADER
    assert spec.load_balancing is None
    retries = spec.retries
    assert retries is not None
    assert (retries.attempts, retries.retry_on, retries.retry_non_idempotent) == (2, ("unavailable",), False)
    assert (retries.budget.percent, retries.budget.min_concurrency) == (20.0, 3)
    assert retries.backoff.base_interval == pytest.approx(0.025)
    assert retries.backoff.effective_max == pytest.approx(0.25)
    access = AccessPolicy.model_validate({"metadata": {"name": "a"}, "spec": {"target": "researcher"}})
    # Unset: the mesh-wide policy's default_action, else deny (control_plane.translate.rbac.AgentAccess).
    assert access.spec.default_action is None
    assert not access.spec.mesh_wide


@pytest.mark.parametrize(
    ("spec", "loc", "message"),
    [
        (
            {"target": "researcher", "split": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 20}]},
            ("spec", "split"),
            "Value error, weights must sum to 100, got 110",
        ),
        (
            {"target": "researcher", "split": [{"version": "v1", "weight": 50}, {"version": "v1", "weight": 50}]},
            ("spec", "split"),
            "Value error, version v1 appears twice",
        ),
        (
            {"target": "researcher", "timeout": "soon"},
            ("spec", "timeout"),
            "Value error, invalid duration 'soon': expected a number with a unit, e.g. '500ms', '5s', '2m'",
        ),
        (
            {"target": "researcher", "timeout": "0s"},
            ("spec", "timeout"),
            "Value error, duration must be greater than 0",
        ),
        (
            {"target": "researcher", "retries": {"retry_on": ["unavailable", "5xx"]}},
            ("spec", "retries", "retry_on", 1),
            "Input should be 'cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted' or 'unavailable'",
        ),
        (
            {"target": "Researcher"},
            ("spec", "target"),
            "Value error, 'Researcher' is neither an agent name (e.g. 'researcher') nor a full service name "
            "(e.g. 'research.v1.Researcher')",
        ),
        (
            {
                "target": "researcher",
                "routes": [{"match": [{"headers": [{"name": "x-a", "exact": "1", "prefix": "2"}]}]}],
            },
            ("spec", "routes", 0, "match", 0, "headers", 0),
            "Value error, set exactly one of exact, prefix, regex, present",
        ),
        (
            {"target": "researcher", "routes": [{"match": [{"headers": [{"name": "x-a", "regex": "("}]}]}]},
            ("spec", "routes", 0, "match", 0, "headers", 0, "regex"),
            "Value error, invalid regex '(' (RE2 syntax, as Envoy and gRPC use): missing ): (",
        ),
        (
            # Valid for Python's re, refused by RE2 (Envoy, gRPC): caught here rather than NACKed later.
            {"target": "researcher", "routes": [{"match": [{"headers": [{"name": "x-a", "regex": "(?=b)beta"}]}]}]},
            ("spec", "routes", 0, "match", 0, "headers", 0, "regex"),
            "Value error, invalid regex '(?=b)beta' (RE2 syntax, as Envoy and gRPC use): invalid perl operator: (?=",
        ),
        (
            {"target": "researcher", "retries": {"backoff": {"base_interval": "1s", "max_interval": "100ms"}}},
            ("spec", "retries", "backoff"),
            "Value error, max_interval must not be less than base_interval",
        ),
        ({"target": "researcher", "color": "blue"}, ("spec", "color"), "Extra inputs are not permitted"),
    ],
)
def test_local_rules_name_the_field(spec: dict, loc: tuple, message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        traffic(spec)
    assert (loc, message) in errors(caught.value)


def test_methods_accept_a_leading_slash_and_reject_other_shapes() -> None:
    spec = traffic({"target": "researcher", "routes": [{"match": [{"method": "/research.v1.Researcher/Search"}]}]}).spec
    assert spec.routes[0].match[0].method == "research.v1.Researcher/Search"
    with pytest.raises(pydantic.ValidationError, match="is not a valid method"):
        traffic({"target": "researcher", "routes": [{"match": [{"method": "Search"}]}]})


def test_access_rule_spells_from_as_written() -> None:
    policy = AccessPolicy.model_validate(
        {
            "metadata": {"name": "a"},
            "spec": {"target": "researcher", "rules": [{"action": "allow", "from": {"teams": ["*"]}}]},
        }
    )
    rule = policy.spec.rules[0]
    assert rule.from_ is not None and rule.from_.anyone
    assert "from" in policy_to_dict(policy)["spec"]["rules"][0]
    with pytest.raises(pydantic.ValidationError) as caught:
        AccessPolicy.model_validate(
            {"metadata": {"name": "a"}, "spec": {"target": "researcher", "rules": [{"action": "allow", "from": {}}]}}
        )
    assert errors(caught.value) == [
        (
            ("spec", "rules", 0, "from"),
            "Value error, name at least one agent or team ('*' for anyone), or leave 'from' out",
        )
    ]


def test_agent_config_values_are_header_safe_strings() -> None:
    config = AgentConfig.model_validate(
        {"metadata": {"name": "c"}, "spec": {"target": "researcher", "values": {"model": "small-model"}}}
    )
    assert config.spec.values == {"model": "small-model"}
    with pytest.raises(pydantic.ValidationError) as caught:
        AgentConfig.model_validate(
            {"metadata": {"name": "c"}, "spec": {"target": "researcher", "values": {"Model": "x", "temp": 0.2}}}
        )
    assert errors(caught.value) == [
        (
            ("spec", "values", "Model", "[key]"),
            "Value error, 'Model' is not a valid key (lowercase letters, digits and '-', at most 63), e.g. 'model'",
        ),
        (("spec", "values", "temp"), "Value error, expected a string; quote the value, e.g. '0.2'"),
    ]
    with pytest.raises(pydantic.ValidationError, match="printable ASCII"):
        AgentConfig.model_validate({"metadata": {"name": "c"}, "spec": {"target": "r", "values": {"k": "a\nb"}}})


def test_render_leaves_defaults_out_and_round_trips() -> None:
    policy = traffic(
        {
            "target": "researcher",
            "split": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
            "retries": {"attempts": 2, "per_try_timeout": "1500ms"},
            "version_header": None,
        },
        name="canary",
    )
    text = render_yaml(policy)
    assert text.startswith("apiVersion: agentmesh.io/v1\nkind: TrafficPolicy\nmetadata:\n  name: canary\n")
    assert "attempts" not in text  # the default
    assert "per_try_timeout: 1500ms" in text
    assert "version_header: null" in text  # differs from the default, so it stays
    assert policy_from_dict(yaml.safe_load(text)) == policy


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind 'Gateway'"):
        policy_from_dict({"kind": "Gateway"})


def test_semantic_problems_name_exact_paths() -> None:
    policy = traffic(
        {
            "target": "research.v1.Researcher",
            "version_header": "x-pin",
            "sticky": {"header": "x-session"},
            "load_balancing": "round_robin",
            "timeout": "2s",
            "split": [{"version": "v1", "weight": 100}],
            "routes": [
                {"name": "all", "retries": {"attempts": 6, "per_try_timeout": "3s", "budget": {"percent": 5}}},
                {"name": "all", "match": [{"method": "writing.v1.Writer/Draft"}]},
            ],
        }
    )
    found = [(p.path, p.reason, p.severity) for p in semantic_problems(policy)]
    assert found == [
        (("spec", "split", 0, "agent"), "a service target splits across agents: set 'agent'", "error"),
        (
            ("spec", "version_header"),
            "version pinning applies to agent targets; remove it for a service",
            "error",
        ),
        (("spec", "load_balancing"), "sticky sessions use ring-hash balancing; remove load_balancing", "error"),
        (
            ("spec", "routes", 0, "retries", "budget"),
            "the retry budget is per target: set it in spec.retries",
            "error",
        ),
        (("spec", "routes", 1, "name"), "route name 'all' is used by routes[0]", "error"),
        (("spec", "routes", 1), "unreachable: routes[0] already matches every request", "warning"),
        (
            ("spec", "routes", 1, "match", 0, "method"),
            "'writing.v1.Writer/Draft' is not a method of research.v1.Researcher, so it never matches",
            "error",
        ),
        (("spec", "routes", 0, "retries", "attempts"), "gRPC clients cap calls at 5 attempts (4 retries)", "warning"),
        (
            ("spec", "routes", 0, "retries", "per_try_timeout"),
            "not shorter than the timeout (2s), so no retry can happen in time",
            "warning",
        ),
    ]


def test_agent_target_split_needs_versions_only() -> None:
    policy = traffic({"target": "researcher", "split": [{"agent": "writer", "weight": 100}]})
    assert [(p.path, p.reason) for p in semantic_problems(policy)] == [
        (("spec", "split", 0, "agent"), "an agent target splits across its versions: remove 'agent'"),
        (("spec", "split", 0, "version"), "an agent target splits across versions: set 'version'"),
    ]


def test_allow_rules_under_default_allow_are_flagged() -> None:
    policy = AccessPolicy.model_validate(
        {
            "metadata": {"name": "a"},
            "spec": {"target": "researcher", "default_action": "allow", "rules": [{"action": "allow"}]},
        }
    )
    assert [(p.path, p.severity) for p in semantic_problems(policy)] == [(("spec", "rules", 0, "action"), "warning")]
