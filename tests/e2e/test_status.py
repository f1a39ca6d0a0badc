"""`studystream status` against the real stack: a receiver and a worker of the test's own (unique app id,
topics and ports), the real broker and HAPI. Healthy after the input is consumed (exit 0, lag 0, the
worker's partitions listed); down (exit 2) with a receiver or the FHIR server where nothing listens, or
with no worker in the group. No patient data in either output, although the worker's API carries it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.aggregator.conftest import STUDYSTREAM, Worker, produce_events
from tests.conftest import ROOT, create_test_topics, free_port, pipeline_settings, unique_uid, wait_for, worker_env
from tests.factories import make_event
from tests.scp.conftest import Receiver

WEB_TOKEN = "status-test-token"
STATUS_TIMEOUT = 5.0
HEALTHY_WITHIN = 180.0  # published on a cold HAPI and the offsets committed, on a loaded 2-core machine


@dataclass
class Stack:
    settings: Settings
    worker: Worker
    receiver: Receiver
    study_uid: str
    patient_terms: tuple[str, ...]

    def env(self, **overrides: str) -> dict[str, str]:
        env = worker_env(self.settings)
        env.update(
            STUDYSTREAM_STATUS_RECEIVER_URLS=f"http://127.0.0.1:{self.receiver.metrics_port}/health",
            STUDYSTREAM_STATUS_TIMEOUT=str(STATUS_TIMEOUT),
        )
        env.update(overrides)
        return env


@dataclass(frozen=True)
class Run:
    code: int
    output: str

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.output)

    def down(self) -> list[str]:
        return [f["component"] for f in self.doc["findings"] if f["level"] == "down"]


def status(env: dict[str, str], *args: str) -> Run:
    done = subprocess.run(
        [STUDYSTREAM, "status", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode in (0, 1, 2), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return Run(done.returncode, done.stdout)


@pytest.fixture(scope="module")
def stack(kafka: Settings, fhir: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker (its web API with a token and patient data on) and one receiver, on this module's topics."""
    tmp = tmp_path_factory.mktemp("status")
    settings = pipeline_settings(
        kafka,
        "status",
        tmp,
        quiet_period=1.0,
        fhir_base_url=fhir.fhir_base_url,
        web_token=WEB_TOKEN,
        web_host="127.0.0.1",
        web_show_patient_data=True,
    )
    asyncio.run(create_test_topics(settings, [settings.topic_raw, settings.topic_ready, settings.topic_dlq]))
    worker = Worker(worker_env(settings), tmp, "worker").start()
    receiver = Receiver(root=tmp / "receiver", topic=settings.topic_raw, broker_url=settings.broker_url)
    receiver.root.mkdir(parents=True)
    try:
        receiver.start()
        worker.wait_started()
        study_uid, series_uid = unique_uid(), unique_uid()
        events = [make_event(study_uid, series_uid, n) for n in range(1, 4)]
        produce_events(settings, events)
        first = events[0]
        yield Stack(settings, worker, receiver, study_uid, (first.patient_name, first.patient_id, first.birth_date))
    finally:
        receiver.stop()
        worker.stop()


def test_status_is_healthy_once_the_input_is_consumed(stack: Stack) -> None:
    def healthy() -> Run | None:
        run = status(stack.env(), "--json")
        doc = run.doc
        return run if run.code == 0 and doc["lag"]["total"] == 0 and doc["studies"]["counts"]["published"] else None

    run = wait_for(healthy, HEALTHY_WITHIN, interval=1.0, what="status --json to exit 0 with the study published")
    assert isinstance(run, Run)
    doc = run.doc
    print(run.output)
    assert doc["status"] == "healthy" and doc["findings"] == []
    assert doc["broker"]["reachable"] and doc["fhir"]["reachable"]
    (receiver,) = doc["receivers"]
    assert receiver["readable"] and receiver["outbox_depth"] == 0 and receiver["quarantine_depth"] == 0
    workers = doc["workers"]
    assert workers["group_id"] == stack.settings.app_id and workers["state"] == "Stable"
    (member,) = workers["members"]
    assert member["url"] == f"http://127.0.0.1:{stack.worker.web_port}" and member["state"] == "ok"
    partitions = stack.settings.topic_partitions
    assert member["partitions"][stack.settings.topic_raw] == list(range(partitions))
    assert member["partitions"][stack.settings.topic_ready] == list(range(partitions))
    raw = [p for p in doc["lag"]["partitions"] if p["topic"] == stack.settings.topic_raw]
    assert len(raw) == partitions and sum(p["end"] for p in raw) == 3 and all(p["lag"] == 0 for p in raw)
    assert doc["studies"]["counts"]["published"] == 1 and doc["studies"]["parked"] == 0
    assert doc["dead_letters"] == {
        "topic": stack.settings.topic_dlq,
        "window_seconds": 3600.0,
        "count": 0,
        "error": "",
    }

    screen = status(stack.env(COLUMNS="120"))
    print(screen.output)
    assert screen.code == 0 and "HEALTHY" in screen.output and stack.settings.topic_raw in screen.output
    for term in stack.patient_terms:
        assert term not in run.output and term not in screen.output, term


def test_status_is_down_when_a_receiver_does_not_answer(stack: Stack) -> None:
    closed = f"http://127.0.0.1:{free_port()}/health"
    run = status(stack.env(STUDYSTREAM_STATUS_RECEIVER_URLS=closed), "--json")
    assert run.code == 2 and run.doc["status"] == "down"
    assert run.down() == ["receivers"]
    assert run.doc["receivers"][0]["reachable"] is False and run.doc["broker"]["reachable"] is True


def test_status_is_down_when_the_fhir_server_does_not_answer(stack: Stack) -> None:
    run = status(stack.env(STUDYSTREAM_FHIR_BASE_URL=f"http://127.0.0.1:{free_port()}/fhir"), "--json")
    assert run.code == 2 and run.down() == ["fhir"]
    assert run.doc["fhir"]["reachable"] is False and run.doc["workers"]["count"] == 1


def test_status_is_down_without_a_worker_in_the_group(kafka: Settings, fhir: Settings, tmp_path: Path) -> None:
    settings = pipeline_settings(kafka, "status", tmp_path, fhir_base_url=fhir.fhir_base_url)
    env = {**worker_env(settings), "STUDYSTREAM_STATUS_RECEIVER_URLS": "none"}
    run = status(env, "--json")
    assert run.code == 2 and run.down() == ["workers"]
    assert run.doc["workers"]["count"] == 0 and run.doc["studies"] is None
    assert run.doc["receivers"] == []
