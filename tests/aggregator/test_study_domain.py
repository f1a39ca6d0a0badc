"""Pure study-state rules: de-duplication, revisions, readiness on two clocks, the ready record."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from domain.errors import InvalidEventError
from domain.events import InstanceEvent, decode_instance_event, encode_instance_event
from domain.ready import build_study_ready, decode_study_ready, encode_study_ready
from domain.study import (
    InstanceInfo,
    Reception,
    SeriesInfo,
    StudyHeader,
    StudyStatus,
    StudyUpdate,
    apply_instance,
    check_event_uids,
    decode_header,
    decode_instance,
    encode_header,
    encode_instance,
    event_time_of,
    fill_blanks,
    fill_blanks_from_event,
    is_ready,
    mark_published,
    patient_from_event,
    request_commitment,
    series_from_event,
    study_from_event,
)
from tests.aggregator.conftest import SyntheticStudy, make_event

QUIET = 30.0


class MemoryStudy:
    """Applies events the way the agent does, with dicts for the tables."""

    def __init__(self) -> None:
        self.header: StudyHeader | None = None
        self.series: dict[str, SeriesInfo] = {}
        self.instances: dict[str, InstanceInfo] = {}

    def apply(self, event: InstanceEvent, wall: float = 1000.0, event_time: float | None = None) -> StudyUpdate:
        update = apply_instance(
            self.header,
            self.series.get(event.series_uid),
            self.instances.get(event.sop_instance_uid),
            event,
            Reception(wall, wall if event_time is None else event_time, partition=3),
        )
        self.header = update.header
        if update.series is not None:
            self.series[update.series.uid] = update.series
        if update.instance is not None:
            self.instances[update.instance.uid] = update.instance
        return update


def test_first_instance_opens_revision_1_with_patient_study_and_series() -> None:
    study = SyntheticStudy(series=1, per_series=1)
    state = MemoryStudy()
    update = state.apply(study.events()[0])
    assert update.changed and update.opened_revision
    assert update.header.revision == 1 and update.header.status is StudyStatus.RECEIVING
    assert (update.header.instance_count, update.header.series_count, update.header.partition) == (1, 1, 3)
    assert update.header.patient.id == "PID" + study.uid[-6:]
    assert update.series is not None and update.series.body_part == "CHEST"


def test_repeated_sop_instance_uid_is_not_counted_twice() -> None:
    study = SyntheticStudy(series=2, per_series=3)
    state = MemoryStudy()
    for event in study.events():
        state.apply(event)
    repeat = state.apply(study.events()[0], wall=2000.0)
    assert not repeat.changed and repeat.instance is None
    assert state.header is not None and state.header.instance_count == 6 and state.header.series_count == 2
    assert state.header.last_wall_time == 1000.0  # a repeat does not push readiness back


def test_replaced_instance_changes_the_study_without_counting_it_twice() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    state = MemoryStudy()
    for event in study.events():
        state.apply(event)
    replaced = dataclasses.replace(study.events()[0], sha256="other", replaced=True)
    update = state.apply(replaced)
    assert update.changed and update.header.instance_count == 2


def test_instance_after_publication_opens_the_next_revision() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    state = MemoryStudy()
    state.apply(study.events()[0])
    assert state.header is not None
    state.header = mark_published(state.header)
    update = state.apply(study.events()[1])
    assert update.opened_revision
    assert (update.header.revision, update.header.published_revision, update.header.status) == (
        2,
        1,
        StudyStatus.RECEIVING,
    )
    assert state.apply(study.events()[1]).changed is False  # the repeat changes nothing, no revision 3


def test_first_non_empty_attribute_wins() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    first, second = study.events()
    state = MemoryStudy()
    state.apply(dataclasses.replace(first, study_description="", laterality=""))
    state.apply(dataclasses.replace(second, study_description="LATER", laterality="L", model="Other"))
    assert state.header is not None and state.header.study.description == "LATER"
    series = state.series[first.series_uid]
    assert (series.laterality, series.model) == ("L", "Scanner 1")


@pytest.mark.parametrize(
    ("now_wall", "now_event", "ready"),
    [
        (1031.0, 1031.0, True),  # quiet on both clocks
        (1029.0, 1031.0, False),  # processed too recently
        (1031.0, 1028.0, False),  # catch-up: input has not progressed a quiet period past the study
        (1031.0, None, False),  # event time unknown (just restarted, nothing read yet)
    ],
)
def test_ready_needs_the_quiet_period_on_both_clocks(now_wall: float, now_event: float | None, ready: bool) -> None:
    state = MemoryStudy()
    state.apply(SyntheticStudy(1, 1).events()[0], wall=1000.0, event_time=999.0)
    assert state.header is not None
    assert is_ready(state.header, now_wall, now_event, QUIET) is ready


def test_published_study_is_never_ready_again_until_a_new_instance() -> None:
    state = MemoryStudy()
    state.apply(SyntheticStudy(1, 1).events()[0])
    assert state.header is not None
    assert not is_ready(mark_published(state.header), 9999.0, 9999.0, QUIET)


def test_storage_commitment_makes_a_study_ready_at_once() -> None:
    state = MemoryStudy()
    state.apply(SyntheticStudy(1, 1).events()[0])
    assert state.header is not None
    assert is_ready(request_commitment(state.header), 1000.0, 1000.0, QUIET)


def test_commitment_naming_unseen_instances_commits_when_the_last_one_arrives() -> None:
    study = SyntheticStudy(1, 3)
    first, second, third = study.events()
    state = MemoryStudy()
    state.apply(first)
    assert state.header is not None
    state.header = request_commitment(state.header, [second.sop_instance_uid, third.sop_instance_uid])
    assert state.header.commitment_waiting == (second.sop_instance_uid, third.sop_instance_uid)
    assert not is_ready(state.header, 1000.0, 1000.0, QUIET)

    state.apply(second)
    assert not state.header.commitment_requested and state.header.commitment_waiting == (third.sop_instance_uid,)
    state.apply(third)
    assert state.header.commitment_requested and state.header.commitment_waiting == ()
    assert is_ready(state.header, 1000.0, 1000.0, QUIET)
    assert decode_header(encode_header(state.header)) == state.header


def test_a_new_revision_forgets_the_previous_commitment() -> None:
    study = SyntheticStudy(1, 2)
    first, second = study.events()
    state = MemoryStudy()
    state.apply(first)
    assert state.header is not None
    state.header = mark_published(request_commitment(state.header, ["1.2.3.999"]))
    state.apply(second)
    assert (state.header.revision, state.header.commitment_waiting, state.header.commitment_requested) == (2, (), False)


def test_event_time_prefers_received_at_then_the_kafka_timestamp() -> None:
    event = make_event("1.2", "1.2.3", 1, received_at="2024-05-01T10:00:00+00:00")
    assert event_time_of(event, 5.0, fallback=7.0) == 1714557600.0
    assert event_time_of(dataclasses.replace(event, received_at="garbage"), 5.0, fallback=7.0) == 5.0
    assert event_time_of(dataclasses.replace(event, received_at=""), None, fallback=7.0) == 7.0


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"sop_instance_uid": "1.2|3"}, None, "sop_instance_uid"),
        ({"series_uid": "1." * 40}, None, "series_uid"),
        ({}, "9.9", "key differs"),
    ],
)
def test_events_that_cannot_be_keyed_are_rejected(overrides: dict[str, str], key: str | None, message: str) -> None:
    event = dataclasses.replace(make_event("1.2", "1.2.3", 1), **overrides)
    with pytest.raises(InvalidEventError, match=message):
        check_event_uids(event, study_key_uid=key)


def test_state_values_round_trip() -> None:
    state = MemoryStudy()
    for event in SyntheticStudy(2, 2).events():
        state.apply(event)
    assert state.header is not None
    assert decode_header(encode_header(state.header)) == state.header
    instance = next(iter(state.instances.values()))
    assert decode_instance(encode_instance(instance)) == instance
    with pytest.raises(InvalidEventError):
        decode_header(b"{}")


def test_ready_record_lists_series_and_instances_in_order_and_round_trips() -> None:
    study = SyntheticStudy(series=3, per_series=4)
    state = MemoryStudy()
    for event in reversed(study.events()):
        state.apply(event)
    assert state.header is not None
    record = build_study_ready(state.header, state.series.values(), state.instances.values(), "2024-05-01T10:00:00Z")
    assert [s.info.number for s in record.series] == [1, 2, 3]
    assert [i.number for i in record.series[0].instances] == [1, 2, 3, 4]
    assert (record.number_of_series, record.number_of_instances, record.revision) == (3, 12, 1)
    decoded = decode_study_ready(encode_study_ready(record))
    assert decoded == record
    assert decoded.study.procedure_codes[0].code == "71250"
    assert decoded.patient.birth_date == "19700101"


def test_ready_record_decoding_rejects_garbage() -> None:
    with pytest.raises(InvalidEventError):
        decode_study_ready(b'{"study": {}}')
    with pytest.raises(InvalidEventError):
        decode_study_ready(None)


@pytest.mark.parametrize(
    ("info_from_event", "blank"),
    [
        (patient_from_event, {"sex": "", "birth_date": ""}),
        (study_from_event, {"description": "", "procedure_codes": ()}),
        (series_from_event, {"number": None, "model": "", "body_part": ""}),
    ],
)
def test_fill_blanks_from_event_is_fill_blanks_with_the_events_info(
    info_from_event: Callable[[InstanceEvent], Any], blank: dict[str, object]
) -> None:
    """The hot-path variant reads the event directly; it must fill exactly what fill_blanks would."""
    event = make_event("1.2.3.4", "1.2.3.4.1", 1, series_number=1)
    complete = info_from_event(event)
    known = dataclasses.replace(complete, **blank)
    assert fill_blanks_from_event(known, event) == fill_blanks(known, complete) == complete
    assert fill_blanks_from_event(complete, event) is complete  # nothing to fill: no copy
    other = make_event("1.2.3.4", "1.2.3.4.1", 2, series_number=7, sex="M", model="Other", study_description="X")
    assert fill_blanks_from_event(complete, other) is complete  # the first non-empty value wins


def test_decode_instance_event_keeps_unknown_fields_in_extra() -> None:
    event = make_event("1.2.3.4", "1.2.3.4.1", 1)
    raw = encode_instance_event(event)
    assert decode_instance_event(raw) == event
    newer = raw[:-1] + b',"future_field":1}'
    assert decode_instance_event(newer) == dataclasses.replace(event, extra={"future_field": 1})
