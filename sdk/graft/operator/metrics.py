"""The operator's Prometheus metrics, served at /metrics on `--metrics-port`.

What a platform team alerts and graphs on: FineTuneJobs per phase, how reconciles end and how
long they take, and how many objects the operator created. Only the handlers and `run()` import
this module, so `import graft` never loads prometheus_client.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

# Always exported, at 0 when no job has the phase, so dashboards and alerts see every series.
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")

RECONCILES = Counter(
    "graft_reconcile_total",
    "FineTuneJob reconciles by handler and result: created, exists (children already there), "
    "invalid (spec refused), rejected (name taken, or a spec change refused), applied (suspend "
    "propagated), finished (job already done), error (raised; kopf retries).",
    ["handler", "result"],
)
CHILDREN_CREATED = Counter(
    "graft_children_created_total",
    "Objects the operator created for FineTuneJobs, by kind (ConfigMap and the child job).",
    ["kind"],
)
RECONCILE_SECONDS = Histogram(
    "graft_reconcile_seconds", "Time a FineTuneJob reconcile took, by handler.", ["handler"],
)


class PhaseSource(Protocol):
    def phase_counts(self) -> dict[str, int]: ...


class _PhaseGauge:
    """`graft_finetunejobs{phase}`, counted at scrape time from the status book, so the gauge
    is exactly what the operator wrote (or saw) and cannot drift through missed decrements."""

    def __init__(self) -> None:
        self.source: PhaseSource | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "graft_finetunejobs", "FineTuneJobs by the phase in their status.", labels=["phase"])
        counts = self.source.phase_counts() if self.source is not None else {}
        for phase in sorted(set(PHASES) | set(counts)):
            family.add_metric([phase], counts.get(phase, 0))
        yield family


_phase_gauge = _PhaseGauge()
REGISTRY.register(_phase_gauge)


def count_phases_of(source: PhaseSource) -> None:
    """Export the phases of this book (the one the running operator writes through)."""
    _phase_gauge.source = source


def reconciler(handler: Callable[..., str]) -> Callable[..., None]:
    """Count how `handler` ended (the result it returns, or `error` if it raised) and time it.

    The wrapper returns None: kopf would store a handler's return value in the job's status.
    """
    name = handler.__name__

    @functools.wraps(handler)
    def counted(*args: Any, **kwargs: Any) -> None:
        started, result = time.perf_counter(), "error"
        try:
            result = handler(*args, **kwargs)
        finally:
            RECONCILE_SECONDS.labels(name).observe(time.perf_counter() - started)
            RECONCILES.labels(name, result).inc()

    return counted
