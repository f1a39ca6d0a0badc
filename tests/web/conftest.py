"""Fixtures for the web view: `studystream worker` subprocesses with a token, basic credentials and
`--web-host localhost`, studies spread over partitions, and an authenticated HTTP client."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.settings import Settings
from domain.events import InstanceEvent
from tests.aggregator.conftest import Worker, make_event, produce_events
from tests.conftest import ROOT, create_test_topics, pipeline_settings, unique_uid, wait_for, worker_env

ARTIFACTS = ROOT / "tests" / "artifacts" / "web"
QUIET_PERIOD = 1.0


@dataclass(frozen=True)
class WebAuth:
    token: str
    user: str
    password: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def basic(self) -> dict[str, str]:
        encoded = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}


@dataclass
class WebCluster:
    """Workers of one isolated pipeline; ``get`` asks a worker with the bearer token unless told otherwise."""

    settings: Settings
    auth: WebAuth
    env: dict[str, str]
    tmp_path: Path
    workers: list[Worker]

    def start_worker(self, name: str) -> Worker:
        worker = Worker(self.env, self.tmp_path, name)
        self.workers.append(worker)
        worker.start()
        return worker

    def url(self, worker: Worker, path: str) -> str:
        return f"http://localhost:{worker.web_port}{path}"

    def get(self, worker: Worker, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.url(worker, path), headers=self.auth.bearer if headers is None else headers, timeout=15)

    def json(self, worker: Worker, path: str) -> Any:
        response = self.get(worker, path)
        assert response.status_code == 200, f"{path}: HTTP {response.status_code} {response.text[:300]}"
        return response.json()

    def produce(self, events: list[InstanceEvent]) -> None:
        produce_events(self.settings, events)


def isolated_settings(kafka: Settings, tmp_path: Path) -> Settings:
    """Settings of a pipeline nobody else uses: unique app id, topics, state and bundles directories."""
    settings = pipeline_settings(kafka, "web", tmp_path, quiet_period=QUIET_PERIOD)
    asyncio.run(create_test_topics(settings))
    return settings


@contextmanager
def web_cluster(kafka: Settings, tmp_path: Path) -> Iterator[WebCluster]:
    """An isolated pipeline with no worker started yet; every worker started is stopped on exit."""
    settings = isolated_settings(kafka, tmp_path)
    auth = WebAuth(token=secrets.token_urlsafe(16), user="operator", password=secrets.token_urlsafe(12))
    env = worker_env(settings)
    env.update(
        STUDYSTREAM_TOPIC_RETRY=settings.topic_retry,
        STUDYSTREAM_BUNDLES_DIR=str(settings.bundles_dir),
        STUDYSTREAM_WEB_TOKEN=auth.token,
        STUDYSTREAM_WEB_BASIC_USER=auth.user,
        STUDYSTREAM_WEB_BASIC_PASSWORD=auth.password,
        STUDYSTREAM_WEB_HOST="localhost",
        STUDYSTREAM_WEB_REFRESH_SECONDS="1",
    )
    cluster = WebCluster(settings, auth, env, tmp_path, [])
    try:
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()


@pytest.fixture(scope="module")
def one_worker(kafka: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebCluster, Worker]]:
    """One worker shared by a module's tests; each test uses its own studies."""
    with web_cluster(kafka, tmp_path_factory.mktemp("web-one")) as cluster:
        worker = cluster.start_worker("worker")
        worker.wait_started()
        yield cluster, worker


@pytest.fixture
def two_worker_cluster(kafka: Settings, tmp_path: Path) -> Iterator[WebCluster]:
    with web_cluster(kafka, tmp_path) as cluster:
        yield cluster


def partition_of(uid: str, partitions: int) -> int:
    """The partition aiokafka's default partitioner (the receiver's and Faust's) gives a study UID key."""
    every = list(range(partitions))
    return DefaultPartitioner()(uid.encode("ascii"), every, every)


def study_per_partition(partitions: int) -> dict[int, str]:
    """One fresh study UID for every partition, so every worker owns some of them."""
    found: dict[int, str] = {}
    while len(found) < partitions:
        uid = unique_uid()
        found.setdefault(partition_of(uid, partitions), uid)
    return found


def study_events(uid: str, series: int = 2, per_series: int = 2) -> list[InstanceEvent]:
    return [
        make_event(uid, f"{uid}.{s + 1}", n + 1, series_number=s + 1) for s in range(series) for n in range(per_series)
    ]


def wait_listed(
    cluster: WebCluster,
    worker: Worker,
    uids: set[str],
    status: str | None = None,
    timeout: float = 60,
    instance_count: int | None = None,
):
    """Wait until ``worker``'s /api/studies lists all of ``uids`` (with ``status``) and is complete.

    A study is listed from its first instance on, so a test that then asserts counts passes ``instance_count``
    to wait until every study has all of its instances in.
    """

    def listed() -> dict[str, Any] | None:
        response = cluster.get(worker, "/api/studies")
        if response.status_code != 200:
            return None
        body = response.json()
        rows = {r["study_uid"]: r for r in body["studies"] if r["study_uid"] in uids}
        wanted = all(
            status in (None, r["status"]) and instance_count in (None, r["instance_count"]) for r in rows.values()
        )
        if body["complete"] and len(rows) == len(uids) and wanted:
            return body
        return None

    return wait_for(listed, timeout, interval=0.5, what=f"{len(uids)} studies listed ({status or 'any status'})")
