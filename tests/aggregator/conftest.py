"""Fixtures for the aggregator: event factories, `studystream worker` subprocesses, a ready-topic collector."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.settings import Settings
from app.worker import READY_MESSAGE
from domain.events import InstanceEvent, encode_instance_event
from domain.ready import StudyReady, decode_study_ready
from tests.conftest import ROOT, create_test_topics, free_port, pipeline_settings, wait_for, worker_env
from tests.factories import CT_IMAGE_STORAGE, SyntheticStudy, interleave, make_event  # noqa: F401 - re-exported

STUDYSTREAM = str(Path(sys.executable).with_name("studystream"))
WORKER_START_TIMEOUT = 180.0  # a loaded 2-core CI machine can take minutes for a first rebalance


# --- Kafka I/O -----------------------------------------------------------------------------------


async def _produce(settings: Settings, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce_events(settings: Settings, events: Sequence[InstanceEvent]) -> None:
    asyncio.run(_produce(settings, settings.topic_raw, [(e.key, encode_instance_event(e)) for e in events]))


def produce_raw(settings: Settings, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
    asyncio.run(_produce(settings, settings.topic_raw, messages))


class TopicCollector:
    """Reads a topic from the beginning in a background thread; ``records`` grows as messages arrive."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.messages: list[tuple[bytes | None, bytes, dict[str, bytes], int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_bytes=self.settings.max_message_bytes,
            max_partition_fetch_bytes=self.settings.max_message_bytes,
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for r in records:
                        self.messages.append((r.key, r.value, dict(r.headers), r.partition))
        finally:
            await consumer.stop()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def ready(self) -> list[StudyReady]:
        return [decode_study_ready(value) for _, value, _, _ in list(self.messages)]

    def ready_for(self, study_uid: str) -> list[StudyReady]:
        return [r for r in self.ready if r.study_uid == study_uid]


# --- Worker subprocesses -------------------------------------------------------------------------


class Worker:
    """One `studystream worker` subprocess with its own web port, hence its own table directory.

    A restart keeps the port, so the worker reopens its RocksDB files and reads the changelog from there.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, command: Sequence[str] = ()) -> None:
        self.env = env
        self.command = list(command) or [STUDYSTREAM, "worker"]  # or Faust's own CLI
        self.web_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        # run_worker does not create the table directory's parents; Faust only creates the last level.
        if self.command[0] == STUDYSTREAM:
            Path(self.env["STUDYSTREAM_STATE_DIR"]).mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.command, "-l", "info", "--web-port", str(self.web_port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_started(self, starts: int = 1) -> None:
        """Wait until the worker logs that it is ready (``starts``-th time in this log)."""
        wait_for(
            lambda: self.log().count(READY_MESSAGE) >= starts or self.exited(),
            WORKER_START_TIMEOUT,
            what=f"worker on port {self.web_port} to start",
        )
        assert not self.exited(), f"worker exited:\n{self.log()[-3000:]}"

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def kill(self) -> None:
        """kill -9: no shutdown, no commit, no leave-group."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def aggregator_settings(kafka: Settings, tmp_path: Path) -> Settings:
    """Settings of an isolated pipeline: unique app id, topics and state directory; 1 s quiet period."""
    settings = pipeline_settings(kafka, "agg", tmp_path, quiet_period=1.0)
    asyncio.run(create_test_topics(settings))
    return settings


@pytest.fixture
def workers(aggregator_settings: Settings, tmp_path: Path) -> Iterator[list[Worker]]:
    """Factory list: append ``Worker``s; every one is stopped at teardown (its log printed on failure)."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def new_worker(started: list[Worker], settings: Settings, tmp_path: Path, name: str) -> Worker:
    worker = Worker(worker_env(settings), tmp_path, name)
    started.append(worker)
    return worker


@pytest.fixture
def ready_topic(aggregator_settings: Settings) -> Iterator[TopicCollector]:
    collector = TopicCollector(aggregator_settings, aggregator_settings.topic_ready)
    yield collector
    collector.close()


@pytest.fixture
def dlq_topic(aggregator_settings: Settings) -> Iterator[TopicCollector]:
    collector = TopicCollector(aggregator_settings, aggregator_settings.topic_dlq)
    yield collector
    collector.close()
