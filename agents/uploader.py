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
import errno
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import faust
import httpx
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agents.options import mapping_options
from agents.policy import MessagePolicy, WorkerStopping
from app.settings import Settings
from domain import upload as rules
from domain.dead_letters import header_map
from domain.errors import InvalidRecordError, RejectedError
from domain.fhir_mapping import (
    StoredStudy,
    build_transaction_bundle,
    bundle_file_name,
    is_newer,
    outdated_tags,
)
from domain.fhir_resources import patient_identifier
from domain.ready import StudyReady, decode_study_ready
from domain.study import iso_utc
from infra.control import ControlState
from infra.fhir_http import FhirAuthError, FhirClient, FhirHttpError
from infra.topics import create_topics_async
from tables.outcomes import UploadOutcomes

log = logging.getLogger("studystream.uploader")

STAGE = "uploader"
RETRY_STAGE = "retry"
DUE_HEADER = "studystream-due"
ATTEMPTS_HEADER = "studystream-attempts"
CONFLICTS_HEADER = "studystream-conflicts"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"


def retry_policy(settings: Settings) -> rules.RetryPolicy:
    return rules.RetryPolicy(
        inline_attempts=settings.uploader_inline_attempts,
        inline_budget=settings.uploader_inline_budget,
        conflict_attempts=settings.uploader_conflict_attempts,
        conflict_delay_max=settings.uploader_conflict_delay_max,
        inline_conflict_attempts=3 * settings.uploader_inline_attempts,
        backoff_initial=settings.uploader_backoff_initial,
        backoff_max=settings.uploader_backoff_max,
        backoff_jitter=settings.uploader_backoff_jitter,
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: readers never see half a bundle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


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


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at writing a revision: what the server (or the way to it) said."""

    verdict: rules.Verdict
    http_status: int = 0
    reason: str = ""  # status and issue codes: safe to log
    detail: str = ""  # the server's diagnostics: dead letter and web view (with patient data) only
    outcome: bytes = b""
    retry_after: float | None = None
    location: str = ""
    revision: tuple[int, int] = (0, 0)  # SUCCESS: the revision now on the server
    superseded: bool = False  # SUCCESS: the server already had this revision or a higher one


class _OutageCollector(Collector):
    def __init__(self, parked: Callable[[], tuple[int, float]]) -> None:
        self.parked = parked

    def collect(self) -> Iterator[GaugeMetricFamily]:
        count, oldest = self.parked()
        yield GaugeMetricFamily(
            "studystream_uploader_parked_studies", "Study revisions parked for a retry on this worker", value=count
        )
        yield GaugeMetricFamily(
            "studystream_uploader_oldest_parked_seconds",
            "Age of the oldest parked study revision's first failed attempt (0: none parked)",
            value=oldest,
        )


class UploaderMetrics:
    def __init__(self, parked: Callable[[], tuple[int, float]]) -> None:
        self.registry = CollectorRegistry()
        self.uploads = PromCounter(
            "studystream_uploader_revisions", "Study revisions handled, by outcome", ["outcome"], registry=self.registry
        )
        self.attempts = PromCounter(
            "studystream_uploader_attempts", "FHIR upload attempts, by verdict", ["verdict"], registry=self.registry
        )
        self.tag_cleanup_failures = PromCounter(
            "studystream_uploader_tag_cleanup_failures",
            "Old revision tags that could not be removed ($meta-delete refused or unreachable)",
            registry=self.registry,
        )
        self.bundles_pruned = PromCounter(
            "studystream_uploader_bundles_pruned", "Saved bundles deleted by the retention rule", registry=self.registry
        )
        self.registry.register(_OutageCollector(parked))
        self.counts: Counter[str] = Counter()

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.uploads.labels(outcome).inc()


class StudyWriter:
    """Writes one revision to the FHIR server: attempts (look up, build, save, post, classify) until
    :func:`domain.upload.next_step` says done, park or dead-letter. No Kafka, no table."""

    def __init__(self, settings: Settings, metrics: UploaderMetrics) -> None:
        self.settings = settings
        self.options = mapping_options(settings)
        self.retry_policy = retry_policy(settings)
        self.metrics = metrics
        self.healthy = True  # False after a transport failure: park at once instead of retrying inline
        self._client: FhirClient | None = None

    @property
    def client(self) -> FhirClient:
        if self._client is None:  # created on first use, inside the worker's event loop
            self._client = FhirClient(self.settings, self.options)
        return self._client

    @client.setter
    def client(self, client: FhirClient) -> None:
        self._client = client

    async def upload(
        self, record: StudyReady, prior_attempts: int, prior_conflicts: int
    ) -> tuple[Attempt, rules.AttemptCounts, rules.Step]:
        """Attempts until :func:`domain.upload.next_step` says done, park or dead-letter."""
        started = time.monotonic()
        inline, conflicts = 0, prior_conflicts
        while True:
            attempt = await self.attempt(record)
            inline += 1
            conflicts += attempt.verdict is rules.Verdict.CONFLICT
            counts = rules.AttemptCounts(inline, prior_attempts + inline, conflicts, time.monotonic() - started)
            self.metrics.attempts.labels(attempt.verdict.value).inc()
            if attempt.verdict is not rules.Verdict.TRANSIENT:
                self.healthy = True
            step = rules.next_step(
                attempt.verdict,
                counts,
                self.retry_policy,
                random.random(),  # noqa: S311 - jitter, not cryptography
                attempt.retry_after,
                self.healthy,
            )
            if attempt.verdict is rules.Verdict.TRANSIENT:
                self.healthy = attempt.http_status != 0 and attempt.http_status < 500
            if step.action is not rules.Action.RETRY_INLINE:
                return attempt, counts, step
            log.info(
                "study %s revision %d attempt %d: %s", record.study_uid, record.revision, counts.total, attempt.reason
            )
            await asyncio.sleep(step.delay)

    async def attempt(self, record: StudyReady) -> Attempt:
        """One try: look up, build, save, post, classify. Every failure becomes an :class:`Attempt`."""
        try:
            stored = await self.client.find_study(record.study_uid)
            if stored is not None and not is_newer(record.version, stored):
                return Attempt(
                    rules.Verdict.SUCCESS, location=f"ImagingStudy/{stored.id}", revision=stored.revision,
                    superseded=True,
                )  # fmt: skip
            stored_patient = await self.client.find_patient(*patient_identifier(record, self.options))
            bundle = build_transaction_bundle(record, self.options, stored, stored_patient)
            body = orjson.dumps(bundle, option=orjson.OPT_INDENT_2)
            path = self.settings.bundles_dir / bundle_file_name(record.study_uid, record.version)
            try:
                await asyncio.to_thread(write_atomically, path, body)
            except OSError as exc:
                return Attempt(
                    rules.Verdict.TRANSIENT, reason=f"bundle not saved: {errno.errorcode.get(exc.errno or 0)}"
                )
            response = await self.client.transaction(body)
        except FhirHttpError as exc:  # the lookup was refused
            return self.classify(exc.response)
        except FhirAuthError as exc:
            return Attempt(rules.Verdict.TRANSIENT, reason=str(exc))
        except httpx.HTTPError as exc:
            return Attempt(rules.Verdict.TRANSIENT, reason=f"FHIR server unreachable: {type(exc).__name__}")
        attempt = self.classify(response)
        if attempt.verdict is rules.Verdict.SUCCESS:
            try:
                location = rules.study_location(orjson.loads(response.content))
            except orjson.JSONDecodeError:
                # Written or not? The next attempt's look-up tells (and finds it superseded if it was).
                return Attempt(rules.Verdict.TRANSIENT, response.status_code, "2xx without a transaction-response")
            await self.remove_outdated_tags(stored, bundle)
            return Attempt(rules.Verdict.SUCCESS, response.status_code, location=location, revision=record.version)
        return attempt

    @staticmethod
    def classify(response: httpx.Response) -> Attempt:
        status = response.status_code
        outcome = rules.operation_outcome(response.content)
        codes = rules.outcome_issue_codes(outcome)
        return Attempt(
            rules.classify_status(status),
            status,
            reason=f"HTTP {status}" + (f" ({codes})" if codes else ""),
            detail=rules.outcome_diagnostics(outcome),
            outcome=orjson.dumps(outcome)[: rules.OPERATION_OUTCOME_MAX_BYTES] if outcome else b"",
            retry_after=rules.retry_after_seconds(response.headers.get("Retry-After"), time.time()),
        )

    async def remove_outdated_tags(self, stored: StoredStudy | None, bundle: dict[str, Any]) -> None:
        """Remove the revision tags the server carried over from earlier versions (best effort, counted)."""
        if stored is None:
            return
        written = bundle["entry"][-1]["resource"]
        outdated = outdated_tags(stored, written, self.options)
        if not outdated:
            return
        try:
            response = await self.client.delete_tags(stored.id, outdated)
            ok = response.status_code < 300
        except httpx.HTTPError:
            ok = False
        if not ok:
            self.metrics.tag_cleanup_failures.inc()
            log.warning("ImagingStudy/%s: %d old revision tag(s) not removed", stored.id, len(outdated))


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
        now = iso_utc(time.time())
        uid, version = record.study_uid, record.version
        if step.action is rules.Action.DONE:
            url = self.writer.client.absolute(rules.without_history(attempt.location)) if attempt.location else ""
            await self.outcomes.put(rules.published(known, uid, attempt.revision, url, now), partition)
            kind = "superseded" if attempt.superseded else "published"
            self.metrics.count(kind)
            log.info(
                "study %s revision %d %s in %.2f s (%d attempt(s))",
                uid, record.revision, kind, time.monotonic() - started, counts.total,
            )  # fmt: skip
            return
        if step.action is rules.Action.PARK:
            due = time.time() + step.delay
            await self.outcomes.put(
                rules.not_published(
                    known, uid, version, rules.UploadStatus.RETRYING, attempt.reason, attempt.http_status,
                    counts.total, now, next_attempt_at=iso_utc(due), detail=attempt.detail,
                ),
                partition,
            )  # fmt: skip
            await self.park(message, counts, due)
            self.metrics.count("parked")
            # A warning when the revision is first parked; the outage report summarises the rest.
            log.log(
                logging.WARNING if prior_attempts == 0 else logging.DEBUG,
                "study %s revision %d parked after %d attempt(s): %s; next in %.1f s",
                uid, record.revision, counts.total, attempt.reason, step.delay,
            )  # fmt: skip
            return
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


async def create_uploader_topics(settings: Settings, outcomes: UploadOutcomes, due_topic: str) -> None:
    """Create the retry, due and changelog topics with the configured partitions before Faust subscribes.

    Same reason as :func:`agents.aggregator.create_internal_topics`: left to Faust, a first start can
    miss them in its first metadata and fail the first table write.
    """
    config = {"max.message.bytes": str(settings.max_message_bytes)}
    specs = [
        (settings.topic_retry, config),
        (due_topic, config),
        (outcomes.changelog_topic_name(), {"cleanup.policy": "compact"}),
    ]
    await create_topics_async(settings, specs)


def register(
    app: faust.App, uploader: StudyUploader, input_channel: faust.TopicT, retry_topic: faust.TopicT, due_topic: str
) -> None:
    """The uploader's agents (ready + due, the retry line), its timers and its metrics page on ``app``."""
    settings, policy = uploader.settings, uploader.policy

    @app.on_worker_init.connect
    def prepare_uploader_topics(sender: faust.App, **_: Any) -> None:
        asyncio.run(create_uploader_topics(settings, uploader.outcomes, due_topic))

    async def each_message(stream: faust.StreamT, stage: str, handle: Callable[[Any], Awaitable[None]]) -> None:
        """One message at a time, held until the policy handled or dead-lettered it."""
        try:
            async for event in stream.events():
                policy.hold((event,))
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
