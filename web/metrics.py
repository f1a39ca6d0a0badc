"""Prometheus metrics of one worker for ``/metrics``: its studies by status, the aggregator's counters, web requests.

Values are read when scraped (from callables), so nothing is kept twice. The uploader's own registry
is appended by the view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class _ScrapeTimeCollector(Collector):
    def __init__(
        self,
        study_counts: Callable[[], Mapping[str, int]],
        aggregator_counts: Callable[[], Mapping[str, int]],
        dead_letters: Callable[[], Mapping[tuple[str, str], int]],
        timer_failures: Callable[[], Mapping[str, int]],
    ) -> None:
        self.study_counts = study_counts
        self.aggregator_counts = aggregator_counts
        self.dead_letters = dead_letters
        self.timer_failures = timer_failures

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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


class WebMetrics:
    def __init__(
        self,
        study_counts: Callable[[], Mapping[str, int]],
        aggregator_counts: Callable[[], Mapping[str, int]],
        dead_letters: Callable[[], Mapping[tuple[str, str], int]] = dict,
        timer_failures: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ScrapeTimeCollector(study_counts, aggregator_counts, dead_letters, timer_failures))
        self.requests = Counter(
            "studystream_web_requests", "Web view requests, by page and HTTP status", ["page", "code"],
            registry=self.registry,
        )  # fmt: skip

    def exposition(self, *others: CollectorRegistry) -> bytes:
        return b"".join(generate_latest(r) for r in (self.registry, *others))
