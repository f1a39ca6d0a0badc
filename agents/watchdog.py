"""The input watchdog: an owned input partition that lags its end without progress is sought back.

Seen intermittently with Faust 0.15.3 and aiokafka 0.14, on imaging.raw and on imaging.study.ready:
after a takeover rebalance a newly assigned partition was never delivered to its agent although
records waited (the study never became ready, or never reached FHIR). Seeking the partition back to
where this worker had handled records up to (repeats are harmless: the aggregator skips them, the
uploader finds the revision on the server) restarts the delivery. The warning says what the consumer
looked like, to tell a paused partition from dropped records.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import faust
from faust.types import TP

from agents import consumer as consumer_view
from domain.progress import StallDetector

log = logging.getLogger(f"studystream.{__name__}")


class InputWatchdog:
    def __init__(self, app: faust.App, topics: Iterable[str], handled: dict[tuple[str, int], int], timeout: float):
        self.app = app
        self.topics = set(topics)
        self.handled = handled  # (topic, partition) → next offset to handle, as the error policy released them
        self.timeout = timeout
        self.stalls = StallDetector(timeout)
        self.counters: Counter[str] = Counter()

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self.handled.pop((tp.topic, tp.partition), None)
            self.stalls.forget((tp.topic, tp.partition))

    def position(self, tp: TP) -> int | None:
        """The next offset to handle: what this worker handled, else the committed offset."""
        handled = self.handled.get((tp.topic, tp.partition))
        return handled if handled is not None else consumer_view.committed_offset(self.app.consumer, tp)

    async def round(self) -> list[TP]:
        """One check of every owned input partition; returns those sought back."""
        if self.app.rebalancing or self.app.in_recovery:
            return []
        consumer: Any = self.app.consumer
        owned = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        if not owned:
            return []
        end_offsets = await consumer.highwaters(*owned)
        positions = {tp: self.position(tp) for tp in owned}
        unknown = [tp for tp, position in positions.items() if position is None]
        # Never read and never committed: the group starts such a partition at its beginning.
        if unknown:
            positions.update(await consumer.earliest_offsets(*unknown))
        now = time.monotonic()
        stalled = []
        for tp in owned:
            position = positions.get(tp)
            if not self.stalls.observe((tp.topic, tp.partition), position, end_offsets.get(tp), now):
                continue
            stalled.append(tp)
            self.counters[tp.topic] += 1
            paused = consumer_view.is_paused(consumer, tp)
            log.warning(
                "%s[%d] stalled for %.0f s at offset %s of %s (fetch position %s, paused %s, active %s): "
                "seeking back to %s",
                tp.topic,
                tp.partition,
                self.timeout,
                position,
                end_offsets.get(tp),
                await consumer.position(tp),
                paused,
                consumer_view.is_active(consumer, tp),
                position,
            )
            if paused:
                consumer.resume_partitions({tp})
            await consumer.seek_wait({tp: position})
            self.stalls.forget((tp.topic, tp.partition))
        return stalled
