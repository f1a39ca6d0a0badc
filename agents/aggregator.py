"""The study aggregator: imaging.raw → per-study state → imaging.study.ready (a thin shell over domain.study).

One agent (concurrency 1, the only writer of the study tables) reads imaging.raw and the co-partitioned
check topic through one channel. A per-worker timer scans the pending studies of the partitions this
worker actively owns and, once a study's wall-clock quiet period has passed, sends "check <study>";
the agent then decides with both clocks (:func:`domain.study.is_ready`), emits the ready record and
changelogs the decision, so a restart or rebalance neither loses nor repeats a revision.

Throughput: the agent takes imaging.raw in batches (``aggregator_batch_size`` events or
``aggregator_batch_timeout``) and writes each study's header once per batch; instance rows are still
one per new instance (they are the de-duplication keys).

Delivery: the ready record is acknowledged by the broker before the header is marked published. A
crash in between (milliseconds) re-emits the same revision after recovery; consumers treat
(study UID, revision) as idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import TP

from app.settings import Settings
from app.stream_app import aggregator_input, app, settings, study_check, study_check_topic_name, topics
from domain import study as domain
from domain.errors import InvalidEventError
from domain.events import CommitmentRequest, decode_raw_record
from domain.progress import StallDetector
from domain.ready import build_study_ready, encode_study_ready
from infra.topics import create_topics_async
from tables.studies import StudyTables

log = logging.getLogger(__name__)

CHECK_COMMAND = b"check"
# Room for the record's Kafka framing and headers inside max_message_bytes.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


@dataclass(slots=True)
class PendingStudy:
    """What a batch changed in one study, written once when the batch ends (see StudyAggregator.flush)."""

    event: Any  # the study's last event in the batch: table writes go to its partition
    header: domain.StudyHeader
    instances: dict[str, domain.InstanceInfo] = field(default_factory=dict)
    series: dict[str, domain.SeriesInfo] = field(default_factory=dict)  # to write
    known_series: dict[str, domain.SeriesInfo] = field(default_factory=dict)  # as stored after the batch
    opened_revision: bool = False

    def add(self, event: Any, update: domain.StudyUpdate, known_series: domain.SeriesInfo | None) -> None:
        self.event = event
        self.header = update.header
        if update.instance is not None:
            self.instances[update.instance.uid] = update.instance
        if update.series is not None:
            self.series[update.series.uid] = update.series
            self.known_series[update.series.uid] = update.series
        elif known_series is not None:
            self.known_series[known_series.uid] = known_series
        self.opened_revision = self.opened_revision or update.opened_revision


@contextmanager
def processing(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event: tables take the partition of a write from it.

    Inside ``stream.take_events()`` the stream iterates in another task, so the agent's task does not
    see the current event Faust sets there (``faust.streams._current_event``, a context variable).
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class StudyAggregator:
    """Runtime of the aggregator on one worker: tables, topics, and what it knows of its input's progress."""

    def __init__(self, app: faust.App, settings: Settings, tables: StudyTables) -> None:
        self.app = app
        self.settings = settings
        self.tables = tables
        self.check_topic = study_check_topic_name(settings)
        self.counters: Counter[str] = Counter()
        # Per imaging.raw partition: next offset to process and the newest event time read. In memory
        # only: after a restart they are unknown until input flows, which makes is_ready wait.
        self.next_offset: dict[int, int] = {}
        self.event_watermark: dict[int, float] = {}
        self.stalls = StallDetector(settings.aggregator_stall_timeout)
        # Study → (last_wall_time it was checked at, when): the timer's memory of checks in flight.
        self.checks_sent: dict[str, tuple[float, float]] = {}

    def forget_partitions(self, partitions: Iterable[TP]) -> None:
        """Drop what this worker knew of the input's progress on partitions it no longer owns.

        When such a partition comes back (another worker held it meanwhile and read further), the old
        position would be behind the committed offset: with no new input it never counted as caught
        up, and its studies never became ready (the two-worker kill test, intermittently).
        """
        for tp in partitions:
            if tp.topic == self.settings.topic_raw:
                self.next_offset.pop(tp.partition, None)
                self.event_watermark.pop(tp.partition, None)
                self.stalls.forget(tp.partition)

    def processed_position(self, partition: int) -> int | None:
        """Offset of the next imaging.raw message to process: what was read, else the committed offset."""
        next_offset = self.next_offset.get(partition)
        if next_offset is None:
            next_offset = self.app.consumer._committed_offset.get(TP(self.settings.topic_raw, partition))
        return next_offset

    # --- imaging.raw ---

    async def on_batch(self, events: Sequence[Any]) -> None:
        """Handle a batch of imaging.raw and check events in order, writing each study's header once.

        New instance and series rows and the latest header of each study are held in ``batch`` and
        written when the batch ends, or before a check (which reads the tables). Faust acknowledges the
        batch's offsets only after this returns, and flushes the changelog records before committing
        them, so a crash replays the batch on top of what was written (duplicates are skipped).
        """
        batch: dict[str, PendingStudy] = {}
        for event in events:
            message = event.message
            try:
                if message.topic == self.check_topic:
                    await self.flush(batch)
                    with processing(event):  # table reads and writes go to the event's partition
                        await self.on_check(message)
                else:
                    await self.on_instance(event, batch)  # reads its partition; writes wait for flush
            except InvalidEventError as exc:  # corrupt stored state: skip the message, keep the stream alive
                self.counters["errors"] += 1
                log.error("%s[%d]@%d skipped: %s", message.topic, message.partition, message.offset, exc)
        await self.flush(batch)

    async def on_instance(self, event: Any, batch: dict[str, PendingStudy]) -> None:
        message = event.message
        partition = message.partition
        self.next_offset[partition] = message.offset + 1
        try:
            record = decode_raw_record(message.value)
            key = message.key.decode("ascii", "replace") if message.key else ""
            if isinstance(record, CommitmentRequest):
                domain.check_commitment_uids(record, study_key_uid=key)
            else:
                domain.check_event_uids(record, study_key_uid=key)
        except InvalidEventError as exc:
            await self.dead_letter(message, str(exc))
            return
        if isinstance(record, CommitmentRequest):
            await self.flush(batch)  # the request is judged against every instance read before it
            self.on_commitment(event, record)
            return
        instance_event = record
        now = time.time()
        timestamp = message.timestamp if message.timestamp else None
        event_time = domain.event_time_of(instance_event, timestamp, fallback=now)
        if event_time > self.event_watermark.get(partition, 0.0):
            self.event_watermark[partition] = event_time

        study_uid = instance_event.study_uid
        pending = batch.get(study_uid)
        header = pending.header if pending is not None else self.tables.header(study_uid, partition)
        sop_uid = instance_event.sop_instance_uid
        known_instance = pending.instances.get(sop_uid) if pending is not None else None
        if known_instance is None:
            known_instance = self.tables.instance_info(study_uid, sop_uid, partition)
        if header is not None and known_instance == domain.instance_from_event(instance_event):
            self.counters["duplicates"] += 1  # the common repeat: skip the series read
            return
        series_uid = instance_event.series_uid
        if pending is not None and series_uid in pending.known_series:
            known_series = pending.known_series[series_uid]
        else:
            known_series = self.tables.series_info(study_uid, series_uid, partition)
        update = domain.apply_instance(
            header, known_series, known_instance, instance_event, domain.Reception(now, event_time, partition)
        )
        if not update.changed:
            self.counters["duplicates"] += 1
            return
        if known_instance is None and update.header.instance_count > self.settings.aggregator_max_instances:
            await self.dead_letter(message, f"study has more than {self.settings.aggregator_max_instances} instances")
            return
        if pending is None:
            pending = batch[study_uid] = PendingStudy(event, update.header)
        pending.add(event, update, known_series)
        self.counters["instances"] += 1
        if update.opened_revision:
            log.info("study %s revision %d opened (partition %d)", study_uid, update.header.revision, partition)

    def on_commitment(self, event: Any, request: CommitmentRequest) -> None:
        """A Storage Commitment request: the study is committed (ready at once) when it holds every instance named.

        Instances it names that are not in the study yet (stored by another receiving process, read later)
        are remembered in the header; the last of them to arrive commits the study.
        """
        study_uid, partition = request.study_uid, event.message.partition
        header = self.tables.header(study_uid, partition)
        if header is None:
            self.counters["commitments_incomplete"] += 1
            log.info(
                "study %s: storage commitment %s for a study not seen yet: ignored", study_uid, request.transaction_uid
            )
            return
        missing = [
            sop for sop in request.sop_instance_uids if self.tables.instance_info(study_uid, sop, partition) is None
        ]
        committed = domain.request_commitment(header, missing)
        if committed == header:
            return
        with processing(event):  # the header write goes to the event's partition
            self.tables.put_header(committed)
        if missing:
            self.counters["commitments_incomplete"] += 1
            log.info(
                "study %s: storage commitment %s names %d instance(s) not seen yet; committed when they arrive",
                study_uid,
                request.transaction_uid,
                len(missing),
            )
        else:
            self.counters["commitments"] += 1
            log.info(
                "study %s revision %d: storage commitment %s for %d instance(s), ready now",
                study_uid,
                header.revision,
                request.transaction_uid,
                len(request.sop_instance_uids),
            )

    async def flush(self, batch: dict[str, PendingStudy]) -> None:
        """Write the batch's pending rows: instance rows per partition, then each study's series and header
        as if while handling its last event (same partition)."""
        rows: dict[int, list[tuple[bytes, bytes]]] = {}
        for uid, pending in batch.items():
            partition_rows = rows.setdefault(pending.event.message.partition, [])
            partition_rows.extend(
                (domain.child_key(uid, instance.uid), domain.encode_instance(instance))
                for instance in pending.instances.values()
            )
        for partition, partition_rows in rows.items():
            await self.tables.put_instances(partition, partition_rows)
        for pending in batch.values():
            with processing(pending.event):
                self.tables.put_study(pending.header, pending.series.values(), opened_revision=pending.opened_revision)
        batch.clear()

    async def dead_letter(self, message: Any, reason: str) -> None:
        """Forward the original bytes to the DLQ with the reason in headers; never raise into the stream."""
        self.counters["dead_lettered"] += 1
        log.warning(
            "dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason.splitlines()[0]
        )
        headers = {
            "studystream-reason": reason.encode("utf-8", "replace")[:1000],
            "studystream-source": f"{message.topic}[{message.partition}]@{message.offset}".encode(),
            "studystream-stage": b"aggregator",
        }
        value = message.value if message.value is not None else b""
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        await topics.dlq.send(key=message.key, value=value, headers=headers)

    # --- check topic ---

    def event_clock(self, partition: int) -> float | None:
        """How far event time has progressed on a partition: now when caught up, else the newest event time read."""
        try:
            highwater = self.app.consumer.highwater(TP(self.settings.topic_raw, partition))
        except Exception:  # not assigned (rebalancing) or not fetched yet: unknown  # noqa: BLE001
            highwater = None
        # Nothing read on a partition since start-up: the position is the committed offset Faust sought
        # to. Without that fallback a restarted worker with no new input never counted as caught up, and
        # its recovered studies never became ready (seen in the e2e worker-kill test).
        next_offset = self.processed_position(partition)
        if highwater is not None and highwater >= 0 and (next_offset or 0) >= highwater:
            return time.time()
        return self.event_watermark.get(partition)

    async def on_check(self, message: Any) -> None:
        study_uid = message.key.decode("ascii", "replace") if message.key else ""
        header = self.tables.header(study_uid)
        if header is None:
            return
        if header.status is not domain.StudyStatus.RECEIVING:
            self.tables.close_pending(study_uid)  # a check that crossed the decision: nothing to do
            return
        now = time.time()
        if not domain.is_ready(header, now, self.event_clock(message.partition), self.settings.quiet_period):
            return
        partition = header.partition
        started = time.perf_counter()
        record = build_study_ready(
            header,
            self.tables.study_series(study_uid, partition),
            self.tables.study_instances(study_uid, partition),
            ready_at=domain.iso_utc(now),
        )
        payload = encode_study_ready(record)
        build_ms = (time.perf_counter() - started) * 1000
        if len(payload) > self.settings.max_message_bytes - MESSAGE_OVERHEAD_BYTES:
            reason = f"ready record of {len(payload)} bytes exceeds max_message_bytes"
            self.tables.put_header(domain.mark_failed(header, reason))
            self.counters["failed"] += 1
            log.error("study %s revision %d failed: %s", study_uid, header.revision, reason)
            return
        # Wait for the broker's acknowledgement before the decision is changelogged (see module doc).
        delivered = await topics.ready.send(key=domain.study_key(study_uid), value=payload, partition=partition)
        await delivered
        self.tables.put_header(domain.mark_published(header))
        self.checks_sent.pop(study_uid, None)
        self.counters["ready"] += 1
        log.info(
            "study %s revision %d ready: %d series, %d instances, %d bytes, built in %.1f ms",
            study_uid,
            record.revision,
            record.number_of_series,
            record.number_of_instances,
            len(payload),
            build_ms,
        )

    # --- completeness timer ---

    async def scan_pending(self) -> int:
        """Send a check for every owned pending study that looks ready; the agent decides again."""
        if self.app.rebalancing or self.app.in_recovery:
            return 0
        now = time.time()
        sent = 0
        clocks: dict[int, float | None] = {}
        pending = list(self.tables.pending_studies())
        self.checks_sent = {uid: self.checks_sent[uid] for uid, _ in pending if uid in self.checks_sent}
        for study_uid, partition in pending:
            header = self.tables.pending_header(study_uid, partition)
            if header is None or not domain.wall_quiet_elapsed(header, now, self.settings.quiet_period):
                continue
            if header.partition not in clocks:
                clocks[header.partition] = self.event_clock(header.partition)
            # The same test as the agent's, so catch-up (event clock behind) sends nothing.
            if not domain.is_ready(header, now, clocks[header.partition], self.settings.quiet_period):
                continue
            # One check per study state is enough unless it got lost (rebalance): then retry after a quiet period.
            previous = self.checks_sent.get(study_uid)
            if (
                previous is not None
                and previous[0] == header.last_wall_time
                and now - previous[1] < self.settings.quiet_period
            ):
                continue
            self.checks_sent[study_uid] = (header.last_wall_time, now)
            await study_check.send(key=domain.study_key(study_uid), value=CHECK_COMMAND, partition=header.partition)
            sent += 1
        return sent

    # --- input watchdog ---

    async def watch_input(self) -> list[int]:
        """Seek back any owned imaging.raw partition that lags without progress; returns those partitions.

        Seen intermittently (Faust 0.15.3, aiokafka 0.14): after a takeover rebalance a newly assigned
        partition was never delivered to the agent although records waited, and its studies never became
        ready. Seeking to where this worker had processed up to (duplicates are skipped) restarts the
        delivery; the warning says what the consumer looked like, to tell a pause from lost records.
        """
        if self.app.rebalancing or self.app.in_recovery:
            return []
        consumer = self.app.consumer
        owned = [tp for tp in consumer.assignment() if tp.topic == self.settings.topic_raw]
        if not owned:
            return []
        end_offsets = await consumer.highwaters(*owned)
        positions = {tp: self.processed_position(tp.partition) for tp in owned}
        unknown = [tp for tp, position in positions.items() if position is None]
        # Never read and never committed: the group starts such a partition at its beginning.
        if unknown:
            positions.update(await consumer.earliest_offsets(*unknown))
        now = time.monotonic()
        stalled: list[int] = []
        for tp in owned:
            position = positions.get(tp)
            if not self.stalls.observe(tp.partition, position, end_offsets.get(tp), now):
                continue
            stalled.append(tp.partition)
            self.counters["stalled_partitions"] += 1
            paused = tp in consumer._paused_partitions
            log.warning(
                "%s[%d] stalled for %.0f s at offset %s of %s (fetch position %s, paused %s, active %s): "
                "seeking back to %s",
                tp.topic,
                tp.partition,
                self.settings.aggregator_stall_timeout,
                position,
                end_offsets.get(tp),
                await consumer.position(tp),
                paused,
                tp in consumer._active_partitions,
                position,
            )
            if paused:
                consumer.resume_partitions({tp})
            await consumer.seek_wait({tp: position})
            self.stalls.forget(tp.partition)
        return stalled


async def create_internal_topics(settings: Settings, tables: StudyTables) -> None:
    """Create the changelog and check topics before Faust subscribes (a no-op when they exist).

    Left to Faust, a first start creates them moments before the consumer's metadata lookup, which
    does not see them yet: the partitions are "ignored" in the assignment (no completeness checks) and
    the first table write fails with PartitionsMismatch. Created here, like infra.topics does for the
    source topics, they are in the metadata from the start. No metadata lookup first: on a broker with
    auto.create.topics.enable that would create them with one partition.
    """
    specs = [(name, {"cleanup.policy": "compact"}) for name in tables.changelog_topic_names()]
    specs.append((study_check_topic_name(settings), {}))
    await create_topics_async(settings, specs)


aggregator = StudyAggregator(app, settings, StudyTables(app, settings))


@app.on_partitions_revoked.connect
async def _forget_revoked(sender: faust.App, revoked: set[TP], **_: Any) -> None:
    aggregator.forget_partitions(revoked)


@app.on_worker_init.connect
def _prepare_topics(sender: faust.App, **_: Any) -> None:
    # Runs in `studystream worker` before Faust's event loop starts.
    asyncio.run(create_internal_topics(settings, aggregator.tables))


@app.agent(aggregator_input, concurrency=1)
async def aggregate(stream: faust.StreamT) -> None:
    async for events in stream.take_events(settings.aggregator_batch_size, within=settings.aggregator_batch_timeout):
        await aggregator.on_batch(events)


@app.task
async def drop_debug_logging() -> None:
    """Undo the DEBUG root level Faust's worker sets for its start-up spinner at ``-l warn`` or above.

    With it, every aiokafka debug record (several per message produced or fetched) is built and then
    dropped by the console handler: a tenth of the worker's CPU in the benchmark. The level goes back
    to the console handler's, once the worker has started.
    """
    root = logging.getLogger()
    console_levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"]
    if console_levels and root.level < min(console_levels):
        root.setLevel(min(console_levels))


@app.timer(settings.aggregator_check_interval)
async def check_quiet_studies() -> None:
    await aggregator.scan_pending()


@app.timer(max(1.0, settings.aggregator_stall_timeout / 6))
async def watch_aggregator_input() -> None:
    try:
        await aggregator.watch_input()
    except Exception as exc:  # broker unreachable, rebalance under way: try again next time  # noqa: BLE001
        log.warning("input watchdog skipped a round: %s", exc)


__all__ = ["aggregate", "aggregator", "check_quiet_studies", "drop_debug_logging", "watch_aggregator_input"]
