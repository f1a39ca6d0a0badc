"""Bounded input at the real receiver: clipped events, a quarantine for what the broker refuses for good,
commitment records in parts, and a second receiver that cannot touch the running one's files."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydicom.uid import ImplicitVRLittleEndian

from app.settings import Settings
from tests.conftest import unique_uid, wait_for
from tests.scp.conftest import make_dataset, read_events, storescu, write_dataset
from tests.scp.test_commitment import _send

STUDYSTREAM = str(Path(sys.executable).with_name("studystream"))


def test_a_9_mb_text_element_is_clipped_to_its_vr_and_the_instances_after_it_are_published(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory().start()
    big = make_dataset(transfer_syntax=ImplicitVRLittleEndian)
    big.StudyDescription = "D" * 9_000_000  # a legal 4-byte length in implicit VR little endian
    after = make_dataset()
    sent = storescu(receiver.port, write_dataset(big, tmp_path / "big"), write_dataset(after, tmp_path / "after"))
    assert sent.returncode == 0, sent.stdout + sent.stderr

    events = {value["sop_instance_uid"]: value for _, value in read_events(kafka, receiver.topic, expected=2)}
    clipped = events[str(big.SOPInstanceUID)]
    assert clipped["study_description"] == "D" * 64 and clipped["clipped"] == ["StudyDescription"]
    assert events[str(after.SOPInstanceUID)]["clipped"] == []


async def _topic(settings: Settings, name: str, max_bytes: int, create: bool) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        config = {"max.message.bytes": str(max_bytes)}
        if create:
            await admin.create_topics([NewTopic(name, settings.topic_partitions, 1, topic_configs=config)])
        else:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=config)])
    finally:
        await admin.close()


def quarantine(receiver, *args: str) -> str:
    done = subprocess.run(
        [STUDYSTREAM, "receiver", "quarantine", *args],
        env=receiver.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_event_the_broker_refuses_for_good_is_quarantined_the_others_flow_and_a_retry_sends_it(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_PUBLISH_BATCH="1")  # one record per request to the broker
    asyncio.run(_topic(kafka, receiver.topic, 2000, create=True))  # events of ~1.5 KB pass, ~3 KB do not
    receiver.start()
    wide = make_dataset()
    wide.StudyDescription, wide.SeriesDescription, wide.InstitutionName = "D" * 64, "S" * 64, "I" * 64
    wide.PerformingPhysicianName = ["P" * 60] * 20
    assert storescu(receiver.port, write_dataset(wide, tmp_path / "wide")).returncode == 0
    normal = [make_dataset(unique_uid()) for _ in range(3)]
    assert storescu(receiver.port, *(write_dataset(ds, tmp_path / "normal") for ds in normal)).returncode == 0

    published = read_events(kafka, receiver.topic, expected=3)
    assert {v["sop_instance_uid"] for _, v in published} == {str(ds.SOPInstanceUID) for ds in normal}
    wait_for(lambda: receiver.health()["quarantine_depth"] == 1, 30, what="the refused event quarantined")
    health = receiver.health()
    assert (health["status"], health["outbox_depth"]) == ("degraded", 0)
    listed = quarantine(receiver, "list")
    assert str(wide.SOPInstanceUID) in listed and "1 quarantined event(s)" in listed
    assert "studystream_receiver_events_quarantined_total 1.0" in receiver.metrics()

    asyncio.run(_topic(kafka, receiver.topic, 8 * 1024 * 1024, create=False))  # the cause fixed
    row_id = listed.split("\t", 1)[0]
    assert "1 event(s) moved back" in quarantine(receiver, "retry", row_id)
    events = read_events(kafka, receiver.topic, expected=4)
    assert str(wide.SOPInstanceUID) in {v["sop_instance_uid"] for _, v in events}
    wait_for(lambda: receiver.health()["status"] == "ok", 30, what="the receiver healthy again")


def test_a_commitment_request_naming_more_instances_than_one_record_holds_is_split_into_parts(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_COMMITMENT_RECORD_MAX_UIDS="2").start()
    study, series = unique_uid(), unique_uid()
    for n in range(1, 6):
        write_dataset(make_dataset(study, series, instance_number=n), tmp_path / "in")
    summary = _send(receiver.port, tmp_path / "in")
    assert summary["per_study"][0]["storage_commitment"] == "committed", summary

    values = [value for _, value in read_events(kafka, receiver.topic, expected=8)]
    parts = [v for v in values if v.get("record_type") == "storage_commitment"]
    assert [(p["part"], p["parts"]) for p in parts] == [(1, 3), (2, 3), (3, 3)]
    named = [uid for p in parts for uid in p["sop_instance_uids"]]
    assert sorted(named) == sorted(v["sop_instance_uid"] for v in values if "record_type" not in v)


def test_a_second_receiver_on_the_same_state_directory_refuses_to_start_and_leaves_the_running_ones_files(
    receiver_factory, tmp_path: Path
) -> None:
    running = receiver_factory("shared").start()
    staged = running.storage / ".incoming" / "0" / "in-progress.dcm"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"half an instance still arriving")
    second = receiver_factory("shared")
    second.root = running.root  # the same state and storage directories, another port
    try:
        second.start()
    except AssertionError as exc:
        assert "used by another running receiver" in str(exc)
    else:
        raise AssertionError("a second receiver started on the same state directory")
    assert staged.read_bytes() == b"half an instance still arriving"
