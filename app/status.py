"""``studystream status``: is the pipeline healthy? One screen for a person, ``--json`` for a script.

It asks, at once and each within ``status_timeout``: the broker (bootstrap servers), the FHIR server
(``GET [base]/metadata`` with the configured authentication), each receiver's ``/health``
(``status_receiver_urls``), the workers' consumer group (members, partitions, lag per topic and
partition), the DLQ (records of the last ``status_dlq_window`` seconds), and the workers' web API
(``/health``, ``/api/studies``: counts, parked uploads, failed studies' UIDs; with the web view's
credentials). :func:`domain.health.judge` decides; the exit status is its level: 0 healthy,
1 degraded, 2 down. Counts and study UIDs only: no patient data is printed, whatever the workers send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import click
import httpx

from adapters import http_status as web
from adapters.kafka_status import kafka_status
from app.settings import Settings, get_settings
from app.status_view import document, render
from domain.health import GroupInfo, ReceiverHealth, Snapshot, StudyCounts, Thresholds, WorkerMember, judge
from domain.health_decode import (
    WorkerStudies,
    decode_receiver_health,
    decode_studies_answer,
    decode_worker_health,
    member_urls,
    merge_studies,
)


def _split(value: str) -> list[str]:
    return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]


def receiver_urls(settings: Settings) -> list[str]:
    """The receivers' ``/health`` URLs: configured, else the local receiver's slots, else none."""
    configured = settings.status_receiver_urls.strip()
    if configured.lower() == "none":
        return []
    if configured:
        return _split(configured)
    if not settings.receiver_metrics_port:
        return []
    port = settings.receiver_metrics_port
    return [f"http://127.0.0.1:{port + slot}/health" for slot in range(settings.receiver_processes)]


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(
        partition_lag=settings.status_lag_threshold,
        outbox_depth=settings.status_outbox_threshold,
        quarantine_depth=settings.status_quarantine_threshold,
        dead_letters=settings.status_dlq_threshold,
        parked=settings.status_parked_threshold,
        failed=settings.status_failed_threshold,
    )


async def probe_receiver(http: httpx.AsyncClient, settings: Settings, url: str) -> ReceiverHealth:
    shown = web.without_credentials(url)
    answer = await web.get(http, url, settings.status_timeout, settings.status_max_body_bytes)
    if answer.error:
        return ReceiverHealth(shown, False, error=answer.error)
    return decode_receiver_health(shown, answer.status, answer.body)


async def probe_member(http: httpx.AsyncClient, settings: Settings, member: WorkerMember) -> WorkerMember:
    if not member.url:
        return member
    answer = await web.get(http, f"{member.url}/health", settings.status_timeout, settings.status_max_body_bytes)
    state = f"unreachable ({answer.error})" if answer.error else decode_worker_health(answer.status, answer.body)
    return dataclasses.replace(member, state=state)


async def probe_studies(http: httpx.AsyncClient, settings: Settings, url: str) -> WorkerStudies | str:
    """One worker's decoded ``/api/studies``, or why there is none (a string)."""
    answer = await web.get(
        http, f"{url}/api/studies", settings.status_timeout, settings.status_max_body_bytes, web.web_headers(settings)
    )
    shown = web.without_credentials(url)
    if answer.error:
        return f"{shown}: {answer.error}"
    if answer.status in (401, 403):
        return f"{shown}: HTTP {answer.status} (set STUDYSTREAM_WEB_TOKEN or the basic credentials)"
    if answer.status != 200:
        return f"{shown}: HTTP {answer.status}"
    decoded = decode_studies_answer(answer.body)
    return decoded if decoded is not None else f"{shown}: unreadable answer"


async def _workers(
    http: httpx.AsyncClient, settings: Settings, group: GroupInfo | None
) -> tuple[GroupInfo | None, StudyCounts | None]:
    """The members' own health and the studies, from the workers' web API."""
    configured = _split(settings.status_worker_urls)
    if group is None or (not configured and (group.error or not group.members)):
        return group, None
    urls = configured or member_urls(group.members)
    members, answers = await asyncio.gather(
        asyncio.gather(*(probe_member(http, settings, m) for m in group.members)),
        asyncio.gather(*(probe_studies(http, settings, url) for url in urls)),
    )
    return dataclasses.replace(group, members=tuple(members)), merge_studies(answers, settings.status_uid_limit)


async def snapshot(settings: Settings, now: float) -> Snapshot:
    """Everything, probed concurrently; never raises for an unreachable component."""
    async with web.client(settings) as http:
        kafka, fhir, receivers = await asyncio.gather(
            kafka_status(settings, now),
            web.fhir_status(settings, http),
            asyncio.gather(*(probe_receiver(http, settings, url) for url in receiver_urls(settings))),
        )
        group, studies = await _workers(http, settings, kafka.group)
    return Snapshot(kafka.broker, fhir, tuple(receivers), group, kafka.lag, studies, kafka.dead_letters)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts) instead of the screen.")
def status(as_json: bool) -> None:
    """Broker, FHIR, receivers, workers, lag, studies and dead letters on one screen.

    Exit status: 0 healthy, 1 degraded (lag, outbox or quarantine above its threshold, parked,
    failed or conflicting studies, dead letters in the last hour, unreadable health), 2 down (the
    broker, the FHIR server or a receiver unreachable, no worker in the consumer group).
    Thresholds and timeouts: the STUDYSTREAM_STATUS_* settings.
    """
    settings = get_settings()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a down broker is reported, not logged 20 times
    now = time.time()
    seen = asyncio.run(snapshot(settings, now))
    verdict = judge(seen, thresholds(settings))
    if as_json:
        click.echo(document(seen, verdict, now))
    else:
        render(seen, verdict, now)
    raise SystemExit(int(verdict.level))
