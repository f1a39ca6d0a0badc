"""Storage Commitment (PS3.4 Annex J) at the receiver: pure pieces, then the real sender against the receiver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance  # type: ignore[attr-defined]

from app.settings import Settings
from domain.errors import ConfigurationError
from domain.events import CommitmentRequest, decode_raw_record, encode_commitment_request
from scp.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    SOME_FAILED_EVENT,
    IndexedInstance,
    build_report,
    judge_commitment,
    parse_commitment_peers,
    read_request,
)
from scp.outbox import Outbox
from tests.conftest import free_port, unique_uid, wait_for
from tests.scp.conftest import make_dataset, read_events, write_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def test_commitment_judges_each_reference_by_index_class_and_file() -> None:
    indexed = {
        "1.1": IndexedInstance(CT, "9.1", "/store/a"),
        "1.2": IndexedInstance(CT, "9.2", "/store/gone"),
        "1.3": IndexedInstance(CT, "9.1", "/store/c"),
    }
    outcome = judge_commitment(
        [(CT, "1.1"), (CT, "1.2"), (MR, "1.3"), (CT, "1.4")], indexed, lambda path: path != "/store/gone"
    )

    assert outcome.committed == [(CT, "1.1")]
    assert outcome.failed == [
        (CT, "1.2", NO_SUCH_OBJECT_INSTANCE),
        (MR, "1.3", CLASS_INSTANCE_CONFLICT),
        (CT, "1.4", NO_SUCH_OBJECT_INSTANCE),
    ]
    assert outcome.studies == {"9.1": ["1.1"]}
    event_type, report = build_report("2.25.1", outcome)
    assert event_type == SOME_FAILED_EVENT
    assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == ["1.1"]
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in report.FailedSOPSequence] == [
        ("1.2", 0x0112),
        ("1.3", 0x0119),
        ("1.4", 0x0112),
    ]


def test_malformed_requests_are_refused() -> None:
    good = Dataset()
    good.TransactionUID = "2.25.7"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, "1.2.3"
    good.ReferencedSOPSequence = [item]
    assert read_request(good) == ("2.25.7", [(CT, "1.2.3")])
    assert read_request(None) is None
    no_refs = Dataset()
    no_refs.TransactionUID = "2.25.7"
    assert read_request(no_refs) is None
    bad_uid = Dataset()
    bad_uid.TransactionUID = "2.25.7"
    bad_item = Dataset()
    bad_item.ReferencedSOPClassUID, bad_item.ReferencedSOPInstanceUID = CT, "../etc"
    bad_uid.ReferencedSOPSequence = [bad_item]
    assert read_request(bad_uid) is None


def test_commitment_record_round_trips_and_outlives_outbox_recovery(tmp_path: Path) -> None:
    record = CommitmentRequest("1.2.3", "2.25.9", ("1.2.3.4", "1.2.3.5"), calling_ae="MOD")
    assert decode_raw_record(encode_commitment_request(record)) == record
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.add_record(record.study_uid, encode_commitment_request(record))
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")
    assert reopened.recover(lambda path, staged, sha: False) == (1, 0)  # no file to check: kept
    assert [decode_raw_record(e.value) for e in reopened.pending(10)] == [record]


def _send(port: int, directory: Path) -> dict:
    studystream = str(Path(sys.executable).with_name("studystream"))
    options = ["--port", str(port), "--storage-commitment", "--commitment-timeout", "20", "--json"]
    result = subprocess.run(
        [studystream, "send", *options, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_sender_gets_its_commitment_report_and_the_study_gets_a_commitment_record(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory().start()
    study, series = unique_uid(), unique_uid()
    files = [write_dataset(make_dataset(study, series, instance_number=n), tmp_path / "in") for n in (1, 2, 3)]

    summary = _send(receiver.port, tmp_path / "in")

    assert summary["per_study"][0]["storage_commitment"] == "committed", summary
    records = [value for _, value in read_events(kafka, receiver.topic, expected=4)]
    assert [r.get("record_type") for r in records] == [None, None, None, "storage_commitment"]  # after the instances
    assert sorted(records[3]["sop_instance_uids"]) == sorted(r["sop_instance_uid"] for r in records[:3])
    assert records[3]["study_uid"] == study and len(files) == 3
    assert 'studystream_receiver_storage_commitments_total{outcome="committed"} 1.0' in receiver.metrics()


def test_request_naming_an_unknown_instance_reports_it_failed(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    receiver = receiver_factory().start()
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((int(event.request.EventTypeID), event.event_information))
        return 0x0000, None

    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", receiver.port, ae_title="STUDYSTREAM", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        request = Dataset()
        request.TransactionUID = "2.25.4711"
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, unique_uid()
        request.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
        assert int(status.Status) == 0x0000
        wait_for(lambda: reports, 20, what="the N-EVENT-REPORT")
    finally:
        assoc.release()
    event_type, info = reports[0]
    assert event_type == SOME_FAILED_EVENT
    assert str(info.TransactionUID) == "2.25.4711"
    assert [int(i.FailureReason) for i in info.FailedSOPSequence] == [NO_SUCH_OBJECT_INSTANCE]
    assert "ReferencedSOPSequence" not in info


def test_commitment_peers_parse_and_reject_typos() -> None:
    assert parse_commitment_peers("MOD1=10.0.0.5:104, PACS = pacs.example:11112") == {
        "MOD1": ("10.0.0.5", 104),
        "PACS": ("pacs.example", 11112),
    }
    assert parse_commitment_peers("") == {}
    for bad in ("MOD1", "MOD1=host", "=host:104", "MOD1=host:0", "MOD1=host:x"):
        with pytest.raises(ConfigurationError):
            parse_commitment_peers(bad)


def test_result_goes_to_the_senders_listener_when_it_released_the_association(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    """Many modalities ask, release, and wait for the result on an association the archive opens."""
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((int(event.request.EventTypeID), event.event_information))
        return 0x0000, None

    modality = AE(ae_title="MODALITY")
    # The archive requests this association and takes the SCP role (PS3.4 J.3.3): accept that role.
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    listen_port = free_port()
    server = modality.start_server(
        ("127.0.0.1", listen_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        receiver = receiver_factory(STUDYSTREAM_RECEIVER_COMMITMENT_PEERS=f"MODALITY=127.0.0.1:{listen_port}").start()
        ds = make_dataset()
        stored = write_dataset(ds, tmp_path / "in")
        requester = AE(ae_title="MODALITY")
        requester.add_requested_context(CT, "1.2.840.10008.1.2.1")
        requester.add_requested_context(StorageCommitmentPushModel)
        assoc = requester.associate("127.0.0.1", receiver.port, ae_title="STUDYSTREAM")
        assert assoc.is_established
        assert int(assoc.send_c_store(stored).Status) == 0x0000
        request = Dataset()
        request.TransactionUID = "2.25.90210"
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT, str(ds.SOPInstanceUID)
        request.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
        assert int(status.Status) == 0x0000
        assoc.release()  # without waiting for the result

        wait_for(lambda: reports, 30, what="the result on the modality's own listener")
    finally:
        server.shutdown()
    event_type, info = reports[0]
    assert event_type == 1 and str(info.TransactionUID) == "2.25.90210"
    assert [str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence] == [str(ds.SOPInstanceUID)]
    # Logged once the modality's response is in, which may be after its listener saw the report.
    delivered = "result delivered on the new association to MODALITY@127.0.0.1"
    wait_for(lambda: delivered in receiver.log(), 15, what="the delivery logged")
