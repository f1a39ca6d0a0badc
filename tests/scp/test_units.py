"""Pure and local pieces of the receiver: dataset → event, identity checks, storage, outbox (no network)."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from app.settings import Settings
from domain.dicom_event import InstanceRejected, Reception, check_identity, instance_event, parse_defect
from domain.dicom_reader import person_name
from domain.events import InstanceEvent, decode_instance_event, encode_instance_event
from scp import dimse
from scp.cstore import file_meta
from scp.negotiation import CallingAllowlist
from scp.outbox import Outbox, OutboxInUse
from scp.receiver import adopt_orphan_outboxes, outbox_path, slot_of_outbox
from scp.storage import InstanceStore, file_sha256
from tests.conftest import wait_for
from tests.scp.conftest import make_dataset, partial_files, spare_files

RECEPTION = Reception(
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    calling_ae="MOD",
    called_ae="STUDYSTREAM",
    peer_address="10.0.0.1:4000",
    received_at="2024-01-31T10:15:00.000+00:00",
    stored_path="/x.dcm",
    size=10,
    sha256="ab" * 32,
)


def _roundtrip(ds: Dataset) -> Dataset:
    """Encode and read back like the receiver does (stop before pixels)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer, stop_before_pixels=True)


def test_event_carries_codes_title_and_every_name_group() -> None:
    ds = make_dataset(charset=["", "ISO 2022 IR 87"], patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "CTHEAD", "L", "CT Head w/o contrast"
    ds.ProcedureCodeSequence = [item]
    ds.ContentLabel = "SCOUT"
    read = _roundtrip(ds)

    event = instance_event(read, check_identity(read, ds.SOPClassUID, ds.SOPInstanceUID), RECEPTION)

    assert event.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert [(c.code, c.scheme, c.meaning) for c in event.procedure_codes] == [("CTHEAD", "L", "CT Head w/o contrast")]
    assert event.instance_title == "SCOUT"
    assert event.accession_issuer == "RIS-A" and event.timezone_offset == "+0100"
    assert decode_instance_event(encode_instance_event(event)) == event


def test_instance_title_falls_back_to_concept_name_then_image_type() -> None:
    ds = make_dataset()
    assert instance_event(ds, check_identity(ds, ds.SOPClassUID, ds.SOPInstanceUID), RECEPTION).instance_title == (
        "ORIGINAL PRIMARY AXIAL"
    )
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic imaging report",
    )
    ds.ConceptNameCodeSequence = [concept]
    assert instance_event(ds, check_identity(ds, ds.SOPClassUID, ds.SOPInstanceUID), RECEPTION).instance_title == (
        "Diagnostic imaging report"
    )


def test_person_name_drops_only_trailing_empty_groups() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John=="
    assert person_name(ds.PatientName) == "Doe^John"
    ds.PatientName = "=山田^太郎"
    assert person_name(ds.PatientName) == "=山田^太郎"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda ds: delattr(ds, "SeriesInstanceUID"), "missing_uid"),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.3.."), "malformed_uid"),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1." + "2" * 70), "malformed_uid"),
        (lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.4"), "sop_class_mismatch"),
        (lambda ds: setattr(ds, "SOPInstanceUID", "1.2.3.4"), "sop_instance_mismatch"),
    ],
)
def test_check_identity_names_the_reason(change, reason: str) -> None:
    ds = make_dataset()
    sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    change(ds)
    with pytest.raises(InstanceRejected) as caught:
        check_identity(ds, sop_class, sop_instance)
    assert caught.value.reason == reason


def test_parse_defect_finds_truncation_and_wrong_encoding() -> None:
    good = _roundtrip(make_dataset())
    assert parse_defect(good, "1.2.840.10008.1.2.1") is None
    assert parse_defect(good, "1.2.840.10008.1.2") == "encoding does not match the transfer syntax"


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_parse_defect_finds_non_dicom_bytes(syntax: str, tmp_path: Path) -> None:
    """A PNG sent as a dataset reads as one element whose declared length is far past the end."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    buffer.write(b"\x89PNG\r\n\x1a\n" * 64)
    path = tmp_path / "png.dcm"
    path.write_bytes(buffer.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom says which VR it guessed
        ds = dcmread(path, stop_before_pixels=True, defer_size="256 KB")
    assert parse_defect(ds, syntax, path.stat().st_size) == "element (5089,474E) runs past the end of the data"


def test_store_detects_identical_duplicates_and_replaces_changed_bytes(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store", fsync=True)
    store.prepare()
    target = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")

    first = store.commit(store.stage_bytes(b"one"), target, file_sha256_of(b"one", tmp_path))
    again = store.commit(store.stage_bytes(b"one"), target, file_sha256_of(b"one", tmp_path))
    changed = store.commit(store.stage_bytes(b"two!"), target, file_sha256_of(b"two!", tmp_path))

    assert (first.duplicate, first.replaced) == (False, False)
    assert (again.duplicate, again.replaced) == (True, False)
    assert (changed.duplicate, changed.replaced) == (False, True)
    assert target.read_bytes() == b"two!"
    assert partial_files(store.incoming) == []


def test_staged_files_come_from_spares_created_ahead_and_closing_the_store_removes_the_spares(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store", fsync=False)
    store.prepare()

    fd, first = store.new_staged_file()  # none created ahead yet: this one now, the spares in the background
    os.write(fd, b"first")
    os.close(fd)

    made = wait_for(lambda: len(spares := spare_files(store.incoming)) == 4 and spares, 10, what="four spares")
    fd, second = store.new_staged_file()
    os.write(fd, b"dataset")
    os.close(fd)

    assert isinstance(made, list) and second in made  # a spare, taken as it is
    assert second.suffix == ".dcm" and second != first and second.read_bytes() == b"dataset"
    store.close()
    # The spares go with the store; the files in use stay theirs to rename or delete.
    assert sorted(p.name for p in store.incoming.iterdir()) == sorted((first.name, second.name))


def test_store_refuses_path_traversal_uids(tmp_path: Path) -> None:
    from scp.storage import StorageError

    with pytest.raises(StorageError):
        InstanceStore(tmp_path).path_for("1.2", "..", "1.3")


def file_sha256_of(data: bytes, tmp_path: Path) -> str:
    probe = tmp_path / "probe"
    probe.write_bytes(data)
    return file_sha256(probe)


def _event(study: str, sop: str, path: Path, sha: str) -> InstanceEvent:
    ds = make_dataset(study)
    ds.SOPInstanceUID = sop
    identity = check_identity(ds, ds.SOPClassUID, sop)
    return instance_event(ds, identity, replace(RECEPTION, stored_path=str(path), sha256=sha))


def test_outbox_holds_back_in_flight_rows_and_keeps_study_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    a1 = outbox.add(_event("1.1", "1.1.1", tmp_path / "a1", "0" * 64))
    b1 = outbox.add(_event("1.2", "1.2.1", tmp_path / "b1", "0" * 64))
    a2 = outbox.add(_event("1.1", "1.1.2", tmp_path / "a2", "0" * 64))
    outbox.release(b1)
    outbox.release(a2)

    # a1 still in flight: study 1.1 waits entirely (a2 must not overtake a1); study 1.2 goes.
    assert [entry.id for entry in outbox.pending(10)] == [b1]
    outbox.release(a1)
    assert [entry.id for entry in outbox.pending(10)] == [a1, b1, a2]
    outbox.confirm([a1, b1])
    assert outbox.depth() == 1


def test_outbox_recovery_keeps_rows_whose_file_is_in_place(tmp_path: Path) -> None:
    placed = tmp_path / "placed.dcm"
    placed.write_bytes(b"data")
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    outbox.add(_event("1.1", "1.1.1", placed, file_sha256(placed)))
    outbox.add(_event("1.1", "1.1.2", tmp_path / "never-renamed.dcm", "0" * 64))
    outbox.close()

    reopened = Outbox(path)
    kept, dropped = reopened.recover(lambda p, staged, sha: p.is_file() and file_sha256(p) == sha)

    assert (kept, dropped) == (1, 1)
    assert [entry.key for entry in reopened.pending(10)] == [b"1.1"]


def test_an_outbox_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path)
    with pytest.raises(OutboxInUse):
        Outbox(path)
    first.close()
    Outbox(path).close()  # free again once closed


def test_outboxes_of_slots_no_longer_running_are_moved_into_slot_0(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, receiver_fsync=False)
    for slot, sops in ((1, ["1.1.1", "1.1.2"]), (2, ["1.2.1"]), (3, ["1.3.1"])):
        outbox = Outbox(outbox_path(settings, slot))
        for sop in sops:
            outbox.release(outbox.add(_event(sop.rsplit(".", 1)[0], sop, tmp_path / sop, "0" * 64)))
        outbox.close()

    moved = adopt_orphan_outboxes(settings, processes=2)  # slots 0 and 1 will run; 2 and 3 will not

    assert moved == 2
    assert not outbox_path(settings, 2).exists() and not outbox_path(settings, 3).exists()
    slot0 = Outbox(outbox_path(settings, 0))
    assert [decode_instance_event(e.value).sop_instance_uid for e in slot0.pending(10)] == ["1.2.1", "1.3.1"]
    slot1 = Outbox(outbox_path(settings, 1))
    assert slot1.depth() == 2  # a slot that still runs keeps its own
    assert slot_of_outbox(settings, tmp_path / "receiver-outbox-12.sqlite") == 12
    assert slot_of_outbox(settings, tmp_path / "receiver-outbox-x.sqlite") is None


def test_calling_allowlist_with_and_without_host() -> None:
    allowlist = CallingAllowlist.parse("MOD1, PACS@10.0.0.5")
    assert allowlist.allows("MOD1", "1.2.3.4")
    assert allowlist.allows("PACS", "10.0.0.5")
    assert not allowlist.allows("PACS", "10.0.0.6")
    assert not allowlist.allows("OTHER", "10.0.0.5")
    assert CallingAllowlist.parse("").allows("ANY", "anywhere")


_UIDS = st.from_regex(r"\A[12](\.[1-9][0-9]{0,8}){1,12}\Z", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    cls=st.none() | _UIDS,
    inst=st.none() | _UIDS,
    message_id=st.integers(0, 0xFFFF),
    status=st.integers(0, 0xFFFF),
    field=st.sampled_from([dimse.C_STORE_RSP, dimse.C_ECHO_RSP, dimse.N_ACTION_RSP, dimse.N_EVENT_REPORT_RSP]),
    with_dataset=st.booleans(),
)
def test_hand_encoded_responses_are_byte_identical_to_pydicoms(
    cls: str | None, inst: str | None, message_id: int, status: int, field: int, with_dataset: bool
) -> None:
    request = Dataset()
    request.CommandField, request.MessageID, request.CommandDataSetType, request.ActionTypeID = 1, message_id, 1, 2
    if cls:
        request.AffectedSOPClassUID = cls
    if inst:
        request.AffectedSOPInstanceUID = inst
    expected = Dataset()
    expected.set_original_encoding(True, True)
    if cls:
        expected.AffectedSOPClassUID = cls
    expected.CommandField, expected.MessageIDBeingRespondedTo = field, message_id
    expected.CommandDataSetType = dimse.WITH_DATASET if with_dataset else dimse.NO_DATASET
    expected.Status = status
    if inst:
        expected.AffectedSOPInstanceUID = inst
    if field == dimse.N_ACTION_RSP and status == 0:
        expected.ActionTypeID = 2
    assert dimse.response(field, request, status, with_dataset=with_dataset) == dimse.encode_command(expected)


@settings(max_examples=150, deadline=None)
@given(cls=_UIDS, inst=_UIDS, syntax=_UIDS, implementation=_UIDS, version=st.from_regex(r"\A[A-Z0-9_]{1,16}\Z"))
def test_hand_encoded_file_meta_is_byte_identical_to_pynetdicoms(
    cls: str, inst: str, syntax: str, implementation: str, version: str
) -> None:
    reference = create_file_meta(
        sop_class_uid=cls,
        sop_instance_uid=inst,
        transfer_syntax=syntax,
        implementation_uid=implementation,
        implementation_version=version,
    )
    assert file_meta(cls, inst, syntax, implementation, version) == encode_file_meta(reference)


def test_a_non_ascii_uid_does_not_encode_as_file_meta() -> None:
    with pytest.raises(UnicodeEncodeError):
        file_meta("1.2", "1.2.é", "1.2.840.10008.1.2.1", "1.2.3", "V")
