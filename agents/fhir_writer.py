"""One study revision written to the FHIR server: attempts (look up, build, save, post, classify) until
:func:`domain.upload.next_step` says done, park or dead-letter. No Kafka, no table: the uploader agent
(:mod:`agents.uploader`) owns what happens around it."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.fhir_http import FhirAuthError, FhirClient, FhirHttpError
from agents.options import mapping_options
from app.settings import Settings
from domain import upload as rules
from domain.fhir_mapping import StoredStudy, build_transaction_bundle, bundle_file_name, is_newer, outdated_tags
from domain.fhir_resources import patient_identifier
from domain.ready import StudyReady

log = logging.getLogger(f"studystream.{__name__}")


def retry_policy(settings: Settings) -> rules.RetryPolicy:
    return rules.RetryPolicy(
        inline_attempts=settings.uploader_inline_attempts,
        inline_budget=settings.uploader_inline_budget,
        conflict_attempts=settings.uploader_conflict_attempts,
        conflict_delay_max=settings.uploader_conflict_delay_max,
        inline_conflict_attempts=settings.uploader_inline_conflict_attempts,
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
