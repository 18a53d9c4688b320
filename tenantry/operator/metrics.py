"""The operator's Prometheus metrics; every label has a small, fixed set of values."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "tenantry_operator_reconciles_total",
    "Reconcile passes, by kind and outcome (changed, unchanged, invalid, error).",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "tenantry_operator_reconcile_seconds",
    "Duration of one reconcile pass, by kind.",
    ["kind"],
)
WRITES = Counter(
    "tenantry_operator_writes_total",
    "Write calls made to the Kubernetes API, by kind of object written.",
    ["object"],
)
API_CALLS = Counter(
    "tenantry_operator_api_calls_total",
    "Calls made to the Kubernetes API by the reconcilers, by verb and outcome.",
    ["verb", "outcome"],
)
API_SECONDS = Histogram(
    "tenantry_operator_api_call_seconds",
    "Latency of calls to the Kubernetes API, by verb.",
    ["verb"],
)
MANAGED = Gauge(
    "tenantry_operator_managed_objects",
    "Objects the operator currently manages, by kind.",
    ["kind"],
)
