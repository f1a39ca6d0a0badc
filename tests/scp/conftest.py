"""Receiver test kit: DICOM file factory, a receiver subprocess, dcmtk peers and an imaging.raw reader."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from app.settings import Settings
from tests.conftest import ROOT, free_port, unique_uid, wait_for

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_dataset(
    study_uid: str | None = None,
    series_uid: str | None = None,
    *,
    instance_number: int = 1,
    charset: str | list[str] | None = None,
    patient_name: str = "Doe^Jane",
    pixels: int = 8,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A small CT-like instance with the attributes the event carries."""
    ds = Dataset()
    sop_uid = unique_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or unique_uid()
    ds.SeriesInstanceUID = series_uid or unique_uid()
    ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC = "20240131", "101500", "+0100"
    ds.AccessionNumber = "ACC123"
    ds.IssuerOfAccessionNumberSequence = [Dataset()]
    ds.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID = "RIS-A"
    ds.Modality = "CT"
    ds.StudyDescription, ds.SeriesDescription = "CT HEAD", "AXIAL 5mm"
    ds.PatientName = patient_name
    ds.PatientID, ds.IssuerOfPatientID = "PID-1", "HOSP"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.BodyPartExamined, ds.Laterality = "HEAD", "L"
    ds.Manufacturer, ds.ManufacturerModelName, ds.InstitutionName = "ACME", "Scanner 9", "General Hospital"
    ds.SeriesNumber, ds.InstanceNumber = 3, instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = pixels
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(pixels * pixels, dtype=np.uint16) + instance_number).tobytes()
    return ds


def partial_files(incoming: Path) -> list[Path]:
    """Files in a receiver's incoming directory other than its spares (empty files created ahead).

    A C-STORE's staged file holds its File Meta from its first moment, so it is never empty.
    """
    return [p for p in incoming.iterdir() if _size(p) > 0]


def spare_files(incoming: Path) -> list[Path]:
    """The spares in a receiver's incoming directory: the files :func:`partial_files` leaves out."""
    return [p for p in incoming.iterdir() if _size(p) == 0]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed or removed meanwhile
        return 0


def write_dataset(ds: Dataset, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a DICOM file (after the file meta group): what travels over the network."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value after preamble+DICM+header
    return data[144 + group_length :]


def storescu(
    port: int, *files: Path, calling_ae: str = "TESTSCU", called_ae: str = "STUDYSTREAM"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORESCU, "-aet", calling_ae, "-aec", called_ae, "-to", "20", "localhost", str(port), *map(str, files)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def echoscu(port: int, calling_ae: str = "TESTSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-aet", calling_ae, "-aec", "STUDYSTREAM", "-to", "10", "localhost", str(port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class Receiver:
    """One `studystream receive` subprocess with its own port, storage, state and topic."""

    root: Path
    topic: str
    broker_url: str
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        return self.root / "store"

    @property
    def log_path(self) -> Path:
        return self.root / "receiver.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYSTREAM_")}
        env.update(
            STUDYSTREAM_BROKER_URL=self.broker_url,
            STUDYSTREAM_TOPIC_RAW=self.topic,
            STUDYSTREAM_STATE_DIR=str(self.root / "state"),
            STUDYSTREAM_STORAGE_DIR=str(self.storage),
            STUDYSTREAM_DICOM_PORT=str(self.port),
            STUDYSTREAM_DICOM_HOST="127.0.0.1",
            STUDYSTREAM_RECEIVER_METRICS_PORT=str(self.metrics_port),
            STUDYSTREAM_RECEIVER_PUBLISH_TIMEOUT="5",
            STUDYSTREAM_RECEIVER_PUBLISH_RETRY_MAX="1",
        )
        env.update(self.env_extra)
        return env

    def start(self, **env_extra: str) -> Receiver:
        self.env_extra.update(env_extra)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scp.cli"], cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(self._listening, 30, what=f"receiver on port {self.port}")
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"receiver exited with {self.process.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def health(self) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=5) as response:
            return orjson.loads(response.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode if self.process else None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.storage.rglob("*.dcm") if ".incoming" not in p.parts)


@pytest.fixture
def receiver_factory(tmp_path: Path, kafka: Settings, unique: str) -> Iterator[Callable[..., Receiver]]:
    """Receivers on free ports, each with its own topic; all stopped at the end of the test."""
    started: list[Receiver] = []

    def make(name: str = "r", broker_url: str | None = None, **env: str) -> Receiver:
        receiver = Receiver(
            root=tmp_path / name, topic=f"test.scp.raw.{unique}", broker_url=broker_url or kafka.broker_url
        )
        receiver.root.mkdir(parents=True, exist_ok=True)
        receiver.env_extra.update(env)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


def read_events(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list[tuple[bytes, dict]]:
    """Every (key, value) on ``topic`` once at least ``expected`` have arrived (fails after ``timeout``)."""

    async def consume() -> list[tuple[bytes, dict]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            partitions = await wait_partitions(consumer)
            # No group, so no committed offsets: every partition starts at the beginning. (An explicit
            # seek_to_beginning costs ~40 s with aiokafka 0.14 against this broker.)
            consumer.assign(partitions)
            events: list[tuple[bytes, dict]] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while len(events) < expected and loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    events.extend((record.key, orjson.loads(record.value)) for record in records)
            # Anything beyond the expected count (a wrong extra event) shows up in a short final poll.
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                events.extend((record.key, orjson.loads(record.value)) for record in records)
            return events
        finally:
            await consumer.stop()

    async def wait_partitions(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if topic in await consumer.topics():  # the receiver creates the topic when it first connects
                # ensure_topics guarantees the configured partition count.
                return [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            await asyncio.sleep(0.2)
        raise AssertionError(f"topic {topic} never appeared")

    events = asyncio.run(consume())
    assert len(events) >= expected, f"expected {expected} events on {topic}, got {len(events)}"
    return events
