"""`studystream receive` against dcmtk peers and the real broker: storage, events, statuses, allowlist."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import MRImageStorage
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from app.settings import Settings
from tests.conftest import unique_uid, wait_for
from tests.scp.conftest import dataset_bytes, echoscu, make_dataset, read_events, storescu, write_dataset


# A lone association's instances are stored on the event loop (receiver_inline_store); off, in the pool.
@pytest.mark.parametrize("inline_store", ["true", "false"])
def test_storescu_files_are_stored_bit_identical_with_one_event_each(
    receiver_factory, kafka: Settings, tmp_path: Path, inline_store: str
) -> None:
    receiver = receiver_factory().start(STUDYSTREAM_RECEIVER_INLINE_STORE=inline_store)
    study = unique_uid()
    series = unique_uid()
    sent = [write_dataset(make_dataset(study, series, instance_number=n), tmp_path / "out") for n in range(1, 4)]

    result = storescu(receiver.port, *sent, calling_ae="MODALITY1")

    assert result.returncode == 0, result.stderr
    for path in sent:
        ds = dcmread(path)
        stored = receiver.storage / study / series / f"{ds.SOPInstanceUID}.dcm"
        assert stored.is_file()
        assert dataset_bytes(stored) == dataset_bytes(path)  # the dataset exactly as sent
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID

    events = read_events(kafka, receiver.topic, expected=3)
    assert len(events) == 3
    by_sop = {value["sop_instance_uid"]: (key, value) for key, value in events}
    first = dcmread(sent[0])
    key, event = by_sop[first.SOPInstanceUID]
    assert key == study.encode()
    stored_first = receiver.storage / study / series / f"{first.SOPInstanceUID}.dcm"
    assert event["study_uid"] == study and event["series_uid"] == series
    assert event["sop_class_uid"] == CTImageStorage
    assert event["transfer_syntax_uid"] == first.file_meta.TransferSyntaxUID
    assert (event["instance_number"], event["series_number"], event["modality"]) == (1, 3, "CT")
    assert (event["study_date"], event["study_time"], event["timezone_offset"]) == ("20240131", "101500", "+0100")
    assert (event["accession_number"], event["accession_issuer"]) == ("ACC123", "RIS-A")
    assert (event["patient_id"], event["issuer_of_patient_id"], event["patient_name"]) == ("PID-1", "HOSP", "Doe^Jane")
    assert (event["birth_date"], event["sex"]) == ("19700101", "F")
    assert (event["body_part_examined"], event["laterality"]) == ("HEAD", "L")
    assert (event["manufacturer"], event["model"], event["institution"]) == ("ACME", "Scanner 9", "General Hospital")
    assert event["referring_physician"] == "Ref^Doctor"
    assert (event["calling_ae"], event["called_ae"]) == ("MODALITY1", "STUDYSTREAM")
    assert event["peer_address"].startswith("127.0.0.1:")
    assert event["stored_path"] == str(stored_first)
    assert event["size"] == stored_first.stat().st_size
    assert len(event["sha256"]) == 64 and event["duplicate"] is False and event["replaced"] is False
    assert event["received_at"].endswith("+00:00")
    assert "Doe" not in receiver.log() and "PID-1" not in receiver.log()


def test_echoscu_succeeds(receiver_factory) -> None:
    receiver = receiver_factory().start()
    result = echoscu(receiver.port)
    assert result.returncode == 0, result.stderr


def test_same_instance_again_is_flagged_duplicate_and_changed_bytes_replace_the_file(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory().start()
    ds = make_dataset()
    original = write_dataset(ds, tmp_path / "v1")
    assert storescu(receiver.port, original).returncode == 0
    assert storescu(receiver.port, original).returncode == 0
    ds.SeriesDescription = "AXIAL 5mm corrected"
    changed = write_dataset(ds, tmp_path / "v2")
    assert storescu(receiver.port, changed).returncode == 0

    events = [value for _, value in read_events(kafka, receiver.topic, expected=3)]
    assert [(e["duplicate"], e["replaced"]) for e in events] == [(False, False), (True, False), (False, True)]
    stored = Path(events[-1]["stored_path"])
    assert dataset_bytes(stored) == dataset_bytes(changed)
    assert events[0]["sha256"] == events[1]["sha256"] != events[2]["sha256"]


def _send_raw(port: int, sop_class: str, sop_instance: str, dataset: bytes, tmp_path: Path) -> int:
    """C-STORE whose dataset bytes are exactly ``dataset`` (pynetdicom's chunked send reads them from a file)."""
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path = tmp_path / f"raw-{sop_instance}.dcm"
    path.write_bytes(buffer.getvalue() + dataset)

    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="STUDYSTREAM")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(status.Status)


def _encoded(ds) -> bytes:
    from pydicom.filewriter import dcmwrite

    buffer = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


@pytest.mark.parametrize(
    ("case", "expected_status", "reason"),
    [
        ("truncated", 0xC210, "unparseable"),
        ("non_dicom", 0xC210, "unparseable"),
        ("missing_study_uid", 0xA900, "missing_uid"),
        ("malformed_series_uid", 0xA900, "malformed_uid"),
        ("sop_class_mismatch", 0xA900, "sop_class_mismatch"),
        ("storage_blocked", 0xA700, "storage_error"),
    ],
)
def test_bad_input_gets_its_status_and_the_next_association_still_works(
    receiver_factory, kafka: Settings, tmp_path: Path, case: str, expected_status: int, reason: str
) -> None:
    receiver = receiver_factory().start()
    ds = make_dataset()
    sop_class = str(ds.SOPClassUID)
    if case == "truncated":
        payload = b"\x08\x00\x16\x00UI\xff\x00" + b"1.2.3"  # (0008,0016) claims 255 bytes, has 5
    elif case == "non_dicom":
        payload = b"\x89PNG\r\n\x1a\n" * 64  # an image file sent as a dataset
    elif case == "missing_study_uid":
        del ds.StudyInstanceUID
        payload = _encoded(ds)
    elif case == "malformed_series_uid":
        ds.SeriesInstanceUID = "1.2.840..x/../etc"
        payload = _encoded(ds)
    elif case == "sop_class_mismatch":
        sop_class = MRImageStorage  # the request says MR, the dataset says CT
        payload = _encoded(ds)
    else:
        # A plain file where the study directory must go: the store cannot create it.
        receiver.storage.mkdir(parents=True, exist_ok=True)
        (receiver.storage / str(ds.StudyInstanceUID)).write_bytes(b"in the way")
        payload = _encoded(ds)

    status = _send_raw(receiver.port, sop_class, str(ds.SOPInstanceUID), payload, tmp_path)

    assert status == expected_status
    wait_for(
        lambda: f'studystream_receiver_failures_total{{reason="{reason}"}} 1.0' in receiver.metrics(),
        10,
        what=f"failure counted as {reason}",
    )
    good = write_dataset(make_dataset(), tmp_path / "good")
    assert storescu(receiver.port, good).returncode == 0
    events = read_events(kafka, receiver.topic, expected=1)
    assert [value["sop_instance_uid"] for _, value in events] == [dcmread(good).SOPInstanceUID]
    assert receiver.stored_files() == [Path(events[0][1]["stored_path"])]


def test_calling_ae_outside_the_allowlist_is_rejected(receiver_factory) -> None:
    receiver = receiver_factory(STUDYSTREAM_RECEIVER_ALLOWED_CALLING_AES="GOODSCU,OTHER@10.9.9.9").start()

    rejected = echoscu(receiver.port, calling_ae="EVILSCU")
    wrong_host = echoscu(receiver.port, calling_ae="OTHER")
    allowed = echoscu(receiver.port, calling_ae="GOODSCU")

    assert rejected.returncode != 0 and "Rejected" in rejected.stderr + rejected.stdout
    assert wrong_host.returncode != 0
    assert allowed.returncode == 0, allowed.stderr
    assert 'studystream_receiver_associations_rejected_total{reason="calling_ae_not_allowed"} 2.0' in receiver.metrics()
