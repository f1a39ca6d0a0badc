"""Aggregator benchmark: events/s through one `studystream worker`, and µs per instance by study size.

For each study size (10, 100, 1,000, 5,000 instances) the benchmark fills a fresh imaging.raw topic
with about ``--events`` synthetic instance events, then starts one worker on it (its own app id, so
it reads the backlog at full speed). The worker writes one study-instances changelog record per new
instance, stamped by the worker's producer: the span from the first to the last record is the
processing time, independent of worker start-up. Ready records are awaited to check the counts.

    STUDYSTREAM_BROKER_URL=kafka://localhost:19092 .venv/bin/python bench/bench_aggregator.py

Goals (issue 4): >= 10,000 events/s per worker; per-instance cost at 5,000 <= 1.5 x that at 10.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.settings import Settings
from app.topology import topology
from domain.events import InstanceEvent, encode_instance_event
from domain.ready import decode_study_ready

ROOT = Path(__file__).resolve().parent.parent
STUDYSTREAM = str(Path(sys.executable).with_name("studystream"))


@dataclass(frozen=True)
class Result:
    study_size: int
    studies: int
    events: int
    seconds: float
    cpu_seconds: float
    ready_ok: bool

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def us_per_instance(self) -> float:
        return self.seconds / self.events * 1e6

    @property
    def cpu_us_per_instance(self) -> float:
        return self.cpu_seconds / self.events * 1e6


def synthetic_events(study_size: int, studies: int) -> list[InstanceEvent]:
    now = datetime.now(UTC).isoformat()
    events = []
    for s in range(studies):
        study_uid = f"1.2.826.0.1.3680043.10.1404.9.{uuid.uuid4().int % 10**12}.{s}"
        for n in range(study_size):
            series = n // 500 + 1  # series of up to 500 images, as a CT would send
            series_uid = f"{study_uid}.{series}"
            events.append(
                InstanceEvent(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_instance_uid=f"{series_uid}.{n + 1}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    instance_number=n + 1,
                    series_number=series,
                    modality="CT",
                    study_date="20240501",
                    patient_id="BENCH",
                    patient_name="Bench^Mark",
                    received_at=now,
                    size=524_288,
                    sha256="0" * 64,
                )
            )
    return events


async def create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        config = {"max.message.bytes": str(settings.max_message_bytes)}
        topics = [
            NewTopic(n, settings.topic_partitions, 1, topic_configs=config)
            for n in (d.name for d in topology(settings).public)
        ]
        await admin.create_topics(topics)
    finally:
        await admin.close()


async def produce(settings: Settings, events: list[InstanceEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(settings.topic_raw, encode_instance_event(e), key=e.key) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_for_topic(settings: Settings, name: str, timeout: float) -> None:
    """Wait until the worker created ``name``: subscribing earlier would auto-create it with 1 partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while name not in await admin.list_topics():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not create {name}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far: Linux /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def changelog_span(settings: Settings, expected: int, timeout: float, worker_pid: int) -> tuple[float, float]:
    """Seconds between the first and the last study-instances changelog record, once all arrived, and the
    worker's CPU seconds from the first record seen to the last (on a shared machine, wall time varies
    with the load; CPU time much less)."""
    changelog = f"{settings.app_id}-study-instances-changelog"
    await wait_for_topic(settings, changelog, timeout)
    consumer = AIOKafkaConsumer(
        changelog,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    first, last, count = float("inf"), 0.0, 0
    cpu_first = cpu_last = 0.0
    deadline = time.monotonic() + timeout
    try:
        while count < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {count} of {expected} instance records after {timeout:.0f} s")
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for r in records:
                    if not count:
                        cpu_first = cpu_seconds(worker_pid)
                    count += 1
                    first, last = min(first, r.timestamp), max(last, r.timestamp)
        cpu_last = cpu_seconds(worker_pid)
    finally:
        await consumer.stop()
    return (last - first) / 1000, cpu_last - cpu_first


async def ready_counts(settings: Settings, studies: int, timeout: float) -> dict[str, int]:
    consumer = AIOKafkaConsumer(
        settings.topic_ready,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=settings.max_message_bytes,
        max_partition_fetch_bytes=settings.max_message_bytes,
    )
    await consumer.start()
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(counts) < studies and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    record = decode_study_ready(r.value)
                    counts[record.study_uid] = record.number_of_instances
    finally:
        await consumer.stop()
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_size(
    base: Settings,
    study_size: int,
    target_events: int,
    state_dir: Path,
    timeout: float,
    worker_settings: dict[str, str] | None = None,
) -> Result:
    run_id = uuid.uuid4().hex[:8]
    settings = base.model_copy(
        update={
            "app_id": f"bench-agg-{run_id}",
            "topic_raw": f"bench.raw.{run_id}",
            "topic_ready": f"bench.ready.{run_id}",
            "topic_dlq": f"bench.dlq.{run_id}",
            "state_dir": state_dir / run_id,
            "quiet_period": 1.0,
        }
    )
    studies = max(1, target_events // study_size)
    events = synthetic_events(study_size, studies)
    asyncio.run(create_topics(settings))
    asyncio.run(produce(settings, events))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
    for name in ("broker_url", "app_id", "topic_raw", "topic_ready", "topic_dlq", "state_dir", "quiet_period"):
        env[f"STUDYSTREAM_{name.upper()}"] = str(getattr(settings, name))
    for name, value in (worker_settings or {}).items():  # --set: compare settings side by side
        env[f"STUDYSTREAM_{name.upper()}"] = value
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log = (state_dir / f"worker-{study_size}.log").open("wb")
    worker = subprocess.Popen(
        [STUDYSTREAM, "worker", "-l", "warn", "--web-port", str(free_port())],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        seconds, cpu = asyncio.run(changelog_span(settings, len(events), timeout, worker.pid))
        counts = asyncio.run(ready_counts(settings, studies, timeout))
    except TimeoutError:
        print((state_dir / f"worker-{study_size}.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        log.close()
    ready_ok = len(counts) == studies and all(n == study_size for n in counts.values())
    return Result(study_size, studies, len(events), seconds, cpu, ready_ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per study size (default 10,000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 5000])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one size")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the worker, e.g. --set aggregator_batch_size=2000 (repeatable)",
    )
    args = parser.parse_args(argv)
    worker_settings = dict(item.split("=", 1) for item in args.set)

    base = Settings()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-aggregator-") as tmp:
        for size in args.sizes:
            result = run_size(base, size, max(args.events, size), Path(tmp), args.timeout, worker_settings)
            results.append(result)
            print(
                f"study size {size:>5}: {result.studies:>4} studies, {result.events:>6} events in "
                f"{result.seconds:6.2f} s = {result.events_per_second:8.0f} events/s, "
                f"{result.us_per_instance:6.1f} µs/instance, worker CPU {result.cpu_us_per_instance:6.1f} µs/instance "
                f"(= {1e6 / max(result.cpu_us_per_instance, 1e-3):6.0f} events/CPU-s), "
                f"ready records {'ok' if result.ready_ok else 'WRONG'}",
                flush=True,
            )
    small, large = results[0], results[-1]
    ratio = large.us_per_instance / small.us_per_instance
    print(f"per-instance cost at {large.study_size} / at {small.study_size}: {ratio:.2f} (goal <= 1.5)")
    print(f"slowest throughput: {min(r.events_per_second for r in results):.0f} events/s (goal >= 10,000)")
    return 0 if all(r.ready_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
