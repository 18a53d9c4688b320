"""The series every request touches are tallied in plain numbers and read when scraped; what
Prometheus scrapes is the same as prometheus_client's own types would expose, and, with
several processes sharing a folder, the same as one process that counted everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tenantry.api.metrics import ApiMetrics, TalliedCounter, TallyFile


def _samples(metrics: ApiMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_tallied_requests_and_latency_scrape_as_a_counter_and_a_histogram() -> None:
    metrics = ApiMetrics()
    ok = metrics.requests.cell("GET", "/v1/limits", "2xx")
    latency = metrics.latency.cell("GET", "/v1/limits")
    for seconds in (0.0004, 0.001, 0.003, 0.2, 9.0):
        ok[0] += 1
        metrics.latency.observe(latency, seconds)
    samples = _samples(metrics)
    route = (("method", "GET"), ("route", "/v1/limits"))
    assert samples[("tenantry_api_requests_total", (*route, ("status_class", "2xx")))] == 5

    def bucket(le: str) -> float:
        return samples[("tenantry_api_request_duration_seconds_bucket", (("le", le), *route))]

    # Buckets are cumulative and a value on a bound counts in that bucket (`le`).
    assert [bucket(le) for le in ("0.001", "0.0025", "0.005", "0.25", "5.0", "+Inf")] == [
        2,
        2,
        3,
        4,
        4,
        5,
    ]
    assert samples[("tenantry_api_request_duration_seconds_count", route)] == 5
    assert abs(samples[("tenantry_api_request_duration_seconds_sum", route)] - 9.2044) < 1e-9


def test_limiter_decisions_are_counted_per_source_and_outcome() -> None:
    metrics = ApiMetrics()
    metrics.limiter_decisions.cell("redis", "allowed")[0] += 3
    metrics.limiter_decisions.cell("cache", "refused")[0] += 1
    samples = _samples(metrics)
    assert (
        samples[
            ("tenantry_api_limiter_decisions_total", (("decision", "allowed"), ("source", "redis")))
        ]
        == 3
    )
    assert (
        samples[
            ("tenantry_api_limiter_decisions_total", (("decision", "refused"), ("source", "cache")))
        ]
        == 1
    )


def _count(metrics: ApiMetrics, latencies: list[float], decisions: int) -> None:
    ok = metrics.requests.cell("GET", "/v1/limits", "2xx")
    latency = metrics.latency.cell("GET", "/v1/limits")
    for seconds in latencies:
        ok[0] += 1
        metrics.latency.observe(latency, seconds)
    metrics.limiter_decisions.cell("redis", "allowed")[0] += decisions


def test_tallies_of_processes_sharing_a_folder_scrape_as_their_sum(tmp_path: Path) -> None:
    # Two ApiMetrics on one folder stand for two processes: each writes files of its own.
    first, second = ApiMetrics(shared=tmp_path), ApiMetrics(shared=tmp_path)
    _count(first, [0.0004, 0.003], decisions=2)
    _count(second, [0.2, 9.0, 0.001], decisions=3)
    alone = ApiMetrics()
    _count(alone, [0.0004, 0.003, 0.2, 9.0, 0.001], decisions=5)

    tallied = ("tenantry_api_requests", "tenantry_api_request_duration", "tenantry_api_limiter")

    def of_tallies(metrics: ApiMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        samples = _samples(metrics).items()
        return {key: value for key, value in samples if key[0].startswith(tallied)}

    expected = of_tallies(alone)
    assert expected  # the same samples, whichever process is scraped
    assert of_tallies(first) == pytest.approx(expected)  # sums of floats, in another order
    assert of_tallies(second) == pytest.approx(expected)


def test_a_full_tallies_file_is_followed_by_another(tmp_path: Path) -> None:
    class SmallFile(TallyFile):
        FILE_BYTES = 4096

    registry = CollectorRegistry()
    counter = TalliedCounter("tenantry_test", "Test.", ["route"], registry, SmallFile(tmp_path))
    for number in range(200):  # about 40 bytes each: two files and more
        counter.cell(f"/r/{number}")[0] += number
    assert len(list(tmp_path.iterdir())) > 2
    text = generate_latest(registry).decode()
    samples = {
        sample.labels["route"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples == {f"/r/{number}": number for number in range(200)}
