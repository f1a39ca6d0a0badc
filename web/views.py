"""The web view's Faust pages, registered on an app by :func:`register`.

==============================  ======================================================================
``/``                           HTML study list (every worker's studies), ``?status=`` filter, auto-refresh
``/studies/{uid}``              HTML study detail, served by the worker owning the study (``table_route``)
``/api/studies``                JSON rows of every study: this worker asks each partition owner
``/api/studies/{uid}``          JSON detail (series, instances), served by the owning worker
``/api/dlq``                    JSON: the newest dead letters with their reasons (all partitions)
``/health``                     open, no credentials: worker state as JSON (200, or 503 while not running)
``/metrics``                    Prometheus text of this worker
==============================  ======================================================================

Every page but ``/health`` requires the bearer token or basic credentials (:mod:`web.auth`).
``/api/studies?scope=local`` is how workers ask each other: only the asked worker's own studies.

Routing by key: Faust's router hashes the UID as the study tables' changelog serializes keys (raw
bytes, the UTF-8 UID) with the producer's partitioner; imaging.raw keys are the same bytes, hashed
by the same default partitioner, and the tables and imaging.raw have the same partition count, so
the router names the worker whose partition holds the study.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from functools import wraps
from typing import TYPE_CHECKING, Any

import aiohttp
import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from app.settings import Settings
from domain.errors import InvalidRecordError
from domain.study import iso_utc
from domain.study_state import StudyHeader, decode_header
from tables.outcomes import UploadOutcomes
from tables.studies import StudyTables
from web import html, render
from web.auth import WebCredentials, challenge, is_authorized
from web.dlq import read_recent_dead_letters
from web.metrics import WebMetrics, consumer_lag, fhir_delay

if TYPE_CHECKING:
    from agents.policy import MessagePolicy
    from agents.uploader import StudyUploader

log = logging.getLogger(f"studystream.{__name__}")

LOCAL_SCOPE = "local"


class StudyWeb:
    """What the pages read: this worker's tables, settings, credentials and metrics."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        tables: StudyTables,
        outcomes: UploadOutcomes,
        aggregator_counts: Counter[str],
        dead_letters: Counter[tuple[str, str]],
        policy: MessagePolicy,
        uploader: StudyUploader,
    ) -> None:
        self.app = app
        self.settings = settings
        self.tables = tables
        self.outcomes = outcomes
        self.uploader = uploader
        self.credentials = WebCredentials.from_settings(settings)
        self.options = render.ViewOptions(
            settings.web_show_patient_data, settings.quiet_period, settings.completeness_policy
        )
        self.metrics = WebMetrics(
            self.local_status_counts,
            lambda: dict(aggregator_counts),
            lambda: dict(dead_letters),
            lambda: dict(policy.timer_failures),
            consumer_lag=lambda: consumer_lag(app.consumer),
            fhir_delays=self.local_fhir_delays,
            delivery=policy.gate.counts,
        )
        self.corrupt_rows = 0

    # --- this worker's studies ---

    def local_headers(self) -> Iterator[StudyHeader]:
        for raw in self.tables.local_headers():
            try:
                yield decode_header(raw)
            except InvalidRecordError:
                self.corrupt_rows += 1  # counted, skipped: one bad row must not take the page down

    def outcome(self, study_uid: str) -> Any:
        try:
            return self.outcomes.get(study_uid)
        except InvalidRecordError:
            return None

    def local_rows(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for header in self.local_headers():
            uid = header.study.uid
            modalities = (s.modality for s in self.tables.study_series(uid, header.partition))
            rows.append(render.study_row(header, self.outcome(uid), modalities, now, self.options))
        return rows

    def local_fhir_delays(self) -> Iterator[float]:
        """Seconds from last instance to FHIR of each published study on this worker's partitions (``/metrics``)."""
        for header in self.local_headers():
            delay = fhir_delay(header, self.outcome(header.study.uid))
            if delay is not None:
                yield delay

    def local_status_counts(self) -> dict[str, int]:
        return render.status_counts(self.local_rows(time.time()))

    def local_detail(self, study_uid: str, now: float) -> dict[str, Any] | None:
        partition = self.partition_of(study_uid)
        header = self.tables.header(study_uid, partition) if partition is not None else None
        if header is None:
            return None
        series = self.tables.study_series(study_uid, header.partition)
        limit = self.settings.web_instance_list_limit
        instances = []
        for i, instance in enumerate(self.tables.study_instances(study_uid, header.partition)):
            if i > limit:  # one past the limit tells the page the list is truncated
                break
            instances.append(instance)
        return render.study_detail(header, self.outcome(study_uid), series, instances, now, self.options, limit)

    def partition_of(self, study_uid: str) -> int | None:
        """The partition of this worker's that holds the study, if any."""
        key = study_uid.encode("ascii")
        for partition in self.tables.store.owned_partitions(self.tables.headers):
            if self.tables.store.get_if_open(self.tables.headers, partition, key) is not None:
                return partition
        return None

    def outage(self) -> dict[str, Any]:
        parked, oldest = self.uploader.parked_summary()
        return {"parked": parked, "oldest_parked_seconds": oldest}

    # --- every worker's studies ---

    def owners(self) -> list[str]:
        """Canonical URLs of the workers that actively own partitions of the study table."""
        metadata = self.app.router.table_metadata(self.tables.headers.name)
        return sorted(url for url, topics in metadata.items() if any(topics.values()))

    async def peer_rows(self, url: str, request: Request, status: str | None) -> list[dict[str, Any]]:
        params = {"scope": LOCAL_SCOPE, **({"status": status} if status else {})}
        headers = {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
        timeout = aiohttp.ClientTimeout(total=self.settings.web_peer_timeout)
        async with self.app.http_client.get(
            f"{url.rstrip('/')}/api/studies", params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            body = await response.json()
        return body["studies"]

    async def cluster_rows(self, request: Request, status: str | None) -> tuple[list[dict[str, Any]], list[str]]:
        """Rows of every owner's studies and the errors of the owners that did not answer."""
        now = time.time()
        me = str(self.app.conf.canonical_url).rstrip("/")
        owners = self.owners()
        errors: list[str] = []
        if not owners:
            errors.append("partition owners unknown (worker starting or rebalancing): showing this worker only")
        peers = [url for url in owners if url.rstrip("/") != me]
        results = await asyncio.gather(*(self.peer_rows(url, request, status) for url in peers), return_exceptions=True)
        listings = [self.local_rows(now)]
        for url, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("worker %s did not list its studies: %s", url, type(result).__name__)
                errors.append(f"worker {url} did not answer ({type(result).__name__}): its studies are missing")
            else:
                listings.append(result)
        rows = render.merge_listings(listings)
        return rows, errors


def study_uid_path(fun: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Answer 400 for a path segment that cannot be a UID, before any routing or table lookup."""

    @wraps(fun)
    async def get(view: View, request: Request, uid: str) -> Response:
        if not render.is_study_uid(uid):
            return view.json({"error": "not a DICOM UID"}, status=400)
        return await fun(view, request, uid=uid)

    return get


def register(app: faust.App, web_state: StudyWeb) -> None:
    """The pages on ``app``, each reading ``web_state``."""
    protected = _protected_view(web_state)
    _register_pages(app, web_state, protected)
    _register_api(app, web_state, protected)
    _register_probes(app, web_state, protected)


def _protected_view(web_state: StudyWeb) -> type[View]:
    class ProtectedView(View):
        """A view that answers 401 unless the request carries the token or the basic credentials."""

        page_name = "protected"

        async def dispatch(self, request: Any) -> Any:
            if not is_authorized(request.headers.get("Authorization"), web_state.credentials):
                web_state.metrics.requests.labels(self.page_name, "401").inc()
                return self.web.text(
                    "authentication required\n",
                    status=401,
                    headers={"WWW-Authenticate": challenge(web_state.credentials)},
                )
            response = await super().dispatch(request)
            web_state.metrics.requests.labels(self.page_name, str(getattr(response, "status", 0))).inc()
            return response

    return ProtectedView


def _register_pages(app: faust.App, web_state: StudyWeb, ProtectedView: type[View]) -> None:
    settings = web_state.settings
    headers_table = web_state.tables.headers

    @app.page("/")
    class StudyListPage(ProtectedView):
        page_name = "index"

        async def get(self, request: Request) -> Response:
            status = render.parse_status(request.query.get("status"))
            rows, errors = await web_state.cluster_rows(request, None)
            counts = render.status_counts(rows)
            shown = render.filter_and_sort(rows, status, settings.web_study_list_limit)
            page = html.index_page(
                shown, counts, status, errors, settings.web_refresh_seconds, iso_utc(time.time()), web_state.outage()
            )
            return self.web.html(page)

    @app.page("/studies/{uid}")
    class StudyDetailPage(ProtectedView):
        page_name = "study"

        @study_uid_path
        @app.table_route(table=headers_table, match_info="uid")
        async def get(self, request: Request, uid: str) -> Response:
            detail = web_state.local_detail(uid, time.time())
            if detail is None:
                return self.web.html(
                    html.message_page("Study not found", f"No study {uid} in the study table."), status=404
                )
            return self.web.html(html.detail_page(detail, settings.web_refresh_seconds))


def _register_api(app: faust.App, web_state: StudyWeb, ProtectedView: type[View]) -> None:
    settings = web_state.settings
    headers_table = web_state.tables.headers

    @app.page("/api/studies")
    class StudyListApi(ProtectedView):
        page_name = "api_studies"

        async def get(self, request: Request) -> Response:
            status = render.parse_status(request.query.get("status"))
            limit = settings.web_study_list_limit
            if request.query.get("scope") == LOCAL_SCOPE:
                rows = web_state.local_rows(time.time())
                return self.json(
                    {"studies": render.filter_and_sort(rows, status, limit), "worker": str(app.conf.canonical_url)}
                )
            rows, errors = await web_state.cluster_rows(request, status)
            return self.json(
                {
                    "studies": render.filter_and_sort(rows, status, limit),
                    "counts": render.status_counts(rows),
                    "upload_outage": web_state.outage(),
                    "complete": not errors,
                    "errors": errors,
                    "generated_at": iso_utc(time.time()),
                }
            )

    @app.page("/api/studies/{uid}")
    class StudyApi(ProtectedView):
        page_name = "api_study"

        @study_uid_path
        @app.table_route(table=headers_table, match_info="uid")
        async def get(self, request: Request, uid: str) -> Response:
            detail = web_state.local_detail(uid, time.time())
            if detail is None:
                return self.json({"error": "study not found", "study_uid": uid}, status=404)
            detail["worker"] = str(app.conf.canonical_url)
            return self.json(detail)

    @app.page("/api/dlq")
    class DeadLetterApi(ProtectedView):
        page_name = "api_dlq"

        async def get(self, request: Request) -> Response:
            try:
                rows = await read_recent_dead_letters(
                    settings, settings.web_dlq_keep, settings.web_peer_timeout, settings.web_show_patient_data
                )
            except Exception as exc:  # noqa: BLE001 - the broker is unreachable: say so, keep the worker serving
                log.warning("cannot read %s: %s", settings.topic_dlq, type(exc).__name__)
                return self.json({"error": f"cannot read the dead-letter topic: {type(exc).__name__}"}, status=503)
            return self.json({"topic": settings.topic_dlq, "dead_letters": rows})


def _register_probes(app: faust.App, web_state: StudyWeb, ProtectedView: type[View]) -> None:
    @app.page("/metrics")
    class MetricsPage(ProtectedView):
        page_name = "metrics"

        async def get(self, request: Request) -> Response:
            body = web_state.metrics.exposition(web_state.uploader.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    class HealthPage(View):
        """Open on purpose (probes carry no credentials); tells nothing about studies or patients."""

        async def get(self, request: Request) -> Response:
            state = "rebalancing" if app.rebalancing else "recovering" if app.in_recovery else "running"
            healthy = state == "running"
            return self.json({"status": "ok" if healthy else state}, status=200 if healthy else 503)

    warned: list[bool] = []  # Faust sends on_worker_init twice (its CLI, then its worker): one line

    @app.on_worker_init.connect
    def warn_if_locked(sender: faust.App, **_: Any) -> None:
        if web_state.credentials.locked and not warned:
            warned.append(True)
            log.warning(
                "web view locked: set STUDYSTREAM_WEB_TOKEN or STUDYSTREAM_WEB_BASIC_USER/_PASSWORD "
                "(or STUDYSTREAM_WEB_AUTH_DISABLED=true for local development)"
            )
