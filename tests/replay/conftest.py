"""Replay end to end: an isolated pipeline (unique app id, topics, control topic, state) with 3 studies done.

Study 1 is produced first; ``split_at`` is a time after its last event and before the first event of
studies 2 and 3, so ``--to-datetime split_at`` replays exactly studies 2 and 3.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata

from app.settings import Settings
from app.worker import READY_MESSAGE
from domain.events import InstanceEvent, encode_instance_event
from domain.replay import group_id_for
from tests.aggregator.conftest import STUDYSTREAM, SyntheticStudy, TopicCollector, Worker
from tests.conftest import ROOT, create_test_topics, pipeline_settings, wait_for, worker_env

UPLOAD_TIMEOUT = 60.0


async def _produce(settings: Settings, events: Sequence[InstanceEvent]) -> list[RecordMetadata]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(settings.topic_raw, key=e.key, value=encode_instance_event(e)) for e in events]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def _admin_call(settings: Settings, method: str, *args: Any) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        return await getattr(admin, method)(*args)
    finally:
        await admin.close()


@dataclass
class ReplayPipeline:
    settings: Settings
    tmp: Path
    worker: Worker
    ready: TopicCollector
    studies: list[SyntheticStudy]
    first_study_records: list[RecordMetadata]
    split_at: str  # ISO 8601 UTC between study 1 and studies 2, 3

    # --- the command under test ---

    def replay(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STUDYSTREAM, "replay", *args],
            cwd=ROOT,
            env=self.worker.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, f"replay failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result

    # --- Kafka ---

    def group_id(self, generation: int = 1) -> str:
        return group_id_for(self.settings.app_id, generation)

    def committed(self, generation: int = 1) -> dict[tuple[str, int], int]:
        offsets = asyncio.run(_admin_call(self.settings, "list_consumer_group_offsets", self.group_id(generation)))
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}

    def members(self, generation: int = 1) -> int:
        (response,) = asyncio.run(_admin_call(self.settings, "describe_consumer_groups", [self.group_id(generation)]))
        return len(response.to_object()["groups"][0]["members"])

    def stop_worker(self, generation: int = 1) -> None:
        self.worker.stop()
        # A clean stop leaves the group at once; a lingering member would make replay refuse.
        wait_for(lambda: self.members(generation) == 0, 30, what="the worker to leave the consumer group")

    def restart_worker(self) -> None:
        starts = self.worker.log().count(READY_MESSAGE)
        self.worker.start().wait_started(starts + 1)

    # --- FHIR (HAPI queried directly) ---

    def imaging_studies(self, study_uid: str) -> list[dict[str, Any]]:
        url = f"{self.settings.fhir_base_url}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}"
        # HAPI reuses an identical search's result for a minute unless told not to.
        response = httpx.get(url, headers={"Cache-Control": "no-cache"}, timeout=30)
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry") or ()]

    def wait_imaging_study(self, study_uid: str, instances: int) -> dict[str, Any]:
        def arrived() -> dict[str, Any] | None:
            found = self.imaging_studies(study_uid)
            return found[0] if found and found[0].get("numberOfInstances") == instances else None

        return wait_for(arrived, UPLOAD_TIMEOUT, interval=0.3, what=f"ImagingStudy {study_uid}")  # type: ignore[return-value]

    def delete_imaging_study(self, resource_id: str) -> None:
        response = httpx.delete(f"{self.settings.fhir_base_url}/ImagingStudy/{resource_id}", timeout=30)
        response.raise_for_status()


@pytest.fixture
def pipeline(kafka: Settings, fhir: Settings, tmp_path: Path) -> Iterator[ReplayPipeline]:
    """A worker (aggregator + uploader) that has published and uploaded 3 studies; stopped at teardown."""
    settings = pipeline_settings(
        kafka, "replay", tmp_path, fhir_base_url=fhir.fhir_base_url, topic_partitions=4, quiet_period=1.0
    )
    asyncio.run(create_test_topics(settings))
    worker = Worker(worker_env(settings), tmp_path, "worker")
    ready = TopicCollector(settings, settings.topic_ready)
    try:
        worker.start().wait_started()
        studies = [SyntheticStudy(series=2, per_series=2) for _ in range(3)]
        first = asyncio.run(_produce(settings, studies[0].events()))
        newest_ms = max(r.timestamp for r in first)
        wait_for(lambda: time.time() * 1000 > newest_ms + 1, 5, interval=0.001, what="the clock to pass study 1")
        split_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        wait_for(lambda: time.time() * 1000 > newest_ms + 2, 5, interval=0.001, what="the clock to pass the split")
        asyncio.run(_produce(settings, studies[1].events() + studies[2].events()))
        pipeline = ReplayPipeline(settings, tmp_path, worker, ready, studies, first, split_at)
        for study in studies:
            pipeline.wait_imaging_study(study.uid, study.instance_count)
        yield pipeline
    finally:
        worker.stop()
        ready.close()
        if "Traceback" in worker.log():
            print(worker.log()[-5000:])
