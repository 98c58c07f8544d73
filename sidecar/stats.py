"""Prometheus metrics of one sidecar, with bounded label cardinality.

Every metric lives in the `CollectorRegistry` of one `SidecarStats` (never
prometheus-client's global registry), so several sidecars can run in one test
process and the admin endpoint (`/metrics`) exposes exactly this sidecar.
Names and labels are the canonical ones of ARCHITECTURE.md §5; dashboards and
alerts depend on them.

The hot path never resolves labels: `SidecarStats.route(...)` returns a
`RouteStats` whose children are bound once per label tuple (and per gRPC code
on first use), so recording a call is a few dict lookups and two observations.
Label values that come from traffic (callers, targets, versions, methods,
models, reasons) are admitted up to `max_label_values` distinct values per
label; later newcomers are recorded as "other" and counted in
`agentmesh_label_overflow_total{label}`, so a flood of made-up method names
cannot grow the exposition without bound.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

DEFAULT_MAX_LABEL_VALUES = 200
# Agent calls run from milliseconds (a lookup) to minutes (an LLM chain).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OTHER = "other"
UNKNOWN = "unknown"
# OpenMetrics caps an exemplar's label set at 128 characters; a W3C trace id has 32.
_MAX_TRACE_ID = 64

XDS_TYPE_LABELS = ("lds", "rds", "cds", "eds")

_ROUTE_LABELS = ("direction", "source_agent", "destination_agent", "destination_version", "rpc_method")

# "OK", "UNAVAILABLE", ... and their numeric forms "0", "14", ... -> canonical name.
_GRPC_CODES: dict[str, str] = {code.name: code.name for code in grpc.StatusCode} | {
    str(code.value[0]): code.name for code in grpc.StatusCode
}


def grpc_code_label(code: str) -> str:
    """The canonical grpc_code label value: a status name such as "OK"; anything unknown is "UNKNOWN"."""
    return _GRPC_CODES.get(code) or _GRPC_CODES.get(code.upper(), "UNKNOWN")


class _LabelGuard:
    """Admits up to `limit` distinct values of one label, then answers "other"."""

    __slots__ = ("_limit", "_overflow", "_seen")

    def __init__(self, limit: int, overflow: Callable[[], None]) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._overflow = overflow

    def admit(self, value: str) -> tuple[str, bool]:
        """Returns (label value, admitted); admitted is False when folded into "other"."""
        value = value or UNKNOWN
        if value in self._seen:
            return value, True
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value, True
        self._overflow()
        return OTHER, False


class RouteStats:
    """Pre-bound metric children of one (direction, source, destination, version, method).

    Call `start()` when the call begins and `finish(...)` exactly once when it
    ends, whatever the outcome.
    """

    __slots__ = ("_by_code", "_in_flight", "_labels", "_stats")

    def __init__(self, stats: SidecarStats, labels: tuple[str, str, str, str, str]) -> None:
        self._stats = stats
        self._labels = labels
        self._in_flight = stats._in_flight.labels(labels[0], labels[2])
        self._by_code: dict[str, tuple[Counter, Histogram]] = {}

    @property
    def labels(self) -> dict[str, str]:
        """The label values this route records under (after cardinality folding)."""
        return dict(zip(_ROUTE_LABELS, self._labels, strict=True))

    def start(self) -> None:
        """One more call in flight."""
        self._in_flight.inc()

    def finish(self, grpc_code: str, duration_s: float, trace_id: str | None = None) -> None:
        """Ends a call: in flight -1, counts it and observes its duration.

        `grpc_code` is a status name ("OK") or number ("0"). A `trace_id`
        (hex, as in traceparent) becomes the histogram exemplar, shown only in
        the OpenMetrics exposition.
        """
        children = self._by_code.get(grpc_code)
        if children is None:
            children = self._bind(grpc_code)
        self._in_flight.dec()
        counter, histogram = children
        counter.inc()
        if trace_id and len(trace_id) <= _MAX_TRACE_ID:
            histogram.observe(duration_s, {"trace_id": trace_id})
        else:
            histogram.observe(duration_s)

    def _bind(self, grpc_code: str) -> tuple[Counter, Histogram]:
        code = grpc_code_label(grpc_code)
        children = self._by_code.get(code)
        if children is None:
            labels = (*self._labels, code)
            children = (self._stats._requests.labels(*labels), self._stats._duration.labels(*labels))
            self._by_code[code] = children
        if grpc_code in _GRPC_CODES:  # cache only well-formed spellings: the cache stays bounded
            self._by_code[grpc_code] = children
        return children

    def __repr__(self) -> str:
        return f"RouteStats({', '.join(f'{k}={v!r}' for k, v in self.labels.items())})"


class SidecarStats:
    """Every Prometheus metric of one sidecar, in its own registry."""

    def __init__(
        self, *, agent: str, version: str, team: str, max_label_values: int = DEFAULT_MAX_LABEL_VALUES
    ) -> None:
        if max_label_values < 1:
            raise ValueError(f"max_label_values must be at least 1, got {max_label_values}")
        self.agent = agent
        self.version = version
        self.team = team
        self.max_label_values = max_label_values
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "agentmesh_requests", "Calls handled, by outcome.", (*_ROUTE_LABELS, "grpc_code"), registry=r
        )
        self._duration = Histogram(
            "agentmesh_request_duration_seconds",
            "Call duration in seconds, from the first byte received to the status sent.",
            (*_ROUTE_LABELS, "grpc_code"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            "agentmesh_requests_in_flight",
            "Calls started and not yet finished.",
            ("direction", "destination_agent"),
            registry=r,
        )
        self._violations = Counter(
            "agentmesh_contract_violations",
            "Messages that broke the agent's contract.",
            ("agent", "rpc_method", "side", "reason"),
            registry=r,
        )
        self._healthy = Gauge(
            "agentmesh_upstream_healthy",
            "1 while the agent passes its health check, else 0.",
            ("agent", "version"),
            registry=r,
        )
        self._tokens = Counter(
            "agentmesh_tokens",
            "Model tokens reported by the agent.",
            ("agent", "team", "model", "token_type"),
            registry=r,
        )
        self._retries = Counter(
            "agentmesh_retries",
            "Outbound attempts retried, by the status that caused the retry.",
            ("destination_agent", "rpc_method", "reason"),
            registry=r,
        )
        self._denied = Counter(
            "agentmesh_access_denied",
            "Inbound calls refused by access policy.",
            ("destination_agent", "source_agent", "policy"),
            registry=r,
        )
        self._plaintext = Counter(
            "agentmesh_inbound_plaintext_requests",
            "Inbound calls that arrived without TLS, so without a caller identity (permissive mode).",
            ("agent",),
            registry=r,
        )
        self._plaintext_child = self._plaintext.labels(agent)
        self._slo_target = Gauge(
            "agentmesh_slo_availability_target",
            "The agent's availability objective from its manifest (burn-rate alerts read it).",
            ("agent",),
            registry=r,
        )
        self._overflow = Counter(
            "agentmesh_label_overflow",
            'Label values recorded as "other" because the label reached its distinct-value limit.',
            ("label",),
            registry=r,
        )
        self._xds_connected = Gauge(
            "agentmesh_xds_connected", "1 while the sidecar's ADS stream to the control plane is up.", registry=r
        )
        self._xds_rejected = Counter(
            "agentmesh_xds_rejected",
            "xDS responses the sidecar rejected (NACKed), by type (lds, rds, cds, eds).",
            ("type",),
            registry=r,
        )
        self._xds_from_disk = Gauge(
            "agentmesh_xds_config_from_disk",
            "1 while the sidecar runs on the xDS config it saved to disk, the control plane being unreachable.",
            registry=r,
        )
        for type_label in XDS_TYPE_LABELS:
            self._xds_rejected.labels(type_label)
        self._guards = {
            label: _LabelGuard(max_label_values, self._overflow.labels(label).inc)
            for label in (
                "source_agent",
                "destination_agent",
                "destination_version",
                "rpc_method",
                "model",
                "reason",
                "policy",
            )
        }
        self._routes: dict[tuple[str, str, str, str, str], RouteStats] = {}
        self._bound_routes: dict[tuple[str, str, str, str, str], RouteStats] = {}
        self._violation_children: dict[tuple[str, str, str], Counter] = {}
        self._token_children: dict[str, tuple[Counter, Counter]] = {}
        self._healthy_child: Gauge | None = None

    def route(
        self, *, direction: str, source_agent: str, destination_agent: str, destination_version: str, rpc_method: str
    ) -> RouteStats:
        """The pre-bound children for one call shape; cached, so cheap to call per request.

        `direction` is "inbound" or "outbound"; `rpc_method` the full path
        "/pkg.Service/Method".
        """
        key = (direction, source_agent, destination_agent, destination_version, rpc_method)
        found = self._routes.get(key)
        if found is not None:
            return found
        return self._resolve_route(key)[0]

    def resolve_route(
        self, *, direction: str, source_agent: str, destination_agent: str, destination_version: str, rpc_method: str
    ) -> tuple[RouteStats, bool]:
        """`route(...)`, and whether callers may keep the result for these labels.

        False when a label value was folded into "other": each call must then
        come back here, so its overflow is counted again.
        """
        key = (direction, source_agent, destination_agent, destination_version, rpc_method)
        found = self._routes.get(key)
        if found is not None:
            return found, True
        return self._resolve_route(key)

    def _resolve_route(self, key: tuple[str, str, str, str, str]) -> tuple[RouteStats, bool]:
        direction, source_agent, destination_agent, destination_version, rpc_method = key
        source, ok_source = self._guards["source_agent"].admit(source_agent)
        destination, ok_destination = self._guards["destination_agent"].admit(destination_agent)
        version, ok_version = self._guards["destination_version"].admit(destination_version)
        method, ok_method = self._guards["rpc_method"].admit(rpc_method)
        labels = (direction, source, destination, version, method)
        stats = self._bound_routes.get(labels)
        if stats is None:
            stats = self._bound_routes[labels] = RouteStats(self, labels)
        admitted = ok_source and ok_destination and ok_version and ok_method
        if admitted:
            # Folded keys are not cached: each later call counts its overflow again.
            self._routes[key] = stats
        return stats, admitted

    def contract_violation(self, rpc_method: str, side: str, reason: str) -> None:
        """Counts one message that broke the contract; `side` is "request" or "response"."""
        key = (rpc_method, side, reason)
        child = self._violation_children.get(key)
        if child is None:
            method, ok_method = self._guards["rpc_method"].admit(rpc_method)
            label_reason, ok_reason = self._guards["reason"].admit(reason)
            child = self._violations.labels(
                self.agent, method, side if side in ("request", "response") else OTHER, label_reason
            )
            if ok_method and ok_reason and side in ("request", "response"):
                self._violation_children[key] = child
        child.inc()

    def retry(self, destination_agent: str, rpc_method: str, reason: str) -> None:
        """Counts one retried attempt.

        `reason` is the retry_on name of the status ("unavailable").
        """
        self._retries.labels(
            self._guards["destination_agent"].admit(destination_agent)[0],
            self._guards["rpc_method"].admit(rpc_method)[0],
            self._guards["reason"].admit(reason)[0],
        ).inc()

    def access_denied(self, source_agent: str, policy: str) -> None:
        """Counts one inbound call refused by the access policy named `policy`."""
        self._denied.labels(
            self.agent, self._guards["source_agent"].admit(source_agent)[0], self._guards["policy"].admit(policy)[0]
        ).inc()

    def inbound_plaintext(self) -> None:
        """Counts one inbound call that arrived without TLS."""
        self._plaintext_child.inc()

    def set_slo_target(self, availability: float) -> None:
        self._slo_target.labels(self.agent).set(availability)

    def set_upstream_healthy(self, healthy: bool) -> None:
        """Publishes the agent's health-check result (1 healthy, 0 not)."""
        if self._healthy_child is None:
            self._healthy_child = self._healthy.labels(self.agent, self.version)
        self._healthy_child.set(1 if healthy else 0)

    def record_tokens(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """Adds the model tokens one call reported; negative counts are ignored."""
        children = self._token_children.get(model)
        if children is None:
            label, admitted = self._guards["model"].admit(model)
            children = (
                self._tokens.labels(self.agent, self.team, label, "input"),
                self._tokens.labels(self.agent, self.team, label, "output"),
            )
            if admitted:
                self._token_children[model] = children
        if input_tokens > 0:
            children[0].inc(input_tokens)
        if output_tokens > 0:
            children[1].inc(output_tokens)

    def set_xds_connected(self, connected: bool) -> None:
        """Publishes whether the ADS stream is up (1) or not (0)."""
        self._xds_connected.set(1 if connected else 0)

    def xds_rejected(self, type_label: str) -> None:
        """Counts one NACK sent; `type_label` is lds, rds, cds or eds (anything else counts as "other")."""
        self._xds_rejected.labels(type_label if type_label in XDS_TYPE_LABELS else OTHER).inc()

    def set_xds_config_from_disk(self, from_disk: bool) -> None:
        """Publishes whether the config in use was loaded from disk (1) rather than received over xDS (0)."""
        self._xds_from_disk.set(1 if from_disk else 0)

    def exposition(self, accept_header: str) -> tuple[bytes, str]:
        """The registry rendered for a scrape: (body, content type).

        OpenMetrics (with `trace_id` exemplars) when `accept_header` asks for
        `application/openmetrics-text`, else the Prometheus text format.
        """
        encoder, content_type = choose_encoder(accept_header)
        return encoder(self.registry), content_type

    def __repr__(self) -> str:
        return f"SidecarStats(agent={self.agent!r}, version={self.version!r}, team={self.team!r})"
