"""STOW-RS, the pure half: File Meta of a part, the Store Instances Response (PS3.18 Annex I) and its status,
Accept negotiation, and a complete request as a completeness boundary."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import study as rules
from domain.batch import BatchState, apply_commitment, apply_event
from domain.completeness import CompletedBy, Completeness, Signal
from domain.stow import (
    DICOM_JSON,
    DICOM_XML,
    NATIVE_DICOM_NS,
    PartOutcome,
    boundary_records,
    choose_media_type,
    part10_meta,
    render,
    response_dataset,
    response_status,
)
from tests.domain.test_study import MemoryTables
from tests.factories import make_event
from tests.scp.conftest import make_dataset

CT = "1.2.840.10008.5.1.4.1.1.2"
STORED = PartOutcome(CT, "1.2.3.4.1", "1.2.3")
MISMATCH = PartOutcome(CT, "1.2.3.4.2", "9.8.7", failure=0xA900, reason="study_mismatch")
UNREADABLE = PartOutcome(failure=0xC000, reason="not_dicom")


def _part10(**kwargs: object) -> bytes:
    buffer = io.BytesIO()
    make_dataset(**kwargs).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_file_meta_of_a_part10_file_names_its_instance() -> None:
    data = _part10()
    meta = part10_meta(data[:65536])
    assert meta is not None
    assert (meta.sop_class, meta.transfer_syntax) == (CT, "1.2.840.10008.1.2.1")
    assert meta.sop_instance and len(meta.sop_instance) <= 64


@pytest.mark.parametrize(
    "data",
    [b"", b"\0" * 128 + b"DICX" + b"\2\0" * 50, b"\0" * 128 + b"DICM", b"\0" * 128 + b"DICM\x02\x00\x02\x00UI\xff\xff"],
    ids=["empty", "no-dicm", "no-meta", "element-past-the-end"],
)
def test_what_is_no_part10_file_has_no_file_meta(data: bytes) -> None:
    assert part10_meta(data) is None


@given(st.binary(max_size=400), st.integers(0, 600))
def test_any_bytes_give_file_meta_or_none_never_an_error(noise: bytes, cut: int) -> None:
    real = _VALID[:cut] + noise
    meta = part10_meta(real)
    assert meta is None or all(len(uid) <= 64 for uid in (meta.sop_class, meta.sop_instance))


_VALID = _part10()


def test_response_status_follows_ps318_table_10_5_3_1() -> None:
    assert response_status([STORED]) == 200
    assert response_status([STORED, MISMATCH]) == 202
    assert response_status([PartOutcome(CT, "1.2.3.4.3", "1.2.3", warning=0xB000)]) == 202
    assert response_status([MISMATCH, UNREADABLE]) == 409


def test_json_response_is_the_store_instances_response_module() -> None:
    body = json.loads(render(response_dataset([STORED, MISMATCH, UNREADABLE]), DICOM_JSON))
    assert body == {
        "00081190": {"vr": "UR"},  # Retrieve URL: type 2, empty (no WADO-RS here)
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [CT]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3.4.2"]},
                    "00081197": {"vr": "US", "Value": [0xA900]},
                },
                {"00081197": {"vr": "US", "Value": [0xC000]}},  # UIDs never read: the reason only
            ],
        },
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": [CT]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3.4.1"]},
                    "00081190": {"vr": "UR"},
                }
            ],
        },
    }


def test_a_warning_is_reported_on_the_referenced_instance() -> None:
    body = json.loads(render(response_dataset([PartOutcome(CT, "1.2.3.4.3", "1.2.3", warning=0xB000)]), DICOM_JSON))
    (item,) = body["00081199"]["Value"]
    assert item["00081196"] == {"vr": "US", "Value": [0xB000]}
    assert "00081198" not in body


def test_xml_response_is_the_native_dicom_model() -> None:
    root = ET.fromstring(render(response_dataset([STORED, MISMATCH]), DICOM_XML))
    ns = {"n": NATIVE_DICOM_NS}
    assert root.tag == f"{{{NATIVE_DICOM_NS}}}NativeDicomModel"
    tags = [(a.get("tag"), a.get("vr"), a.get("keyword")) for a in root.findall("n:DicomAttribute", ns)]
    assert tags == [
        ("00081190", "UR", "RetrieveURL"),
        ("00081198", "SQ", "FailedSOPSequence"),
        ("00081199", "SQ", "ReferencedSOPSequence"),
    ]
    failed = root.find("n:DicomAttribute[@tag='00081198']/n:Item[@number='1']", ns)
    assert failed is not None
    values = {a.get("keyword"): [v.text for v in a.findall("n:Value", ns)] for a in failed}
    assert values == {
        "ReferencedSOPClassUID": [CT],
        "ReferencedSOPInstanceUID": ["1.2.3.4.2"],
        "FailureReason": [str(0xA900)],
    }
    assert all(v.get("number") == "1" for v in failed.iter(f"{{{NATIVE_DICOM_NS}}}Value"))
    referenced = root.find("n:DicomAttribute[@tag='00081199']/n:Item[@number='1']", ns)
    assert referenced is not None
    url = referenced.find("n:DicomAttribute[@tag='00081190']", ns)
    assert url is not None and list(url) == []  # present, no Value


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, DICOM_JSON),
        ("", DICOM_JSON),
        ("application/dicom+xml", DICOM_XML),
        ("application/dicom+json", DICOM_JSON),
        ("application/json", DICOM_JSON),
        ("*/*", DICOM_JSON),
        ("application/dicom+json; q=0.4, application/dicom+xml; q=0.9", DICOM_XML),
        ("application/dicom+xml;q=0, */*", DICOM_JSON),
        ("text/html", None),
        ("application/dicom+json;q=0", None),
        ("application/dicom+xml;q=junk, text/plain", None),
    ],
)
def test_the_accept_header_chooses_json_or_xml(accept: str | None, chosen: str | None) -> None:
    assert choose_media_type(accept) == chosen


def test_boundary_records_name_each_studys_stored_instances_once_in_parts() -> None:
    outcomes = [PartOutcome(CT, f"1.2.3.4.{n}", "1.2.3") for n in range(5)] + [
        STORED,
        MISMATCH,
        PartOutcome(CT, "5.6.1", "5.6"),
    ]
    records = boundary_records("2.25.1", outcomes, "DICOMWEB", "t", max_uids=2)
    by_study = [(r.study_uid, r.sop_instance_uids, r.part, r.parts) for r in records]
    assert by_study == [
        ("1.2.3", ("1.2.3.4.0", "1.2.3.4.1"), 1, 3),
        ("1.2.3", ("1.2.3.4.2", "1.2.3.4.3"), 2, 3),
        ("1.2.3", ("1.2.3.4.4",), 3, 3),
        ("5.6", ("5.6.1",), 1, 1),
    ]
    assert {r.transaction_uid for r in records} == {"2.25.1"} and {r.calling_ae for r in records} == {"DICOMWEB"}


def test_a_complete_stow_request_makes_its_study_ready_at_once_and_waits_for_instances_not_read_yet() -> None:
    study, series = "1.2.826.0.1.3680043.10.1404.77", "1.2.826.0.1.3680043.10.1404.77.1"
    events = [make_event(study, series, n) for n in (1, 2, 3)]
    batch = BatchState(MemoryTables())
    for offset, event in enumerate(events[:2]):
        apply_event(batch, event, rules.Arrival(1000.0, 1000.0, 0, offset), max_instances=10)
    outcomes = [PartOutcome(CT, event.sop_instance_uid, study) for event in events]
    (record,) = boundary_records("2.25.42", outcomes, "DICOMWEB", "t", max_uids=100)

    outcome = apply_commitment(batch, record, 0, 2)

    assert (outcome.known_study, outcome.missing, outcome.changed) == (True, 1, True)
    header = batch.studies[study].header
    assert not rules.is_ready(header, 1001.0, 1001.0, quiet_period=30)  # the third instance is not in yet
    apply_event(batch, events[2], rules.Arrival(1001.0, 1001.0, 0, 3), max_instances=10)
    assert rules.is_ready(batch.studies[study].header, 1001.0, 1001.0, quiet_period=30)  # no quiet period


def test_a_stow_boundary_completes_the_study_as_stow_and_only_for_a_source_trusted_for_stow() -> None:
    study, series = "1.2.826.0.1.3680043.10.1404.78", "1.2.826.0.1.3680043.10.1404.78.1"
    events = [make_event(study, series, n) for n in (1, 2)]
    batch = BatchState(MemoryTables())
    for offset, event in enumerate(events):
        apply_event(batch, event, rules.Arrival(1000.0, 1000.0, 0, offset), max_instances=10)
    outcomes = [PartOutcome(CT, event.sop_instance_uid, study) for event in events]
    (record,) = boundary_records("2.25.43", outcomes, "DICOMWEB", "t", max_uids=100)
    apply_commitment(batch, record, 0, 2)
    header = batch.studies[study].header

    assert header.commitment_signal == "stow"
    stow_only = Completeness(30.0, frozenset({Signal.STOW}))
    commitment_only = Completeness(30.0, frozenset({Signal.COMMITMENT}))
    assert rules.ready_signal(header, 1001.0, 1001.0, stow_only) is CompletedBy.STOW
    assert rules.ready_signal(header, 1001.0, 1001.0, commitment_only) is None  # waits for the quiet period
