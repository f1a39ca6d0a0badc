"""The study aggregator: imaging.raw → per-study state → imaging.study.ready (a thin shell over domain.study).

One agent (concurrency 1, the only writer of the study tables) reads imaging.raw and the co-partitioned
check topic through one channel, in batches. Each batch:

1. applies its imaging.raw records in order to an in-memory overlay of the studies they touch
   (:class:`BatchState`); a record that cannot be applied is dead-lettered by the error policy,
2. writes what changed in one acknowledged table write (:class:`tables.store.TableStore`),
3. decides the completeness checks the batch carried, together: the studies found ready are sealed
   (written), their ready records sent and acknowledged, then marked published (written),
4. releases the batch's messages to Faust's commit.

Sealing before sending means a crash between the ready record's acknowledgement and the header
update cannot let later instances join the published revision: they open the next one, and a sealed
revision found after a restart is sent again, identically (rows of later revisions are left out).

A per-worker timer scans the pending studies of the partitions this worker actively owns and sends
"check <study>" once a study's wall-clock quiet period has passed; the agent decides with both clocks
(:func:`domain.study.is_ready`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from adapters.topics import create_topics_async
from agents import consumer as consumer_view
from agents.options import identity_options
from agents.performed_steps import PerformedProcedureStep, on_performed_step
from agents.policy import MessagePolicy, WorkerStopping
from agents.rejections import on_rejection_note
from app.settings import Settings
from app.topology import TopicDecl
from domain import study as rules
from domain.batch import BatchState, apply_commitment, apply_event, apply_resolution
from domain.completeness import Signal
from domain.dead_letters import DeadLetter
from domain.errors import InfrastructureError, InvalidRecordError
from domain.events import CommitmentRequest, InstanceEvent, PatientResolution, StowBoundary, decode_raw_record
from domain.ready import StudyReady, build_study_ready, encode_study_ready
from domain.study_state import event_time_of, study_key
from domain.uids import is_valid_uid
from tables.store import FAULT_EXIT_STATUS, TableStore, Write
from tables.studies import StudyTables

log = logging.getLogger(f"studystream.{__name__}")

CHECK_COMMAND = b"check"
STAGE = "aggregator"
# Room for the record's Kafka framing and headers inside max_message_bytes.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
FAULT_AFTER_READY_ACK = "after_ready_ack"
FAULT_INFRASTRUCTURE = "infrastructure_error"
FAULT_FAUST_SKIP = "faust_skip"


def batch_writes(tables: StudyTables, batch: BatchState) -> list[Write]:
    """Instance rows first, then each study's series, header and pending mark."""
    writes: list[Write] = []
    for uid, pending in batch.studies.items():
        writes += tables.instance_writes(uid, pending.header.partition, pending.instances.values())
    for pending in batch.studies.values():
        writes += tables.study_writes(pending.header, pending.series.values(), pending=pending.opened_revision or None)
    return writes


@dataclass(slots=True)
class ReadyDecision:
    """A check that found its study sealed: the ready record to send and the header to write once it is acknowledged."""

    event: Any
    header: rules.StudyHeader
    record: StudyReady | None = None
    payload: bytes = b""
    build_ms: float = 0.0
    conflict: bool = False  # instances of more than one patient: dead-lettered, not published
    registration: bool = False  # an early registration of a study still receiving (fhir_early_registration)


def decode_check(message: Any) -> str:
    """The study a check command names; a check that is not one is an invalid record."""
    key = message.key.decode("ascii", "replace") if isinstance(message.key, bytes) else ""
    if message.value != CHECK_COMMAND or not is_valid_uid(key):
        raise InvalidRecordError("not a completeness check", reason="invalid_check")
    return key


class StudyAggregator:
    """Runtime of the aggregator on one worker: tables, topics, and what it knows of its input's progress."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        tables: StudyTables,
        ready_topic: faust.TopicT,
        check_topic: faust.TopicT,
        policy: MessagePolicy,
        generation: int = 1,
    ) -> None:
        self.app = app
        self.settings = settings
        self.tables = tables
        self.store: TableStore = tables.store
        self.ready_topic = ready_topic
        self.check_topic = check_topic
        self.check_topic_name = check_topic.get_topic_name()
        self.policy = policy
        self.generation = generation
        self.identity = identity_options(settings)
        self.completeness = settings.completeness_policy  # the rules by source (domain.completeness)
        self.registration_delay = settings.fhir_early_registration_delay if settings.fhir_early_registration else None
        self.counters: Counter[str] = Counter()
        # Per imaging.raw partition: next offset to process and the newest event time read. In memory
        # only: after a restart they are unknown until input flows, which makes is_ready wait.
        self.next_offset: dict[int, int] = {}
        self.event_watermark: dict[int, float] = {}
        # Study → (last_wall_time it was checked at, when): the timer's memory of checks in flight.
        self.checks_sent: dict[str, tuple[float, float]] = {}

    def forget_partitions(self, partitions: Iterable[TP]) -> None:
        """Drop what this worker knew of the input's progress on partitions it no longer owns.

        When such a partition comes back (another worker held it meanwhile and read further), the old
        position would be behind the committed offset: with no new input it never counted as caught
        up, and its studies never became ready.
        """
        for tp in partitions:
            if tp.topic == self.settings.topic_raw:
                self.next_offset.pop(tp.partition, None)
                self.event_watermark.pop(tp.partition, None)

    def processed_position(self, partition: int) -> int | None:
        """Offset of the next imaging.raw message to process: what was read, else the committed offset."""
        next_offset = self.next_offset.get(partition)
        if next_offset is None:
            next_offset = consumer_view.committed_offset(self.app.consumer, TP(self.settings.topic_raw, partition))
        return next_offset

    # --- one batch ---

    async def on_batch(self, events: Sequence[Any]) -> None:
        """Handle a batch of imaging.raw and check events; release them once every one is handled."""
        if self.settings.aggregator_fault_point == FAULT_FAUST_SKIP:
            events = self.skip_like_faust(events)
        events = await self.policy.admit(events)
        batch = BatchState(self.tables, self.identity)
        checks = []
        for event in events:
            message = event.message
            if message.topic == self.check_topic_name:
                checks.append(event)
            else:
                await self.policy.handle(message, STAGE, lambda event=event: self.on_raw(event, batch))
        await self.store.write(batch_writes(self.tables, batch))
        if checks:
            await self.on_checks(checks)
        self.policy.release(events)

    def skip_like_faust(self, events: Sequence[Any]) -> list[Any]:
        """Testing: acknowledge the fault study's first record unhandled, as Faust's stream does with a
        record it skips around a rebalance (the delivery gate must refuse it and read it again)."""
        kept = []
        for event in events:
            key = event.message.key
            if not self.counters["faust_skips"] and key == study_key(self.settings.aggregator_fault_study):
                self.counters["faust_skips"] += 1
                event.ack()
                continue
            kept.append(event)
        return kept

    # --- imaging.raw ---

    async def on_raw(self, event: Any, batch: BatchState) -> None:
        message = event.message
        partition = message.partition
        self.next_offset[partition] = max(self.next_offset.get(partition, 0), message.offset + 1)
        record = decode_raw_record(message.value)
        rules.check_key(record, message.key)
        if self.settings.aggregator_fault_point == FAULT_INFRASTRUCTURE and record.study_uid == (
            self.settings.aggregator_fault_study
        ):
            raise InfrastructureError("fault injection: the infrastructure failed on this record")
        if isinstance(record, CommitmentRequest | StowBoundary):
            self.on_commitment(message, record, batch)
        elif isinstance(record, PatientResolution):
            self.on_resolution(message, record, batch)
        elif isinstance(record, PerformedProcedureStep):
            on_performed_step(message, record, batch, self.counters, self.settings.aggregator_mpps_timeout)
        else:
            self.on_instance(message, record, batch)

    def on_instance(self, message: Any, event: InstanceEvent, batch: BatchState) -> None:
        partition = message.partition
        now = time.time()
        timestamp = message.timestamp if message.timestamp else None
        event_time = event_time_of(event, timestamp, fallback=now)
        if event_time > self.event_watermark.get(partition, 0.0):
            self.event_watermark[partition] = event_time
        at = rules.Arrival(now, event_time, partition, message.offset)
        update = apply_event(batch, event, at, self.settings.aggregator_max_instances)
        if event.rejection_code:
            on_rejection_note(event, update, self.counters)
        if update is None:
            self.counters["duplicates"] += 1
            return
        self.counters["instances"] += 1
        if update.opened_revision:
            log.info("study %s revision %d opened (partition %d)", event.study_uid, update.header.revision, partition)

    def on_commitment(self, message: Any, request: CommitmentRequest | StowBoundary, batch: BatchState) -> None:
        """A Storage Commitment request: the study is committed (ready at once) when it holds every instance named.

        Instances it names that are not in the study yet (stored by another receiving process, read later)
        are remembered in the header; the last of them to arrive commits the study. A complete STOW-RS request
        (``receiver_stow_is_study_boundary``) is applied the same way.
        """
        outcome = apply_commitment(batch, request, message.partition, message.offset)
        study_uid = request.study_uid
        kind = "STOW-RS request" if isinstance(request, StowBoundary) else "storage commitment"
        transaction = f"{kind} {request.transaction_uid}"
        if not outcome.known_study:
            self.counters["commitments_incomplete"] += 1
            log.info("study %s: %s for a study not seen yet: ignored", study_uid, transaction)
        elif not outcome.changed:
            return
        elif outcome.missing:
            self.counters["commitments_incomplete"] += 1
            log.info(
                "study %s: %s names %d instance(s) not seen yet; committed when they arrive",
                study_uid,
                transaction,
                outcome.missing,
            )
        else:
            header = batch.header(study_uid, message.partition)
            signal = Signal.STOW if isinstance(request, StowBoundary) else Signal.COMMITMENT
            trusted = header is not None and self.completeness.decide(header.sources, header.sources_overflow).trusts(
                signal
            )
            self.counters["commitments" if trusted else "commitments_untrusted"] += 1
            log.info(
                "study %s: %s for %d instance(s), %s",
                study_uid,
                transaction,
                len(request.sop_instance_uids),
                "ready now" if trusted else f"from a source not trusted for {signal}: waits for the quiet period",
            )

    def on_resolution(self, message: Any, resolution: PatientResolution, batch: BatchState) -> None:
        """An operator decided a patient conflict: the study's next revision is filed under that patient, now."""
        if not apply_resolution(batch, resolution, message.partition, message.offset):
            log.info("study %s: resolution %s changes nothing (no conflict)", resolution.study_uid, message.offset)
            return
        self.counters["resolutions"] += 1
        log.info(
            "study %s: patient conflict resolved for identity %s (%s)",
            resolution.study_uid,
            resolution.patient_key,
            resolution.requested_by or "operator",
        )

    # --- completeness checks ---

    def event_clock(self, partition: int) -> float | None:
        """How far event time has progressed on a partition: now when caught up, else the newest event time read."""
        try:
            highwater = self.app.consumer.highwater(TP(self.settings.topic_raw, partition))
        except Exception:  # noqa: BLE001 - not assigned (rebalancing) or not fetched yet: unknown
            highwater = None
        # Nothing read on a partition since start-up: the position is the committed offset Faust sought
        # to. Without that fallback a restarted worker with no new input never counted as caught up.
        next_offset = self.processed_position(partition)
        if highwater is not None and highwater >= 0 and (next_offset or 0) >= highwater:
            return time.time()
        return self.event_watermark.get(partition)

    async def on_checks(self, checks: Sequence[Any]) -> None:
        """Decide the batch's checks together: seal the ready studies, send their records, mark them published.

        Three acknowledged round trips for all the studies of a batch, not three per study.
        """
        sealing: list[Write] = []
        decisions: list[ReadyDecision] = []
        closing: list[Write] = []
        for event in checks:
            await self.policy.handle(
                event.message, STAGE, lambda event=event: self.decide(event, sealing, decisions, closing)
            )
        await self.store.write(sealing)
        for decision in decisions:
            await self.policy.handle(decision.event.message, STAGE, lambda d=decision: self.build(d))
        ready = [d for d in decisions if d.record is not None and not d.conflict]
        for decision in decisions:
            if decision.record is None and decision.header.status is rules.StudyStatus.FAILED:
                closing += self.tables.header_writes(decision.header)
            elif decision.conflict and decision.record is not None:
                await self.hold_conflict(decision)
                closing += self.tables.header_writes(decision.header)
        sent = [
            await self.ready_topic.send(
                key=study_key(d.header.study.uid), value=d.payload, partition=d.header.partition
            )
            for d in ready
        ]
        for delivered in sent:
            await delivered  # acknowledged before the decision is written (see the module doc)
        if ready and self.settings.aggregator_fault_point == FAULT_AFTER_READY_ACK:
            log.error("fault injection: exiting at %s", FAULT_AFTER_READY_ACK)
            logging.shutdown()
            os._exit(FAULT_EXIT_STATUS)
        for decision in ready:
            closing += self.tables.header_writes(self.after_sent(decision))
        await self.store.write(closing)
        for decision in ready:
            self.log_ready(decision)

    async def decide(
        self, event: Any, sealing: list[Write], decisions: list[ReadyDecision], closing: list[Write]
    ) -> None:
        message = event.message
        study_uid = decode_check(message)
        header = self.tables.header(study_uid, message.partition)
        if header is None:
            return
        status = header.status
        if status in (rules.StudyStatus.PUBLISHED, rules.StudyStatus.FAILED, rules.StudyStatus.CONFLICT):
            closing += self.tables.unpending_writes(study_uid, header.partition)  # a check that crossed the decision
            return
        if status is rules.StudyStatus.RECEIVING:
            now = time.time()
            completeness = self.completeness.decide(header.sources, header.sources_overflow)
            signal = rules.ready_signal(header, now, self.event_clock(message.partition), completeness)
            if signal is None:
                if rules.registration_due(header, now, self.registration_delay):
                    decisions.append(ReadyDecision(event, header, registration=True))
                return
            if rules.in_conflict(header):
                # Written once the dead letter is acknowledged: a crash in between sends it again.
                conflict = rules.mark_conflict(header, rules.iso_utc(now), signal)
                decisions.append(ReadyDecision(event, conflict, conflict=True))
                return
            header = rules.mark_sealed(header, rules.iso_utc(now), signal)
            sealing += self.tables.header_writes(header)
        decisions.append(ReadyDecision(event, header))

    async def build(self, decision: ReadyDecision) -> None:
        header = decision.header
        started = time.perf_counter()
        record = build_study_ready(
            header,
            self.tables.study_series(header.study.uid, header.partition),
            self.tables.study_instances(header.study.uid, header.partition),
            ready_at=header.sealed_at or rules.iso_utc(time.time()),
            generation=self.generation,
            registration=decision.registration,
        )
        payload = encode_study_ready(record)
        decision.build_ms = (time.perf_counter() - started) * 1000
        if len(payload) > self.settings.max_message_bytes - MESSAGE_OVERHEAD_BYTES:
            reason = f"ready record of {len(payload)} bytes exceeds max_message_bytes"
            decision.header = rules.mark_failed(header, reason)
            self.counters["failed"] += 1
            log.error("study %s revision %d failed: %s", header.study.uid, header.revision, reason)
            return
        decision.record, decision.payload = record, payload

    async def hold_conflict(self, decision: ReadyDecision) -> None:
        """Dead-letter a complete revision holding instances of more than one patient (not uploaded)."""
        header = decision.header
        keys = ", ".join(f"{p.key} ({p.instances})" for p in header.patients)
        letter = DeadLetter(
            STAGE,
            rules.PATIENT_CONFLICT,
            f"revision {header.revision} holds instances of {len(header.patients)} patients: {keys}; "
            "decide with `studystream resolve`",
        )
        await self.policy.writer.send_derived(
            decision.event.message, study_key(header.study.uid), decision.payload, letter, time.time()
        )
        self.counters["patient_conflicts"] += 1

    @staticmethod
    def after_sent(decision: ReadyDecision) -> rules.StudyHeader:
        """The header once the decision's record is acknowledged: published, or (early) registered."""
        if decision.registration:
            return rules.mark_registered(decision.header, decision.record.ready_at if decision.record else "")
        return rules.mark_published(decision.header)

    def log_ready(self, decision: ReadyDecision) -> None:
        record = decision.record
        assert record is not None
        if decision.registration:
            self.counters["registered"] += 1
            log.info(
                "study %s registered early: %d series, %d instances so far",
                record.study_uid,
                record.number_of_series,
                record.number_of_instances,
            )
            return
        self.checks_sent.pop(record.study_uid, None)
        self.counters["ready"] += 1
        log.info(
            "study %s revision %d ready: %d series, %d instances, %d bytes, built in %.1f ms, completed by %s",
            record.study_uid,
            record.revision,
            record.number_of_series,
            record.number_of_instances,
            len(decision.payload),
            decision.build_ms,
            record.completed_by or "(not recorded)",
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
            if header is None:
                continue
            completeness = self.completeness.decide(header.sources, header.sources_overflow)
            quiet, trusted = completeness.quiet_period, completeness.trusted_signals
            if not rules.needs_check(header, now, quiet, trusted, self.registration_delay):
                continue
            registering = rules.registration_due(header, now, self.registration_delay)
            if header.status is rules.StudyStatus.RECEIVING and not registering:
                if header.partition not in clocks:
                    clocks[header.partition] = self.event_clock(header.partition)
                # The same test as the agent's, so catch-up (event clock behind) sends nothing.
                if rules.ready_signal(header, now, clocks[header.partition], completeness) is None:
                    continue
            # One check per study state is enough unless it got lost (rebalance): then retry after a quiet period.
            previous = self.checks_sent.get(study_uid)
            if previous is not None and previous[0] == header.last_wall_time and now - previous[1] < quiet:
                continue
            self.checks_sent[study_uid] = (header.last_wall_time, now)
            await self.check_topic.send(key=study_key(study_uid), value=CHECK_COMMAND, partition=header.partition)
            sent += 1
        return sent


async def create_internal_topics(settings: Settings, tables: StudyTables, check: TopicDecl) -> None:
    """Create the changelog and check topics before Faust subscribes (a no-op when they exist).

    Left to Faust, a first start creates them moments before the consumer's metadata lookup, which
    does not see them yet: the partitions are "ignored" in the assignment (no completeness checks) and
    the first table write fails with PartitionsMismatch. No metadata lookup first: on a broker with
    auto.create.topics.enable that would create them with one partition.
    """
    specs = [(name, {"cleanup.policy": "compact"}) for name in tables.changelog_topic_names()]
    specs.append((check.name, check.config))
    await create_topics_async(settings, specs)


def register(app: faust.App, aggregator: StudyAggregator, input_channel: faust.TopicT, check: TopicDecl) -> None:
    """The aggregator's agent, timers and hooks on ``app``."""
    settings, policy = aggregator.settings, aggregator.policy

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: set[TP], **_: Any) -> None:
        aggregator.forget_partitions(revoked)

    @app.on_worker_init.connect
    def prepare_topics(sender: faust.App, **_: Any) -> None:
        # Runs in `studystream worker` before Faust's event loop starts.
        asyncio.run(create_internal_topics(settings, aggregator.tables, check))

    @app.agent(input_channel, concurrency=1, name="aggregate")
    async def aggregate(stream: faust.StreamT) -> None:
        try:
            async for events in stream.take_events(
                settings.aggregator_batch_size, within=settings.aggregator_batch_timeout
            ):
                await policy.run("aggregator batch", lambda events=events: aggregator.on_batch(events))
        except WorkerStopping:
            await policy.halt()

    @app.timer(settings.aggregator_check_interval)
    async def check_quiet_studies() -> None:
        await policy.timer_round("completeness timer", aggregator.scan_pending)
