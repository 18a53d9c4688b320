"""Prometheus metrics of the API, on a registry of the app's own (so tests can build many
apps in one process). Label values are bounded: the HTTP method from a fixed set, the route
*template* (never the raw path), the status class, and fixed decision names. A tenant label
exists only when `api.tenant_metrics_label` is set, bounded by the number of tenants.

The three series every request touches (requests, latency, limiter decisions) are tallied in
plain numbers and read when scraped (`TalliedCounter`, `TalliedHistogram`); the rest are
prometheus_client's own metric types.
"""

from __future__ import annotations

from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class _Tallied(Collector):
    """A labelled metric kept in plain numbers and read when scraped.

    Each label set has a cell, a list of numbers its user updates in place (`cell[0] += 1`):
    no lock and no call per update, where prometheus_client's own types take a lock (see
    docs/benchmarks.md). For a single thread only: the API counts from its event loop.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        width: int,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._width = width
        self._cells: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def cell(self, *labels: str) -> list[float]:
        """The numbers of one label set (created at 0 on first use)."""
        cell = self._cells.get(labels)
        if cell is None:
            cell = self._cells[labels] = [0.0] * self._width
        return cell

    @abstractmethod
    def _empty(self) -> Metric:
        """The metric family, without samples."""

    def describe(self) -> list[Metric]:
        return [self._empty()]


class TalliedCounter(_Tallied):
    """A counter: a label set's cell holds its count."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        super().__init__(name, documentation, labelnames, registry, 1)

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for labels, cell in list(self._cells.items()):
            family.add_metric(labels, cell[0])
        yield family


class TalliedHistogram(_Tallied):
    """A histogram: a label set's cell holds a count per bucket (the last one for values
    above every bound) and, at the end, the sum of the values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames, registry, len(self._bounds) + 2)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def observe(self, cell: list[float], value: float) -> None:
        cell[bisect_left(self._bounds, value)] += 1
        cell[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for labels, cell in list(self._cells.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(repr, self._bounds), "+Inf"), cell, strict=False):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(labels, buckets, sum_value=cell[-1])
        yield family


class ApiMetrics:
    def __init__(self, *, tenant_label: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenant_label = tenant_label
        self.requests = TalliedCounter(
            "tenantry_api_requests",
            "HTTP requests by method, route template and status class.",
            ["method", "route", "status_class"],
            self.registry,
        )
        self.latency = TalliedHistogram(
            "tenantry_api_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["method", "route"],
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            self.registry,
        )
        self.tenant_requests = Counter(
            "tenantry_api_tenant_requests",
            "Authenticated requests per tenant (only when api.tenant_metrics_label is set).",
            ["tenant"],
            registry=self.registry,
        )
        self.limiter_decisions = TalliedCounter(
            "tenantry_api_limiter_decisions",
            "Limiter decisions: where they were made (redis, cache, local) and the outcome.",
            ["source", "decision"],
            self.registry,
        )
        self.quota_rejections = Counter(
            "tenantry_api_quota_rejections",
            "Requests refused because the tenant's monthly quota is used up.",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "tenantry_api_auth_failures",
            "Refused authentications by reason (the problem type's slug).",
            ["reason"],
            registry=self.registry,
        )
        self.refusals_not_audited = Counter(
            "tenantry_api_refusals_not_audited",
            "Sampled key refusals that did not reach the audit trail, by cause.",
            ["cause"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "tenantry_api_redis_errors",
            "Redis calls that failed or timed out, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.fail_open = Counter(
            "tenantry_api_fail_open_decisions",
            "Requests admitted without Redis because the tenant's failure mode is open.",
            registry=self.registry,
        )
        self.usage_held = Gauge(
            "tenantry_api_usage_held_locally",
            "Admitted requests counted in process, waiting to be merged into Redis.",
            registry=self.registry,
        )
        self.usage_dropped = Counter(
            "tenantry_api_usage_dropped",
            "Admitted requests whose usage could not be kept (local store full).",
            registry=self.registry,
        )
        self.usage_merged = Counter(
            "tenantry_api_usage_merged",
            "Locally counted requests merged into Redis once it was back.",
            registry=self.registry,
        )
        self.usage_cache = Counter(
            "tenantry_api_usage_cache",
            "`/v1/usage` answers served from the Redis cache (hit) or computed (miss).",
            ["result"],
            registry=self.registry,
        )
        self.registry_tenants = Gauge(
            "tenantry_api_registry_tenants",
            "Tenants in the registry snapshot being served.",
            registry=self.registry,
        )
        self.registry_age = Gauge(
            "tenantry_api_registry_age_seconds",
            "Seconds since the registry source last confirmed the snapshot is current.",
            registry=self.registry,
        )
        self.registry_rejected = Gauge(
            "tenantry_api_registry_rejected",
            "Registry snapshots refused as invalid (the last good one kept serving).",
            registry=self.registry,
        )
        self.registry_version = Info(
            "tenantry_api_registry",
            "Version of the registry snapshot being served.",
            registry=self.registry,
        )


def status_class(status: int) -> str:
    return STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
