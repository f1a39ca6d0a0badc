"""The FHIR uploader: imaging.study.ready → transaction Bundle → FHIR server (a thin shell over domain.fhir_mapping).

Per study revision: look up the stored ImagingStudy (its StudyStream revision and version), skip
if the server already has this revision or a higher one, else build the Bundle, save it under
``bundles_dir`` (``<study_uid>-r<revision>.json``, atomically, off the event loop), and POST it.
The outcome is written to the co-partitioned ``upload-outcomes`` table (web view) and counted.

Failures: connection errors, timeouts, 408/429/5xx (and 401/403) are retried inline with
exponential backoff and jitter, bounded by ``uploader_inline_budget`` so a partition is never held
near Faust's rebalance or poll timeouts; then the revision is parked in the retry topic with a due
time. The retry line (agent :func:`hold_parked`) holds each parked message at most
``uploader_retry_hold_max`` seconds, and moves it to the internal due topic once due; the uploader
reads the ready and due topics through one channel, so it is the only writer of the table.
409/412 (concurrent writes, e.g. two studies of one new patient on two workers) are retried at
once. Other 4xx, and revisions out of attempts, go to ``imaging.dlq`` with the OperationOutcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import httpx
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter

from app.settings import Settings
from app.stream_app import app, control, settings, topics, upload_due_topic_name, uploader_channels
from domain import upload as policy
from domain.errors import InvalidEventError
from domain.fhir_mapping import MappingOptions, build_transaction_bundle, bundle_file_name, is_newer
from domain.ready import StudyReady, decode_study_ready
from domain.study import iso_utc
from infra.fhir_http import FhirClient, FhirHttpError
from infra.topics import create_topics_async
from tables.outcomes import UploadOutcomes

log = logging.getLogger(__name__)

DUE_HEADER = "studystream-due"
ATTEMPTS_HEADER = "studystream-attempts"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"
CONFLICT_DELAY_MAX = 0.25  # seconds: a 409/412 loser retries almost at once


def mapping_options(settings: Settings) -> MappingOptions:
    return MappingOptions(
        default_patient_system=settings.fhir_default_patient_system,
        default_accession_system=settings.fhir_default_accession_system,
        local_issuer_prefix=settings.fhir_local_issuer_prefix,
        default_timezone=settings.fhir_default_timezone,
        dicomweb_base_url=settings.fhir_dicomweb_base_url.rstrip("/"),
        revision_tag_system=settings.fhir_revision_tag_system,
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: readers never see half a bundle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Attempted:
    """What :meth:`StudyUploader.upload` ended with."""

    kind: str  # "published", "superseded", "rejected", "exhausted", "park"
    attempts: int  # attempts of this revision in all, parked ones included
    location: str = ""
    revision: int = 0  # published: the revision now on the server
    http_status: int = 0
    reason: str = ""
    outcome: dict[str, Any] | None = None
    delay: float = 0.0  # park: seconds until the next attempt


class UploaderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.uploads = PromCounter(
            "studystream_uploader_revisions", "Study revisions handled, by outcome", ["outcome"], registry=self.registry
        )
        self.attempts = PromCounter(
            "studystream_uploader_attempts", "FHIR upload attempts, by verdict", ["verdict"], registry=self.registry
        )
        self.counts: Counter[str] = Counter()

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.uploads.labels(outcome).inc()


class StudyUploader:
    def __init__(self, settings: Settings, outcomes: UploadOutcomes) -> None:
        self.settings = settings
        self.options = mapping_options(settings)
        self.outcomes = outcomes
        self.metrics = UploaderMetrics()
        self.healthy = True  # False after a transport failure: park at once instead of retrying inline
        self._client: FhirClient | None = None

    @property
    def client(self) -> FhirClient:
        if self._client is None:  # created on first use, inside the worker's event loop
            self._client = FhirClient(self.settings, self.options)
        return self._client

    # --- imaging.study.ready and the due topic ---

    async def on_ready(self, message: Any) -> None:
        try:
            record = decode_study_ready(message.value)
        except InvalidEventError as exc:
            self.metrics.count("invalid")
            await self.dead_letter(message, str(exc))
            return
        headers = _headers(message)
        prior_attempts = int(headers.get(ATTEMPTS_HEADER, b"0") or 0)
        known = self.outcomes.get(record.study_uid)
        # Replay (issue 7): a record re-read by `studystream replay` is checked against the FHIR server
        # (upload() finds it "superseded" there if present), not skipped on the table's word.
        replayed = message.topic == settings.topic_ready and control.replayed(
            app.conf.id, message.partition, message.offset
        )
        if policy.is_superseded(known, record.revision) and not replayed:
            self.metrics.count("skipped")
            log.info("study %s revision %d already published, skipped", record.study_uid, record.revision)
            return
        started = time.monotonic()
        result = await self.upload(record, prior_attempts)
        now = iso_utc(time.time())
        uid = record.study_uid
        if result.kind in ("published", "superseded"):
            url = self.client.absolute(policy.without_history(result.location)) if result.location else ""
            self.outcomes.put(policy.published(known, uid, result.revision, url, now))
            self.metrics.count(result.kind)
            log.info(
                "study %s revision %d %s in %.2f s (%d attempt(s))",
                uid, record.revision, result.kind, time.monotonic() - started, result.attempts,
            )  # fmt: skip
        elif result.kind == "park":
            due = time.time() + result.delay
            self.outcomes.put(
                policy.not_published(
                    known, uid, record.revision, policy.UploadStatus.RETRYING, result.reason,
                    result.http_status, result.attempts, now, next_attempt_at=iso_utc(due),
                )
            )  # fmt: skip
            await self.park(message, result.attempts, due)
            self.metrics.count("parked")
            log.warning(
                "study %s revision %d parked after %d attempt(s): %s; next in %.1f s",
                uid, record.revision, result.attempts, result.reason, result.delay,
            )  # fmt: skip
        else:  # rejected or exhausted
            self.outcomes.put(
                policy.not_published(
                    known, uid, record.revision, policy.UploadStatus.FAILED, result.reason,
                    result.http_status, result.attempts, now,
                )
            )  # fmt: skip
            self.metrics.count(result.kind)
            await self.dead_letter(message, result.reason, result.outcome, result.http_status)

    async def upload(self, record: StudyReady, prior_attempts: int) -> Attempted:
        """Post one revision with bounded inline retries; never longer than ``uploader_inline_budget``."""
        s = self.settings
        deadline = time.monotonic() + s.uploader_inline_budget
        inline_limit = s.uploader_inline_attempts if self.healthy else 1
        path = s.bundles_dir / bundle_file_name(record.study_uid, record.revision)
        attempt = 0
        while True:
            attempt += 1
            total = prior_attempts + attempt
            status, reason, outcome, retry_after = 0, "", None, None
            try:
                stored = await self.client.find_study(record.study_uid)
                if stored is not None and not is_newer(record.revision, stored):
                    self.healthy = True
                    return Attempted(
                        "superseded", total, location=f"ImagingStudy/{stored.id}", revision=stored.revision
                    )
                body = orjson.dumps(build_transaction_bundle(record, self.options, stored), option=orjson.OPT_INDENT_2)
                await asyncio.to_thread(write_atomically, path, body)
                response = await self.client.transaction(body)
            except FhirHttpError as exc:  # the lookup was refused
                response = exc.response
            except httpx.TransportError as exc:
                response = None
                reason = f"FHIR server unreachable: {type(exc).__name__}"
            if response is not None:
                status = response.status_code
                verdict = policy.classify_status(status)
                outcome = policy.operation_outcome(response.content)
                reason = f"HTTP {status} {policy.outcome_diagnostics(outcome)}".strip()
                retry_after = policy.retry_after_seconds(response.headers.get("Retry-After"), time.time())
            else:
                verdict = policy.Verdict.RETRY
            self.metrics.attempts.labels(verdict.value).inc()
            if verdict is policy.Verdict.SUCCESS:
                self.healthy = True
                location = policy.study_location(orjson.loads(response.content)) if response is not None else ""
                return Attempted("published", total, location=location, revision=record.revision, http_status=status)
            if verdict is policy.Verdict.REJECT:
                log.warning(
                    "study %s revision %d rejected: HTTP %d (%s)",
                    record.study_uid, record.revision, status, policy.outcome_issue_codes(outcome),
                )  # fmt: skip
                return Attempted("rejected", total, http_status=status, reason=reason, outcome=outcome)
            self.healthy = response is not None and status < 500
            if total >= s.uploader_max_attempts:
                return Attempted(
                    "exhausted", total, http_status=status, reason=f"gave up after {total} attempts: {reason}",
                    outcome=outcome,
                )  # fmt: skip
            if verdict is policy.Verdict.CONFLICT:
                # Another writer won a race (same new patient, or the same study): read again almost at once.
                delay = random.uniform(0, CONFLICT_DELAY_MAX)  # noqa: S311 - jitter, not crypto
                may_retry_inline = attempt < 3 * s.uploader_inline_attempts
            else:
                delay = policy.backoff_delay(
                    total, s.uploader_backoff_initial, s.uploader_backoff_max, s.uploader_backoff_jitter,
                    random.random(),  # noqa: S311
                )  # fmt: skip
                if retry_after is not None:
                    delay = max(delay, min(retry_after, s.uploader_backoff_max))
                may_retry_inline = attempt < inline_limit
            log.info("study %s revision %d attempt %d: %s", record.study_uid, record.revision, total, verdict.value)
            if not may_retry_inline or time.monotonic() + delay > deadline:
                return Attempted("park", total, http_status=status, reason=reason, delay=delay)
            await asyncio.sleep(delay)

    async def park(self, message: Any, attempts: int, due: float) -> None:
        headers = {ATTEMPTS_HEADER: str(attempts).encode(), DUE_HEADER: f"{due:.3f}".encode()}
        delivered = await uploader_channels.retry.send(
            key=message.key, value=message.value, headers=headers, partition=message.partition
        )
        await delivered

    async def dead_letter(
        self, message: Any, reason: str, outcome: dict[str, Any] | None = None, http_status: int = 0
    ) -> None:
        """The original record to the DLQ; the reason and the server's OperationOutcome in headers."""
        headers = {
            "studystream-reason": reason.encode("utf-8", "replace")[:1000],
            "studystream-source": f"{message.topic}[{message.partition}]@{message.offset}".encode(),
            "studystream-stage": b"uploader",
        }
        if http_status:
            headers["studystream-http-status"] = str(http_status).encode()
        if outcome is not None:
            headers["studystream-operation-outcome"] = orjson.dumps(outcome)[: policy.OPERATION_OUTCOME_MAX_BYTES]
        value = message.value if message.value is not None else b""
        delivered = await topics.dlq.send(key=message.key, value=value, headers=headers)
        await delivered
        log.warning("dead-lettered %s[%d]@%d (uploader)", message.topic, message.partition, message.offset)

    # --- the retry line ---

    async def hold_parked(self, message: Any) -> None:
        """Wait (bounded) for a parked revision's due time, then hand it to the uploader; else re-park it."""
        headers = _headers(message)
        try:
            due = float(headers.get(DUE_HEADER, b"0") or 0)
        except ValueError:
            due = 0.0
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(min(wait, self.settings.uploader_retry_hold_max))
        target = uploader_channels.retry if due > time.time() else uploader_channels.due
        delivered = await target.send(
            key=message.key, value=message.value, headers=headers, partition=message.partition
        )
        await delivered


def _headers(message: Any) -> dict[str, bytes]:
    raw = message.headers or {}
    items = raw.items() if isinstance(raw, dict) else raw
    return {str(k): (v if isinstance(v, bytes) else str(v).encode()) for k, v in items}


async def create_uploader_topics(settings: Settings, outcomes: UploadOutcomes) -> None:
    """Create the retry, due and changelog topics with the configured partitions before Faust subscribes.

    Same reason as :func:`agents.aggregator.create_internal_topics`: left to Faust, a first start can
    miss them in its first metadata and fail the first table write.
    """
    config = {"max.message.bytes": str(settings.max_message_bytes)}
    specs = [
        (settings.topic_retry, config),
        (upload_due_topic_name(settings), config),
        (outcomes.changelog_topic_name(), {"cleanup.policy": "compact"}),
    ]
    await create_topics_async(settings, specs)


uploader = StudyUploader(settings, UploadOutcomes(app, settings))


@app.on_worker_init.connect
def _prepare_uploader_topics(sender: faust.App, **_: Any) -> None:
    asyncio.run(create_uploader_topics(settings, uploader.outcomes))


@app.agent(uploader_channels.input, concurrency=1)
async def upload_studies(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = event.message
        try:
            await uploader.on_ready(message)
        except InvalidEventError as exc:  # corrupt stored outcome: skip the message, keep the stream alive
            uploader.metrics.count("errors")
            log.error("%s[%d]@%d skipped: %s", message.topic, message.partition, message.offset, exc)


@app.agent(uploader_channels.retry, concurrency=1)
async def hold_parked(stream: faust.StreamT) -> None:
    async for event in stream.events():
        await uploader.hold_parked(event.message)


@app.page("/uploader/metrics")
async def uploader_metrics(web: Any, request: Any) -> Any:
    # aiohttp refuses a charset inside content_type; the exposition format is ASCII.
    return web.bytes(generate_latest(uploader.metrics.registry), content_type=PROMETHEUS_CONTENT_TYPE)


__all__ = ["hold_parked", "upload_studies", "uploader", "uploader_metrics"]
