"""The FHIR uploader: imaging.study.ready → transaction Bundle → FHIR server (a thin shell over domain.fhir_mapping).

Per study revision: look up the stored ImagingStudy (its StudyStream revision and version), skip if
the server already has this revision or a higher one, else build the Bundle, save it under
``bundles_dir`` (atomically, off the event loop), and POST it. The outcome goes to the co-partitioned
``upload-outcomes`` table (web view) and is counted.

What follows a failed attempt is :func:`domain.upload.next_step`'s decision: transient failures are
retried inline, then parked in the retry topic for as long as the outage lasts; conflicts a bounded
number of times; rejections are dead-lettered (through the error policy, with the OperationOutcome).
The retry line (:meth:`StudyUploader.hold_parked`) holds each parked record until it is due (at most
``uploader_retry_hold_max`` at a time) and moves it to the internal due topic, which the uploader reads
with imaging.study.ready through one channel: it alone writes the outcomes table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import faust
from prometheus_client import generate_latest

from adapters.control import ControlState
from adapters.topics import create_topics_async
from agents.fhir_writer import Attempt, StudyWriter, UploaderMetrics
from agents.policy import MessagePolicy, WorkerStopping
from app.settings import Settings
from app.topology import COMPACT, Topology
from domain import upload as rules
from domain.dead_letters import header_map
from domain.errors import InvalidRecordError, RejectedError
from domain.ready import StudyReady, decode_study_ready
from domain.study import iso_utc
from tables.outcomes import UploadOutcomes

log = logging.getLogger(f"studystream.{__name__}")

STAGE = "uploader"
RETRY_STAGE = "retry"
DUE_HEADER = "studystream-due"
ATTEMPTS_HEADER = "studystream-attempts"
CONFLICTS_HEADER = "studystream-conflicts"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"


def prune_bundles(directory: Path, older_than: float) -> int:
    """Delete saved bundles last written before ``older_than`` (epoch seconds); returns how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.glob("*.json"):
        try:
            if path.stat().st_mtime < older_than:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def parse_parked(headers: dict[str, bytes]) -> tuple[int, int, float]:
    """(attempts, conflicts, due) of a parked record; absent headers are a fresh record's zeros."""
    try:
        attempts = int(headers.get(ATTEMPTS_HEADER, b"0") or 0)
        conflicts = int(headers.get(CONFLICTS_HEADER, b"0") or 0)
        due = float(headers.get(DUE_HEADER, b"0") or 0)
    except ValueError:
        raise InvalidRecordError("retry headers are not numbers", reason="invalid_retry_headers") from None
    if not (0 <= attempts <= 10**9 and 0 <= conflicts <= attempts and 0 <= due < 10**11):
        raise InvalidRecordError("retry headers out of range", reason="invalid_retry_headers")
    return attempts, conflicts, due


class StudyUploader:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        outcomes: UploadOutcomes,
        retry_topic: faust.TopicT,
        due_topic: faust.TopicT,
        policy: MessagePolicy,
        control: ControlState,
    ) -> None:
        self.app = app
        self.settings = settings
        self.outcomes = outcomes
        self.retry_topic = retry_topic
        self.due_topic = due_topic
        self.policy = policy
        self.control = control
        self.metrics = UploaderMetrics(self.parked_summary)
        self.writer = StudyWriter(settings, self.metrics)

    def parked_summary(self) -> tuple[int, float]:
        """(parked revisions, age in seconds of the oldest one's first failure) on this worker's partitions."""
        now = time.time()
        count, oldest = 0, 0.0
        for outcome in self.outcomes.items():
            if outcome.status is rules.UploadStatus.RETRYING and outcome.retrying_since:
                count += 1
                try:
                    since = _epoch(outcome.retrying_since)
                except ValueError:
                    continue
                oldest = max(oldest, now - since)
        return count, round(oldest, 1)

    # --- imaging.study.ready and the due topic ---

    async def on_ready(self, message: Any) -> None:
        record = decode_study_ready(message.value)
        if message.key != record.study_uid.encode("ascii"):
            raise InvalidRecordError("message key differs from study_uid", reason="key_mismatch")
        prior_attempts, prior_conflicts, _ = parse_parked(header_map(message.headers or ()))
        partition = message.partition
        known = self.outcomes.get(record.study_uid, partition)
        # Replay: a record re-read by `studystream replay` is checked against the FHIR server (the upload
        # finds it "superseded" there if present), not skipped on the table's word.
        replayed = message.topic == self.settings.topic_ready and self.control.replayed(
            self.app.conf.id, partition, message.offset
        )
        if rules.is_superseded(known, record.version) and not replayed:
            self.metrics.count("skipped")
            log.info("study %s revision %d already published, skipped", record.study_uid, record.revision)
            return
        started = time.monotonic()
        attempt, counts, step = await self.writer.upload(record, prior_attempts, prior_conflicts)
        if step.action is rules.Action.DONE:
            await self._published(record, known, partition, attempt, counts, time.monotonic() - started)
        elif step.action is rules.Action.PARK:
            await self._parked(message, record, known, attempt, counts, step, first=prior_attempts == 0)
        else:
            await self._failed(record, known, partition, attempt, counts)

    async def _published(
        self,
        record: StudyReady,
        known: rules.UploadOutcome | None,
        partition: int,
        attempt: Attempt,
        counts: rules.AttemptCounts,
        took: float,
    ) -> None:
        uid, now = record.study_uid, iso_utc(time.time())
        url = self.writer.client.absolute(rules.without_history(attempt.location)) if attempt.location else ""
        await self.outcomes.put(rules.published(known, uid, attempt.revision, url, now), partition)
        kind = "superseded" if attempt.superseded else "registered" if record.registration else "published"
        self.metrics.count(kind)
        log.info(
            "study %s revision %d %s in %.2f s (%d attempt(s))",
            uid, record.revision, kind, took, counts.total,
            extra={"study_uid": uid, "revision": record.revision, "stage": "uploader", "outcome": kind,
                   "duration_ms": round(took * 1000, 1), "attempts": counts.total},
        )  # fmt: skip

    async def _parked(
        self,
        message: Any,
        record: StudyReady,
        known: rules.UploadOutcome | None,
        attempt: Attempt,
        counts: rules.AttemptCounts,
        step: rules.Step,
        first: bool,
    ) -> None:
        uid, version, now = record.study_uid, record.version, iso_utc(time.time())
        due = time.time() + step.delay
        await self.outcomes.put(
            rules.not_published(
                known, uid, version, rules.UploadStatus.RETRYING, attempt.reason, attempt.http_status,
                counts.total, now, next_attempt_at=iso_utc(due), detail=attempt.detail,
            ),
            message.partition,
        )  # fmt: skip
        await self.park(message, counts, due)
        self.metrics.count("parked")
        # A warning when the revision is first parked; the outage report summarises the rest.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "study %s revision %d parked after %d attempt(s): %s; next in %.1f s",
            uid, record.revision, counts.total, attempt.reason, step.delay,
            extra={"study_uid": uid, "revision": record.revision, "stage": "uploader", "outcome": "parked",
                   "reason": attempt.reason, "attempts": counts.total},
        )  # fmt: skip

    async def _failed(
        self,
        record: StudyReady,
        known: rules.UploadOutcome | None,
        partition: int,
        attempt: Attempt,
        counts: rules.AttemptCounts,
    ) -> None:
        """A rejection or conflicts past their bound: recorded, then raised for the error policy to dead-letter."""
        uid, version, now = record.study_uid, record.version, iso_utc(time.time())
        reason = attempt.reason
        if attempt.verdict is rules.Verdict.CONFLICT:
            reason = (
                f"{reason} after {counts.conflicts} conflicting attempts: {rules.conflict_cause(attempt.http_status)}"
            )
        await self.outcomes.put(
            rules.not_published(
                known, uid, version, rules.UploadStatus.FAILED, reason, attempt.http_status, counts.total, now,
                detail=attempt.detail,
            ),
            partition,
        )  # fmt: skip
        self.metrics.count("rejected" if attempt.verdict is rules.Verdict.REJECT else "conflicted")
        raise RejectedError(
            reason,
            reason="fhir_rejected" if attempt.verdict is rules.Verdict.REJECT else "fhir_conflict",
            detail=attempt.detail,
            http_status=attempt.http_status,
            operation_outcome=attempt.outcome,
        )

    async def park(self, message: Any, counts: rules.AttemptCounts, due: float) -> None:
        headers = {
            ATTEMPTS_HEADER: str(counts.total).encode(),
            CONFLICTS_HEADER: str(counts.conflicts).encode(),
            DUE_HEADER: f"{due:.3f}".encode(),
        }
        delivered = await self.retry_topic.send(
            key=message.key, value=message.value, headers=headers, partition=message.partition
        )
        await delivered

    # --- the retry line ---

    async def hold_parked(self, message: Any) -> None:
        """Wait (bounded) for a parked revision's due time, then hand it to the uploader; else re-park it."""
        headers = header_map(message.headers or ())
        _, _, due = parse_parked(headers)
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(min(wait, self.settings.uploader_retry_hold_max))
        target = self.retry_topic if due > time.time() else self.due_topic
        delivered = await target.send(
            key=message.key, value=message.value, headers=headers, partition=message.partition
        )
        await delivered

    # --- timers ---

    async def report_outage(self) -> None:
        count, oldest = self.parked_summary()
        if count:
            log.warning("FHIR upload outage: %d study revision(s) parked, oldest for %.0f s", count, oldest)

    async def prune_saved_bundles(self) -> None:
        days = self.settings.bundles_retention_days
        if days <= 0:
            return
        removed = await asyncio.to_thread(prune_bundles, self.settings.bundles_dir, time.time() - days * 86_400)
        if removed:
            self.metrics.bundles_pruned.inc(removed)
            log.info("bundles: %d older than %g day(s) deleted", removed, days)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def create_uploader_topics(settings: Settings, outcomes: UploadOutcomes, topo: Topology) -> None:
    """Create the retry, due and changelog topics with the configured partitions before Faust subscribes.

    Same reason as :func:`agents.aggregator.create_internal_topics`: left to Faust, a first start can
    miss them in its first metadata and fail the first table write.
    """
    specs = [
        (topo.retry.name, topo.retry.config),
        (topo.due.name, topo.due.config),
        (outcomes.changelog_topic_name(), COMPACT),
    ]
    await create_topics_async(settings, specs)


def register(
    app: faust.App, uploader: StudyUploader, input_channel: faust.TopicT, retry_topic: faust.TopicT, topo: Topology
) -> None:
    """The uploader's agents (ready + due, the retry line), its timers and its metrics page on ``app``."""
    settings, policy = uploader.settings, uploader.policy

    @app.on_worker_init.connect
    def prepare_uploader_topics(sender: faust.App, **_: Any) -> None:
        asyncio.run(create_uploader_topics(settings, uploader.outcomes, topo))

    async def each_message(stream: faust.StreamT, stage: str, handle: Callable[[Any], Awaitable[None]]) -> None:
        """One message at a time, held until the policy handled or dead-lettered it."""
        try:
            async for event in stream.events():
                if not await policy.admit((event,)):
                    continue  # read again after the rewind the delivery gate asked for
                await policy.handle(event.message, stage, lambda event=event: handle(event.message))
                policy.release((event,))
        except WorkerStopping:
            await policy.halt()

    @app.agent(input_channel, concurrency=1, name="upload_studies")
    async def upload_studies(stream: faust.StreamT) -> None:
        await each_message(stream, STAGE, uploader.on_ready)

    @app.agent(retry_topic, concurrency=1, name="hold_parked")
    async def hold_parked(stream: faust.StreamT) -> None:
        await each_message(stream, RETRY_STAGE, uploader.hold_parked)

    @app.timer(settings.uploader_outage_report_interval)
    async def report_upload_outage() -> None:
        await policy.timer_round("outage report", uploader.report_outage)

    @app.timer(settings.bundles_retention_check_interval)
    async def prune_bundles_timer() -> None:
        await policy.timer_round("bundle retention", uploader.prune_saved_bundles)

    @app.page("/uploader/metrics")
    async def uploader_metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is ASCII.
        return web.bytes(generate_latest(uploader.metrics.registry), content_type=PROMETHEUS_CONTENT_TYPE)
