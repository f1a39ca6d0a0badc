"""Prometheus metrics of one worker for ``/metrics``: its studies by status, the aggregator's counters, web requests.

Values are read when scraped (from callables), so nothing is kept twice. The uploader's own registry
is appended by the view. Labels are stages, reasons, statuses, topics and partitions: never a UID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from agents import consumer as consumer_view
from domain.study_state import StudyHeader
from domain.upload import UploadOutcome


class _ScrapeTimeCollector(Collector):
    def __init__(
        self,
        study_counts: Callable[[], Mapping[str, int]],
        aggregator_counts: Callable[[], Mapping[str, int]],
        dead_letters: Callable[[], Mapping[tuple[str, str], int]],
        timer_failures: Callable[[], Mapping[str, int]],
        consumer_lag: Callable[[], Mapping[tuple[str, int], int]],
        fhir_delays: Callable[[], Iterable[float]],
        delivery: Callable[[], Mapping[tuple[str, str], int]],
    ) -> None:
        self.delivery = delivery
        self.study_counts = study_counts
        self.aggregator_counts = aggregator_counts
        self.dead_letters = dead_letters
        self.timer_failures = timer_failures
        self.consumer_lag = consumer_lag
        self.fhir_delays = fhir_delays

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        studies = GaugeMetricFamily(
            "studystream_web_studies", "Studies on this worker's partitions, by status", labels=["status"]
        )
        for status, count in sorted(self.study_counts().items()):
            studies.add_metric([status], count)
        yield studies
        events = CounterMetricFamily(
            "studystream_aggregator_messages",
            "Messages the aggregator on this worker handled, by outcome",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.aggregator_counts().items()):
            events.add_metric([outcome], count)
        yield events
        letters = CounterMetricFamily(
            "studystream_dead_letters",
            "Records this worker dead-lettered, by stage and reason",
            labels=["stage", "reason"],
        )
        for (stage, reason), count in sorted(self.dead_letters().items()):
            letters.add_metric([stage, reason], count)
        yield letters
        failures = CounterMetricFamily(
            "studystream_timer_failures", "Timer rounds skipped after a failure, by timer", labels=["timer"]
        )
        for timer, count in sorted(self.timer_failures().items()):
            failures.add_metric([timer], count)
        yield failures
        lag = GaugeMetricFamily(
            "studystream_consumer_lag",
            "Records between this worker's committed offset and the end of each partition it owns",
            labels=["topic", "partition"],
        )
        for (topic, partition), records in sorted(self.consumer_lag().items()):
            lag.add_metric([topic, str(partition)], records)
        yield lag
        yield fhir_delay_histogram(self.fhir_delays())
        delivery = CounterMetricFamily(
            "studystream_delivery",
            "Acknowledgements refused (Faust skipped the message around a rebalance), offset gaps found, and "
            "rewinds sought by the delivery gate, by topic",
            labels=["event", "topic"],
        )
        for (event, topic), count in sorted(self.delivery().items()):
            delivery.add_metric([event, topic], count)
        yield delivery


_FHIR_DELAY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def fhir_delay_histogram(delays: Iterable[float]) -> HistogramMetricFamily:
    """Seconds from each published study's last instance (event time) to its revision on the FHIR server,
    over the studies on this worker's partitions."""
    values = sorted(delays)
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in _FHIR_DELAY_BUCKETS]
    return HistogramMetricFamily(
        "studystream_study_fhir_delay_seconds",
        "Seconds from a study's last instance to its revision on the FHIR server (studies on this worker)",
        buckets=[*buckets, ("+Inf", float(len(values)))],
        sum_value=sum(values),
    )


def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """(topic, partition) → records between the committed offset and the end, for each partition ``consumer``
    owns and has both for (a table's changelog has no committed offset)."""
    lag = {}
    for tp in consumer.assignment():
        end, committed = consumer.highwater(tp), consumer_view.committed_offset(consumer, tp)
        if end is not None and committed is not None:
            lag[(tp.topic, tp.partition)] = max(0, end - committed)
    return lag


def fhir_delay(header: StudyHeader, outcome: UploadOutcome | None) -> float | None:
    """Seconds from the study's last instance (event time) to its current revision on the FHIR server;
    None while that revision is not published."""
    if outcome is None or not outcome.published_at or not header.last_event_time:
        return None
    if outcome.published_revision < header.revision:
        return None
    try:
        published = datetime.fromisoformat(outcome.published_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, published - header.last_event_time)


class WebMetrics:
    def __init__(
        self,
        study_counts: Callable[[], Mapping[str, int]],
        aggregator_counts: Callable[[], Mapping[str, int]],
        dead_letters: Callable[[], Mapping[tuple[str, str], int]] = dict,
        timer_failures: Callable[[], Mapping[str, int]] = dict,
        consumer_lag: Callable[[], Mapping[tuple[str, int], int]] = dict,
        fhir_delays: Callable[[], Iterable[float]] = tuple,
        delivery: Callable[[], Mapping[tuple[str, str], int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(
            _ScrapeTimeCollector(
                study_counts, aggregator_counts, dead_letters, timer_failures, consumer_lag, fhir_delays, delivery
            )
        )
        self.requests = Counter(
            "studystream_web_requests", "Web view requests, by page and HTTP status", ["page", "code"],
            registry=self.registry,
        )  # fmt: skip

    def exposition(self, *others: CollectorRegistry) -> bytes:
        return b"".join(generate_latest(r) for r in (self.registry, *others))
