"""The Prometheus metrics of one App, made from plain counters when ``/metrics`` is scraped.

A custom collector (:class:`PgChangesCollector`) builds the metric families from what the
:class:`~pgchanges.ops.observer.Observer`, the source's :class:`~pgchanges.ops.figures.SourceFigures`, the
database :class:`~pgchanges.ops.sampler.Sampler`, the sinks and the long tasks hold at that moment;
prometheus-client writes the text format. So serving pays for no metric objects and no locks, and a scrape
costs one pass over a few dicts. Names and labels follow the Prometheus conventions (base units, ``_total``
for counters); README.md ("Operating it") lists them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pgchanges.ops.figures import all_sinks, progress_tasks
from pgchanges.ops.observer import BUCKETS, Observer
from pgchanges.ops.sampler import SLOT_STATS, SLOT_TOTALS, Sample

if TYPE_CHECKING:
    from pgchanges.ops.service import Ops

_TOTALS = {"total_txns": "decoded_txns", "total_bytes": "decoded_bytes"}


class PgChangesCollector(Collector):
    """Collects the metrics of ``ops`` at scrape time."""

    def __init__(self, ops: Ops) -> None:
        self._ops = ops

    def collect(self) -> Iterator[Metric]:
        ops = self._ops
        if ops.observer is not None:
            yield from _handling(ops.observer)
        yield from _progress(ops)
        yield _connected(ops.connections())
        if ops.sampler is not None and ops.sampler.latest is not None:
            yield from _slots(ops.sampler.latest)
            yield from _consumers(ops.sampler.latest)
        yield from _sinks()
        yield from _tasks()


def registry_of(ops: Ops) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PgChangesCollector(ops))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format of ``registry``, then of prometheus-client's default registry (the process and Python
    collectors, and whatever metrics the application registered there itself)."""
    return generate_latest(registry) + generate_latest(REGISTRY)


def _handling(observer: Observer) -> Iterator[Metric]:
    source = observer.source_name
    changes = CounterMetricFamily("pgchanges_changes", "Changes handed to handlers.", labels=["source", "table", "op"])
    for (schema, table, op), count in sorted(observer.changes.items(), key=lambda item: str(item[0])):
        changes.add_metric([source, f"{schema}.{table}" if table is not None else "", op], count)
    yield changes
    seconds = HistogramMetricFamily(
        "pgchanges_handler_seconds",
        "Time of handler calls (async: per call; plain functions: the mean of each thread hand-off).",
        labels=["handler"],
    )
    for name, times in sorted(observer.times.items()):
        cumulative, buckets = 0, []
        for bound, count in zip((*BUCKETS, float("inf")), times.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        seconds.add_metric([name], buckets, times.total)
    yield seconds
    errors = CounterMetricFamily("pgchanges_handler_errors", "Handler failures.", labels=["handler"])
    for name, count in sorted(observer.errors.items()):
        errors.add_metric([name], count)
    yield errors
    yield _gauge("pgchanges_batches_in_progress", "Batches whose handlers are running now.", observer.runs_in_progress)
    yield _gauge(
        "pgchanges_longest_batch_seconds", "How long the oldest batch in progress has run.", observer.longest_run()
    )
    yield _gauge("pgchanges_serving", "1 while the source is open and served.", int(observer.up))


def _progress(ops: Ops) -> Iterator[Metric]:
    figures = ops.figures
    if figures is None:
        return
    labels = ["source"]
    lag = GaugeMetricFamily(
        "pgchanges_lag_seconds",
        "Commit (or heartbeat) to handled, as last measured; the outbox: the oldest pending event's age; "
        "polling: now minus the watermark.",
        labels=labels,
    )
    value = ops.lag_seconds()
    if value is not None:
        lag.add_metric([ops.source_name], value)
    yield lag
    age = GaugeMetricFamily(
        "pgchanges_position_age_seconds",
        "Seconds since the position last advanced (or the source found itself caught up).",
        labels=labels,
    )
    age.add_metric([ops.source_name], time.monotonic() - figures.advanced_at)
    yield age
    sent = CounterMetricFamily("pgchanges_heartbeats_sent", "Heartbeats written (logical).", labels=labels)
    seen = CounterMetricFamily("pgchanges_heartbeats_seen", "Heartbeats read back (logical).", labels=labels)
    sent.add_metric([ops.source_name], figures.heartbeats_sent)
    seen.add_metric([ops.source_name], figures.heartbeats_seen)
    yield sent
    yield seen


def _connected(states: dict[str, bool]) -> Metric:
    family = GaugeMetricFamily("pgchanges_connected", "1 while the connection is open.", labels=["connection"])
    for name, up in sorted(states.items()):
        family.add_metric([name], int(up))
    return family


def _slots(sample: Sample) -> Iterator[Metric]:
    retained, behind, active = _gauges(
        "slot",
        ("pgchanges_slot_retained_bytes", "WAL the slot keeps from recycling."),
        ("pgchanges_slot_lag_bytes", "WAL between the slot's confirmed position and the server's."),
        ("pgchanges_slot_active", "1 while a consumer holds the slot."),
    )
    stats = {
        name: CounterMetricFamily(
            f"pgchanges_slot_{_TOTALS.get(name, name)}", f"pg_stat_replication_slots.{name}.", labels=["slot"]
        )
        for name in (*SLOT_STATS, *SLOT_TOTALS)
    }
    for slot in sample.slots:
        if slot.retained_bytes is not None:
            retained.add_metric([slot.name], slot.retained_bytes)
        if slot.lag_bytes is not None:
            behind.add_metric([slot.name], slot.lag_bytes)
        active.add_metric([slot.name], int(slot.active))
        for name, value in slot.stats.items():
            stats[name].add_metric([slot.name], value)
    yield from (retained, behind, active, *stats.values())


def _consumers(sample: Sample) -> Iterator[Metric]:
    families = _gauges(
        "consumer",
        ("pgchanges_outbox_backlog", "Outbox events not handled yet."),
        ("pgchanges_outbox_parked", "Outbox events parked: retrying, or awaiting a stream's ack."),
        ("pgchanges_dead_letters", "Outbox events that failed too often."),
    )
    for consumer in sample.consumers:
        for family, figure in zip(families, (consumer.backlog, consumer.parked, consumer.dead_letters), strict=True):
            family.add_metric([consumer.name], figure)
    yield from families


def _gauges(label: str, *specs: tuple[str, str]) -> list[GaugeMetricFamily]:
    return [GaugeMetricFamily(name, documentation, labels=[label]) for name, documentation in specs]


def _sinks() -> Iterator[Metric]:
    labels = ["sink"]
    published = CounterMetricFamily("pgchanges_sink_published", "Changes a sink's broker confirmed.", labels=labels)
    failed = CounterMetricFamily("pgchanges_sink_failed", "Changes a sink could not publish.", labels=labels)
    in_flight = GaugeMetricFamily("pgchanges_sink_in_flight", "Changes sent and not confirmed yet.", labels=labels)
    for sink in all_sinks():
        published.add_metric([sink.name], sink.published_total)
        failed.add_metric([sink.name], sink.failed_total)
        in_flight.add_metric([sink.name], sink.in_flight)
    yield from (published, failed, in_flight)


def _tasks() -> Iterable[Metric]:
    labels = ["task", "unit"]
    done = GaugeMetricFamily("pgchanges_progress_done", "Work done by a long task (snapshot, replay).", labels=labels)
    total = GaugeMetricFamily("pgchanges_progress_total", "The long task's estimated total.", labels=labels)
    for task in progress_tasks():
        done.add_metric([task.task, task.unit], task.done)
        if task.total is not None:
            total.add_metric([task.task, task.unit], task.total)
    return (done, total)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)
