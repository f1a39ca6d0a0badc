"""No acknowledged instance is lost: broker away, crash before publishing, kill -9 with a backlog."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from app.settings import Settings
from tests.conftest import free_port, unique_uid, wait_for
from tests.scp.conftest import make_dataset, read_events, storescu, write_dataset


def _instances(tmp_path: Path, count: int, name: str) -> tuple[str, list[Path]]:
    study, series = unique_uid(), unique_uid()
    files = [
        write_dataset(make_dataset(study, series, instance_number=n), tmp_path / name) for n in range(1, count + 1)
    ]
    return study, files


def _sop_uids(files: list[Path]) -> list[str]:
    return [str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]


def test_broker_unreachable_stores_succeed_and_every_event_arrives_once_it_is_back(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    nowhere = f"kafka://127.0.0.1:{free_port()}"  # nothing listens there
    receiver = receiver_factory(broker_url=nowhere).start()
    study, files = _instances(tmp_path, 5, "batch")

    result = storescu(receiver.port, *files)

    assert result.returncode == 0, result.stderr
    assert len(receiver.stored_files()) == 5
    health = receiver.health()
    assert health["outbox_depth"] == 5 and health["broker_connected"] is False
    assert receiver.stop() == 0

    receiver.broker_url = kafka.broker_url
    receiver.start()
    events = read_events(kafka, receiver.topic, expected=5)
    # Receive order within the study is kept.
    assert [value["sop_instance_uid"] for _, value in events] == _sop_uids(files)
    assert {key for key, _ in events} == {study.encode()}
    wait_for(lambda: receiver.health()["outbox_depth"] == 0, 10, what="outbox drained")


def test_crash_between_storing_and_publishing_publishes_every_stored_instance_after_restart(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    # First run: broker away (acknowledged events wait in the outbox) and the fault hook exits the
    # process right after the third instance is stored, before its event is released.
    nowhere = f"kafka://127.0.0.1:{free_port()}"
    receiver = receiver_factory(broker_url=nowhere, STUDYSTREAM_RECEIVER_FAULT_AFTER_STORE="3").start()
    _, files = _instances(tmp_path, 5, "crash")

    result = storescu(receiver.port, *files)

    assert result.returncode != 0  # the association died with the process
    assert receiver.process is not None and receiver.process.wait(10) == 70
    stored = receiver.stored_files()
    assert [path.stem for path in stored] == sorted(_sop_uids(files[:3]))

    receiver.broker_url = kafka.broker_url
    receiver.start(STUDYSTREAM_RECEIVER_FAULT_AFTER_STORE="0")
    events = read_events(kafka, receiver.topic, expected=3)
    assert sorted(value["sop_instance_uid"] for _, value in events) == sorted(path.stem for path in stored)


def test_kill_9_with_unpublished_backlog_loses_nothing(receiver_factory, kafka: Settings, tmp_path: Path) -> None:
    nowhere = f"kafka://127.0.0.1:{free_port()}"
    receiver = receiver_factory(broker_url=nowhere).start()
    _, files = _instances(tmp_path, 4, "k9")
    assert storescu(receiver.port, *files).returncode == 0

    receiver.kill9()

    receiver.broker_url = kafka.broker_url
    receiver.start()
    events = read_events(kafka, receiver.topic, expected=4)
    assert [value["sop_instance_uid"] for _, value in events] == _sop_uids(files)
