"""The typed decoders at the trust boundary: every imaging.raw and imaging.study.ready value decodes to a valid
record or raises the one invalid-record error, and a record that decodes cannot make the aggregator or the
uploader's mapping raise anything else (hostile values generated with hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from domain import study as rules
from domain.batch import BatchState, apply_commitment, apply_event, apply_performed_step, apply_resolution
from domain.completeness import Completeness
from domain.errors import InvalidRecordError
from domain.events import (
    CommitmentRequest,
    InstanceEvent,
    PatientResolution,
    PerformedProcedureStep,
    StowBoundary,
    decode_instance_event,
    decode_raw_record,
    encode_commitment_request,
    encode_instance_event,
    encode_performed_procedure_step,
    encode_resolution,
    encode_stow_boundary,
)
from domain.fhir_mapping import MappingOptions, build_transaction_bundle
from domain.ready import build_study_ready, decode_study_ready, encode_study_ready
from domain.study_state import event_time_of
from tests.domain.test_study import MemoryTables
from tests.factories import make_event, make_ready

STUDY = "1.2.826.0.1.3680043.10.1404.77"
VALID_EVENT = make_event(STUDY, f"{STUDY}.1", 1)
VALID_COMMITMENT = CommitmentRequest(STUDY, "2.25.9", (f"{STUDY}.1.1",))
VALID_MPPS = PerformedProcedureStep(
    STUDY, "2.25.11", "COMPLETED", (f"{STUDY}.1.1", f"{STUDY}.1.2"), calling_ae="MOD", received_at="t"
)
VALID_STOW = StowBoundary(STUDY, "2.25.10", (f"{STUDY}.1.1",), calling_ae="DICOMWEB", received_at="t")


def test_a_valid_event_round_trips_and_unknown_fields_are_ignored() -> None:
    raw = encode_instance_event(VALID_EVENT)
    assert decode_raw_record(raw) == VALID_EVENT
    assert decode_instance_event(raw[:-1] + b',"future_field":{"a":[1]}}') == VALID_EVENT
    assert decode_raw_record(encode_commitment_request(VALID_COMMITMENT)) == VALID_COMMITMENT


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"instance_number": "12"}, "invalid_field"),  # no coercion of text into numbers
        ({"procedure_codes": [{"code": "1", "bogus": 2, "scheme": 5}]}, "invalid_field"),
        ({"received_at": 1714557600}, "invalid_field"),
        ({"series_number": {"n": 1}}, "invalid_field"),
        ({"patient_name": ["Doe", "Jane"]}, "invalid_field"),
        ({"sop_instance_uid": "1.2|3"}, "invalid_field"),
        ({"series_uid": "1..2"}, "invalid_field"),
        ({"study_uid": "1.2.3\n"}, "invalid_field"),
        ({"instance_number": 2**40}, "invalid_field"),
        ({"study_description": "x" * 70_000}, "invalid_field"),
        ({"sha256": "not-hex"}, "invalid_field"),
        ({"record_type": "mpps_from_the_future"}, "unknown_record_type"),
    ],
)
def test_fields_of_the_wrong_type_or_range_are_invalid_records(change: dict[str, Any], reason: str) -> None:
    data = orjson.loads(encode_instance_event(VALID_EVENT)) | change
    with pytest.raises(InvalidRecordError) as raised:
        decode_raw_record(orjson.dumps(data))
    assert raised.value.reason == reason
    assert "Doe" not in str(raised.value) and "x" * 50 not in str(raised.value)  # never the value itself


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\x00\xffnot json", "not_json"),
        (b"[1,2]", "invalid_field"),
        (b'"x"', "invalid_field"),
    ],
)
def test_what_is_not_a_json_object_is_an_invalid_record(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidRecordError) as raised:
        decode_raw_record(raw)
    assert raised.value.reason == reason


def test_a_lone_surrogate_is_refused_rather_than_passed_on() -> None:
    raw = encode_instance_event(VALID_EVENT).replace(b'"Test^Patient"', b'"Test\\ud800"')
    with pytest.raises(InvalidRecordError):
        decode_raw_record(raw)


# --- Hostile mutations ---------------------------------------------------------------------------

JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=300)
    | st.sampled_from(["", "1.2.3", "\x1b$B", "=山田^太郎", "9" * 65, "\u202e", "x" * 70_000, "１.２"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    data = dict(valid)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "delete", "extra", "nested"]))
        name = draw(st.sampled_from(sorted(valid)))
        if action == "set":
            data[name] = draw(JUNK)
        elif action == "delete":
            data.pop(name, None)
        elif action == "extra":
            data[draw(st.text(max_size=12))] = draw(JUNK)
        elif isinstance(data.get(name), list) and data[name]:
            items = list(data[name])
            items[0] = (
                draw(JUNK) if not isinstance(items[0], dict) else {**items[0], draw(st.text(max_size=8)): draw(JUNK)}
            )
            data[name] = items
    raw = json.dumps(data, ensure_ascii=draw(st.booleans())).encode()  # json: integers beyond 64 bits too
    if draw(st.booleans()):
        return raw
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] + draw(st.binary(max_size=8))  # truncated or with trailing bytes


def _aggregate(raw: bytes, key: bytes) -> None:
    """What the aggregator does with a record, minus Kafka: decode, check the key, apply to the study."""
    record = decode_raw_record(raw)
    rules.check_key(record, key)
    tables = MemoryTables()
    batch = BatchState(tables)
    seed = rules.Arrival(1000.0, 1000.0, 0, 0)
    apply_event(batch, VALID_EVENT, seed, max_instances=10)  # the study exists, so the record meets real state
    if isinstance(record, CommitmentRequest | StowBoundary):
        apply_commitment(batch, record, 0, 1)
    elif isinstance(record, PatientResolution):
        apply_resolution(batch, record, 0, 1)
    elif isinstance(record, PerformedProcedureStep):
        apply_performed_step(batch, record, 0, 1, hold_until=2000.0)
        rules.ready_signal(batch.studies[STUDY].header, 1500.0, 1500.0, Completeness(30.0))
    else:
        at = rules.Arrival(1001.0, event_time_of(record, None, 1001.0), 0, 1)
        apply_event(batch, record, at, max_instances=10)
    # ... and what the uploader does with the revision it makes.
    pending = batch.studies[STUDY]
    ready = build_study_ready(pending.header, pending.known_series.values(), pending.instances.values(), "t")
    build_transaction_bundle(decode_study_ready(encode_study_ready(ready)), MappingOptions())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(orjson.loads(encode_instance_event(VALID_EVENT))))
def test_a_mutated_instance_event_decodes_to_a_usable_record_or_is_an_invalid_record(raw: bytes) -> None:
    try:
        _aggregate(raw, STUDY.encode())
    except InvalidRecordError:
        pass


@settings(max_examples=200, deadline=None)
@given(mutated(orjson.loads(encode_commitment_request(VALID_COMMITMENT))))
def test_a_mutated_commitment_record_decodes_to_a_usable_record_or_is_an_invalid_record(raw: bytes) -> None:
    try:
        _aggregate(raw, STUDY.encode())
    except InvalidRecordError:
        pass


@settings(max_examples=200, deadline=None)
@given(mutated(orjson.loads(encode_stow_boundary(VALID_STOW))))
def test_a_mutated_stow_boundary_record_decodes_to_a_usable_record_or_is_an_invalid_record(raw: bytes) -> None:
    try:
        _aggregate(raw, STUDY.encode())
    except InvalidRecordError:
        pass


@settings(max_examples=200, deadline=None)
@given(mutated(orjson.loads(encode_performed_procedure_step(VALID_MPPS))))
def test_a_mutated_performed_procedure_step_record_decodes_to_a_usable_record_or_is_an_invalid_record(
    raw: bytes,
) -> None:
    try:
        _aggregate(raw, STUDY.encode())
    except InvalidRecordError:
        pass


def test_the_performed_procedure_step_record_round_trips_and_an_older_one_decodes() -> None:
    raw = encode_performed_procedure_step(VALID_MPPS)
    assert decode_raw_record(raw) == VALID_MPPS
    assert orjson.loads(raw)["record_type"] == "performed_procedure_step"
    oldest = {
        "study_uid": STUDY,
        "mpps_uid": "2.25.11",
        "status": "DISCONTINUED",
        "record_type": "performed_procedure_step",
    }
    assert decode_raw_record(orjson.dumps(oldest)) == PerformedProcedureStep(STUDY, "2.25.11", "DISCONTINUED")
    newer = orjson.loads(raw) | {"schema_version": 2, "performed_station": "CT1"}  # a newer receiver's fields
    assert decode_raw_record(orjson.dumps(newer)) == replace(VALID_MPPS, schema_version=2)
    for bad in ({"status": "IN PROGRESS"}, {"sop_instance_uids": ["1.2|3"]}, {"reason_meaning": "x" * 65}):
        with pytest.raises(InvalidRecordError):
            decode_raw_record(orjson.dumps(orjson.loads(raw) | bad))


def test_the_stow_boundary_record_round_trips_as_its_own_kind() -> None:
    record = decode_raw_record(encode_stow_boundary(VALID_STOW))
    assert record == VALID_STOW and isinstance(record, StowBoundary)
    assert orjson.loads(encode_stow_boundary(VALID_STOW))["record_type"] == "stow_request"
    with pytest.raises(InvalidRecordError):
        decode_raw_record(encode_stow_boundary(VALID_STOW).replace(b'"parts":1', b'"parts":0'))


def _resolution_of_the_valid_event() -> PatientResolution:
    batch = BatchState(MemoryTables())
    apply_event(batch, VALID_EVENT, rules.Arrival(1000.0, 1000.0, 0, 0), max_instances=10)
    return PatientResolution(STUDY, batch.studies[STUDY].header.patient_key)


@settings(max_examples=200, deadline=None)
@given(mutated(orjson.loads(encode_resolution(_resolution_of_the_valid_event()))))
def test_a_mutated_resolution_record_decodes_to_a_usable_record_or_is_an_invalid_record(raw: bytes) -> None:
    try:
        _aggregate(raw, STUDY.encode())
    except InvalidRecordError:
        pass


def test_the_unmutated_resolution_record_is_applied() -> None:
    """The property above starts from a record the aggregator accepts (else it would prove little)."""
    _aggregate(encode_resolution(_resolution_of_the_valid_event()), STUDY.encode())


VALID_READY = orjson.loads(encode_study_ready(make_ready(STUDY, series=(("CT", "CHEST", 2), ("SR", "", 1)))))


@st.composite
def mutated_ready(draw: st.DrawFn) -> bytes:
    data = orjson.loads(orjson.dumps(VALID_READY))
    part = draw(st.sampled_from(["top", "study", "patient", "series", "instance"]))
    target = {
        "top": data,
        "study": data["study"],
        "patient": data["patient"],
        "series": data["series"][0],
        "instance": data["series"][0]["instances"][0],
    }[part]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            target[name] = draw(JUNK)
        else:
            target.pop(name, None)
    return json.dumps(data).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_ready())
def test_a_mutated_ready_record_decodes_to_a_record_the_mapping_can_write_or_is_an_invalid_record(raw: bytes) -> None:
    try:
        record = decode_study_ready(raw)
    except InvalidRecordError:
        return
    bundle = build_transaction_bundle(record, MappingOptions())
    assert bundle["entry"][-1]["resource"]["resourceType"] == "ImagingStudy"


def test_ready_records_of_the_old_schema_still_decode() -> None:
    old = dict(VALID_READY)
    old.pop("generation")
    old["schema_version"] = 1
    assert decode_study_ready(orjson.dumps(old)).version == (1, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"number_of_instances": 99},
        {"number_of_series": 7},
        {"study_uid": "1.2.3.4.5"},
        {"revision": 0},
        {"generation": -1},
    ],
)
def test_a_ready_record_that_contradicts_itself_is_invalid(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecordError):
        decode_study_ready(orjson.dumps(VALID_READY | change))


def test_an_instance_of_another_study_is_refused_by_its_key() -> None:
    other = replace(VALID_EVENT, study_uid="1.2.3")
    with pytest.raises(InvalidRecordError):
        _aggregate(encode_instance_event(other), STUDY.encode())


def test_study_ready_round_trip_keeps_the_counts() -> None:
    record = make_ready(STUDY, revision=3, generation=2)
    decoded = decode_study_ready(encode_study_ready(record))
    assert decoded == record and decoded.version == (2, 3)
    assert isinstance(decoded.series[0].instances[0].number, int)
    assert isinstance(VALID_EVENT, InstanceEvent)
