"""Fixtures for the uploader end to end: one `studystream worker` per module, in front of HAPI a TCP proxy
the tests can switch off and on, and helpers to produce ready records and to query HAPI directly."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.settings import Settings
from domain.ready import StudyReady, encode_study_ready
from tests.aggregator.conftest import TopicCollector, Worker, _produce
from tests.conftest import create_test_topics, pipeline_settings, wait_for, worker_env

UPLOAD_TIMEOUT = 60.0


class SwitchableProxy:
    """A TCP proxy on a free port in a background event loop; ``enabled = False`` drops every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.enabled = True
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "proxy did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.enabled:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    def disable(self) -> None:
        self.enabled = False
        self._loop.call_soon_threadsafe(self._close_all)

    def enable(self) -> None:
        self.enabled = True

    def close(self) -> None:
        self.disable()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@dataclass
class Pipeline:
    settings: Settings  # the worker's settings (FHIR through the proxy)
    fhir_url: str  # HAPI itself, for the tests' own queries
    worker: Worker
    proxy: SwitchableProxy
    dlq: TopicCollector

    def produce(self, records: Sequence[StudyReady]) -> None:
        messages = [(r.study_uid.encode(), encode_study_ready(r)) for r in records]
        asyncio.run(_produce(self.settings, self.settings.topic_ready, messages))

    def metric(self, outcome: str, name: str = "studystream_uploader_revisions_total", label: str = "outcome") -> float:
        response = httpx.get(f"http://127.0.0.1:{self.worker.web_port}/uploader/metrics", timeout=5)
        match = re.search(rf'^{name}{{{label}="{outcome}"}} ([0-9.e+]+)$', response.text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    # --- HAPI, queried directly ---

    def search(self, resource: str, query: str) -> list[dict[str, Any]]:
        # no-cache: HAPI would answer a repeated search from its 60 s result cache.
        response = httpx.get(f"{self.fhir_url}/{resource}?{query}", headers={"Cache-Control": "no-cache"}, timeout=30)
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry") or ()]

    def studies(self, study_uid: str) -> list[dict[str, Any]]:
        return self.search("ImagingStudy", f"identifier=urn:dicom:uid|urn:oid:{study_uid}")

    def patients(self, system: str, value: str) -> list[dict[str, Any]]:
        return self.search("Patient", f"identifier={system}|{value}")

    def wait_study(self, study_uid: str, instances: int | None = None, timeout: float = UPLOAD_TIMEOUT) -> dict:
        def arrived() -> dict | None:
            found = self.studies(study_uid)
            if found and (instances is None or found[0].get("numberOfInstances") == instances):
                return found[0]
            return None

        return wait_for(arrived, timeout, interval=0.3, what=f"ImagingStudy {study_uid}")  # type: ignore[return-value]

    def validate(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """HAPI's $validate issues of severity error or fatal."""
        response = httpx.post(
            f"{self.fhir_url}/{resource['resourceType']}/$validate",
            json=resource,
            headers={"Content-Type": "application/fhir+json"},
            timeout=180,  # HAPI loads its validation support on the first call
        )
        return [i for i in response.json()["issue"] if i["severity"] in ("error", "fatal")]


@pytest.fixture(scope="module")
def pipeline(kafka: Settings, fhir: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """One worker (aggregator idle, uploader live) on unique topics, its FHIR base behind a switchable proxy."""
    tmp = tmp_path_factory.mktemp("uploader")
    hapi = httpx.URL(fhir.fhir_base_url)
    proxy = SwitchableProxy(hapi.host, hapi.port or 80)
    settings = pipeline_settings(
        kafka,
        "upl",
        tmp,
        fhir_base_url=f"http://127.0.0.1:{proxy.port}{hapi.path}",
        fhir_timeout=10.0,
        uploader_backoff_initial=0.2,
        uploader_backoff_max=1.0,
        uploader_inline_budget=3.0,
        uploader_retry_hold_max=1.0,
        uploader_conflict_attempts=4,
        uploader_outage_report_interval=2.0,
    )
    asyncio.run(
        create_test_topics(
            settings, [settings.topic_raw, settings.topic_ready, settings.topic_dlq, settings.topic_retry]
        )
    )
    worker = Worker(worker_env(settings), tmp, "uploader-worker").start()
    dlq = TopicCollector(settings, settings.topic_dlq)
    try:
        worker.wait_started()
        yield Pipeline(settings, fhir.fhir_base_url, worker, proxy, dlq)
    finally:
        worker.stop()
        dlq.close()
        proxy.close()
        if worker.exited() and "Traceback" in worker.log():
            print(worker.log()[-5000:])


def wait_metric(pipeline: Pipeline, outcome: str, at_least: float, timeout: float = UPLOAD_TIMEOUT, **kw: str) -> None:
    wait_for(lambda: pipeline.metric(outcome, **kw) >= at_least, timeout, interval=0.3, what=f"{outcome} >= {at_least}")
