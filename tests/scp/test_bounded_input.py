"""Bounded input at the real receiver: clipped events, a quarantine for what the broker refuses for good,
commitment records in parts, and a second receiver that cannot touch the running one's files."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import zlib
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydicom.uid import ImplicitVRLittleEndian

from app.settings import Settings
from tests.conftest import unique_uid, wait_for
from tests.scp.conftest import make_dataset, partial_files, read_events, storescu, write_dataset
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
    asyncio.run(_topic(kafka, receiver.topic, 3000, create=True))  # events of ~2 KB pass, ~4.5 KB do not
    receiver.start()
    wide = make_dataset()
    wide.StudyDescription, wide.SeriesDescription, wide.InstitutionName = "D" * 64, "S" * 64, "I" * 64
    wide.PerformingPhysicianName, wide.OperatorsName = ["P" * 60] * 20, ["O" * 60] * 20
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


def c_store(port: int, path: Path) -> int:
    """The C-STORE status of ``path``'s bytes sent as they are in the file (pynetdicom, chunked)."""
    from pydicom import dcmread
    from pynetdicom import AE, _config

    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="LIMITS")
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="STUDYSTREAM")
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(path).Status)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def deflate_bomb(directory: Path, inflated_bytes: int) -> Path:
    """A Deflated Explicit VR instance of a few hundred KB whose pixel data inflates to ``inflated_bytes``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = make_dataset()
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + inflated_bytes.to_bytes(4, "little")
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = directory / "bomb.dcm"
    directory.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        out.write(packer.compress(head.getvalue() + pixel_header))
        zeros = bytes(8 * 1024 * 1024)
        for _ in range(inflated_bytes // len(zeros)):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    return path


def peak_rss_kb(receiver) -> int:
    status = Path(f"/proc/{receiver.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_a_dataset_past_the_size_limit_is_refused_and_a_deflate_bomb_inflates_no_further_than_its_bound(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory(
        STUDYSTREAM_RECEIVER_MAX_DATASET_BYTES=str(5_000_000),
        STUDYSTREAM_RECEIVER_MAX_INFLATED_BYTES=str(64 * 1024 * 1024),
    ).start()
    too_big = write_dataset(make_dataset(pixels=1700), tmp_path / "big")  # 5.8 MB of pixel data
    assert c_store(receiver.port, too_big) == 0xA700
    bomb = deflate_bomb(tmp_path / "bomb", 512 * 1024 * 1024)
    assert bomb.stat().st_size < 4_000_000  # a few MB on the wire
    assert c_store(receiver.port, bomb) == 0xA700
    assert peak_rss_kb(receiver) < 300_000, "the bomb was inflated in memory"
    normal = make_dataset()
    assert c_store(receiver.port, write_dataset(normal, tmp_path / "normal")) == 0
    (event,) = read_events(kafka, receiver.topic, expected=1)
    assert event[1]["sop_instance_uid"] == str(normal.SOPInstanceUID)
    metrics = receiver.metrics()
    assert 'reason="too_large"} 1.0' in metrics and 'reason="inflates_too_large"} 1.0' in metrics
    assert not partial_files(receiver.storage / ".incoming" / "0")


def test_below_the_free_disk_floor_every_c_store_is_refused_at_once(receiver_factory, tmp_path: Path) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_MIN_FREE_BYTES=str(10**18)).start()
    assert c_store(receiver.port, write_dataset(make_dataset(), tmp_path / "in")) == 0xA700
    assert 'reason="disk_full"} 1.0' in receiver.metrics()
    assert receiver.stored_files() == []
