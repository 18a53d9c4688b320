"""Prometheus metrics of the API, on a registry of the app's own (so tests can build many
apps in one process). Label values are bounded: the HTTP method from a fixed set, the route
*template* (never the raw path), the status class, and fixed decision names. A tenant label
exists only when `api.tenant_metrics_label` is set, bounded by the number of tenants.

The three series every request touches (requests, latency, limiter decisions) are tallied in
plain numbers and read when scraped (`TalliedCounter`, `TalliedHistogram`); the rest are
prometheus_client's own metric types.

With several API processes per pod (`api.workers > 1`), every process leaves its samples in
one folder (`tenantry.multiprocess_metrics`) and a scrape, whichever process answers it, sums
them: prometheus_client's multiprocess mode for its own types, and `TallyFile` for the
tallies, whose numbers then live in that folder's memory-mapped files instead of lists.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from abc import abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from tenantry.multiprocess_metrics import TALLIES_SUFFIX

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Cell(Protocol):
    """The numbers of one label set, updated in place (`cell[0] += 1`): a list of floats in
    one process, a slice of a memory-mapped file (`TallyFile`) with several."""

    def __getitem__(self, index: int, /) -> float: ...

    def __setitem__(self, index: int, value: float, /) -> None: ...


_USED = struct.Struct("<Q")  # bytes of the file in use, the header
_ENTRY = struct.Struct("<II")  # an entry's key length and width in numbers, then key and numbers


class TallyFile:
    """One process's tallies in the pod's shared folder, in files `tallies_<pid>_<n>`.

    An entry is a label set's key (JSON of the metric name and label values), padded to 8
    bytes, then its numbers (doubles); the header, the bytes in use, grows only once an entry
    is whole, so a reader in another process sees whole entries. Updating a number is a
    store into the mapped page (a little slower than into a list, and no lock either): the
    per-request cost stays `cell[0] += 1`. A full file is followed by the next `n`; a file
    is never reopened, so a process that reuses a dead one's pid adds to its counts instead
    of overwriting them. Counters must outlive their process: the files stay until the
    folder is emptied at the pod's next start.
    """

    FILE_BYTES = 256 * 1024  # sparse: pages cost memory only once written

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pid = os.getpid()
        self._number = 0
        self._page = self._open_next()
        self._numbers = memoryview(self._page).cast("d")
        self._used = _USED.size

    def _open_next(self) -> mmap.mmap:
        while True:
            path = self.folder / f"tallies_{self._pid}_{self._number}{TALLIES_SUFFIX}"
            self._number += 1
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                os.ftruncate(descriptor, self.FILE_BYTES)
                return mmap.mmap(descriptor, self.FILE_BYTES)
            finally:
                os.close(descriptor)

    def cell(self, name: str, labels: tuple[str, ...], width: int) -> Cell:
        key = json.dumps([name, labels]).encode()
        start = self._used + _ENTRY.size + len(key)
        start += -start % 8
        end = start + width * 8
        if end > self.FILE_BYTES:
            self._page = self._open_next()
            self._numbers = memoryview(self._page).cast("d")
            self._used = _USED.size
            return self.cell(name, labels, width)
        _ENTRY.pack_into(self._page, self._used, len(key), width)
        offset = self._used + _ENTRY.size
        self._page[offset : offset + len(key)] = key
        self._used = end
        self._page[0 : _USED.size] = _USED.pack(end)
        numbers: Cell = self._numbers[start // 8 : end // 8]
        return numbers


def tally_files(folder: Path, pid: int | None = None) -> list[Path]:
    """The tallies of every process in `folder`, or of one."""
    return sorted(folder.glob(f"tallies_{'*' if pid is None else pid}_*{TALLIES_SUFFIX}"))


def read_tallies(files: Iterable[Path], name: str) -> dict[tuple[str, ...], list[float]]:
    """The numbers of one metric in `files`, summed per label set."""
    totals: dict[tuple[str, ...], list[float]] = {}
    for path in files:
        with open(path, "rb") as tallies:
            (used,) = _USED.unpack(tallies.read(_USED.size))
            data = tallies.read(max(used - _USED.size, 0))  # 0 in use: just created
        position = 0
        while position < len(data):
            size, width = _ENTRY.unpack_from(data, position)
            position += _ENTRY.size
            key_name, labels = json.loads(data[position : position + size])
            position += size
            position += -position % 8  # the header is 8 bytes: aligned as in the file
            numbers = struct.unpack_from(f"={width}d", data, position)  # as mapped: native
            position += width * 8
            if key_name != name:
                continue
            total = totals.setdefault(tuple(labels), [0.0] * width)
            for index, number in enumerate(numbers):
                total[index] += number
    return totals


class _Tallied(Collector):
    """A labelled metric kept in plain numbers and read when scraped.

    Each label set has a cell its user updates in place (`cell[0] += 1`): no lock and no
    call per update, where prometheus_client's own types take a lock (see
    docs/benchmarks.md). For a single thread only: the API counts from its event loop. With
    a `TallyFile` the cells live in it, and a scrape sums every process's.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        width: int,
        shared: TallyFile | None = None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._width = width
        self._shared = shared
        self._cells: dict[tuple[str, ...], Cell] = {}
        self._lists: dict[tuple[str, ...], list[float]] = {}  # the cells, in one process
        registry.register(self)

    def cell(self, *labels: str) -> Cell:
        """The numbers of one label set (created at 0 on first use)."""
        cell = self._cells.get(labels)
        if cell is None:
            if self._shared is None:
                cell = self._cells[labels] = self._lists[labels] = [0.0] * self._width
            else:
                cell = self._cells[labels] = self._shared.cell(self._name, labels, self._width)
        return cell

    def _values(self) -> Iterable[tuple[tuple[str, ...], Sequence[float]]]:
        """Each label set's numbers: this process's, or every process's summed."""
        if self._shared is None:
            return list(self._lists.items())
        return read_tallies(tally_files(self._shared.folder), self._name).items()

    @abstractmethod
    def _empty(self) -> Metric:
        """The metric family, without samples."""

    def describe(self) -> list[Metric]:
        return [self._empty()]


class TalliedCounter(_Tallied):
    """A counter: a label set's cell holds its count."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        shared: TallyFile | None = None,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry, 1, shared)

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for labels, cell in self._values():
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
        shared: TallyFile | None = None,
    ) -> None:
        self._bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames, registry, len(self._bounds) + 2, shared)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def observe(self, cell: Cell, value: float) -> None:
        cell[bisect_left(self._bounds, value)] += 1
        cell[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for labels, cell in self._values():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*map(repr, self._bounds), "+Inf"), cell, strict=False):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(labels, buckets, sum_value=cell[-1])
        yield family


class ApiMetrics:
    """The API's metrics; `registry` is what `/metrics` exposes.

    With `shared` (the pod's multiprocess folder, in which prometheus_client must then
    already be writing), the scrape sums every process's samples, and each gauge says how
    its processes' values combine (`multiprocess_mode`): what a process holds is summed over
    the live ones, what each process sees of the one registry is the worst or the newest of
    the live ones. The registry's version (an Info, which prometheus_client keeps in memory
    only) is the answering process's.
    """

    def __init__(self, *, tenant_label: bool = False, shared: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=shared is None)
        self.tenant_label = tenant_label
        self.shared = shared
        tallies = TallyFile(shared) if shared is not None else None
        # In one process the metrics are this registry's; with several, their samples are
        # read from the folder (MultiProcessCollector) and the objects only write them.
        own = self.registry if shared is None else None
        self.requests = TalliedCounter(
            "tenantry_api_requests",
            "HTTP requests by method, route template and status class.",
            ["method", "route", "status_class"],
            self.registry,
            tallies,
        )
        self.latency = TalliedHistogram(
            "tenantry_api_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["method", "route"],
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            self.registry,
            tallies,
        )
        self.tenant_requests = Counter(
            "tenantry_api_tenant_requests",
            "Authenticated requests per tenant (only when api.tenant_metrics_label is set).",
            ["tenant"],
            registry=own,
        )
        self.limiter_decisions = TalliedCounter(
            "tenantry_api_limiter_decisions",
            "Limiter decisions: where they were made (redis, cache, local) and the outcome.",
            ["source", "decision"],
            self.registry,
            tallies,
        )
        self.quota_rejections = Counter(
            "tenantry_api_quota_rejections",
            "Requests refused because the tenant's monthly quota is used up.",
            registry=own,
        )
        self.auth_failures = Counter(
            "tenantry_api_auth_failures",
            "Refused authentications by reason (the problem type's slug).",
            ["reason"],
            registry=own,
        )
        self.refusals_not_audited = Counter(
            "tenantry_api_refusals_not_audited",
            "Sampled key refusals that did not reach the audit trail, by cause.",
            ["cause"],
            registry=own,
        )
        self.redis_errors = Counter(
            "tenantry_api_redis_errors",
            "Redis calls that failed or timed out, by operation.",
            ["operation"],
            registry=own,
        )
        self.fail_open = Counter(
            "tenantry_api_fail_open_decisions",
            "Requests admitted without Redis because the tenant's failure mode is open.",
            registry=own,
        )
        self.usage_held = Gauge(
            "tenantry_api_usage_held_locally",
            "Admitted requests counted in process, waiting to be merged into Redis.",
            registry=own,
            multiprocess_mode="livesum",  # each process holds its own
        )
        self.usage_dropped = Counter(
            "tenantry_api_usage_dropped",
            "Admitted requests whose usage could not be kept (local store full).",
            registry=own,
        )
        self.usage_merged = Counter(
            "tenantry_api_usage_merged",
            "Locally counted requests merged into Redis once it was back.",
            registry=own,
        )
        self.usage_cache = Counter(
            "tenantry_api_usage_cache",
            "`/v1/usage` answers served from the Redis cache (hit) or computed (miss).",
            ["result"],
            registry=own,
        )
        self.registry_tenants = Gauge(
            "tenantry_api_registry_tenants",
            "Tenants in the registry snapshot being served.",
            registry=own,
            multiprocess_mode="livemostrecent",  # the newest snapshot a process swapped in
        )
        self.registry_age = Gauge(
            "tenantry_api_registry_age_seconds",
            "Seconds since the registry source last confirmed the snapshot is current.",
            registry=own,
            multiprocess_mode="livemax",  # the stalest process's, the one to alert on
        )
        self.registry_rejected = Gauge(
            "tenantry_api_registry_rejected",
            "Registry snapshots refused as invalid (the last good one kept serving).",
            registry=own,
            multiprocess_mode="livemax",  # every process sees the same snapshots
        )
        self.registry_version = Info(
            "tenantry_api_registry",
            "Version of the registry snapshot being served.",
            registry=self.registry,
        )
        if shared is not None:
            MultiProcessCollector(self.registry, path=str(shared))  # type: ignore[no-untyped-call]


def status_class(status: int) -> str:
    return STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
