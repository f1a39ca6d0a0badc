"""Pure study-state rules: de-duplication, revisions, readiness on two clocks, and batches replayed after a crash."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from domain import study as rules
from domain.batch import BatchState, apply_commitment, apply_event
from domain.errors import InvalidRecordError
from domain.events import CommitmentRequest, InstanceEvent
from domain.study import (
    Arrival,
    StudyStatus,
    apply_instance,
    check_key,
    is_ready,
    mark_published,
    mark_sealed,
    merge_latest,
    needs_check,
    patient_from_event,
    request_commitment,
    series_from_event,
    study_from_event,
)
from domain.study_state import (
    decode_header,
    decode_instance,
    decode_series,
    encode_header,
    encode_instance,
    encode_series,
    event_time_of,
)
from tests.factories import SyntheticStudy, make_event

QUIET = 30.0
PARTITION = 3


@dataclass
class MemoryTables:
    """The study tables as dicts: what a worker's RocksDB (or a changelog restored into one) holds."""

    rows: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def header(self, study_uid: str, partition: int) -> rules.StudyHeader | None:
        return self.rows.get(("h", study_uid))

    def instance_info(self, study_uid: str, sop_uid: str, partition: int) -> rules.InstanceInfo | None:
        return self.rows.get(("i", study_uid, sop_uid))

    def series_info(self, study_uid: str, series_uid: str, partition: int) -> rules.SeriesInfo | None:
        return self.rows.get(("s", study_uid, series_uid))

    def copy(self) -> MemoryTables:
        return MemoryTables(dict(self.rows))


def batch_writes(batch: BatchState) -> list[tuple[tuple[str, ...], Any]]:
    """The writes of a batch in the agent's order: instance rows, then each study's series and header."""
    writes: list[tuple[tuple[str, ...], Any]] = []
    for uid, pending in batch.studies.items():
        writes += [(("i", uid, sop), row) for sop, row in pending.instances.items()]
    for uid, pending in batch.studies.items():
        writes += [(("s", uid, s), row) for s, row in pending.series.items()]
        writes.append((("h", uid), pending.header))
    return writes


Record = tuple[int, InstanceEvent | CommitmentRequest]  # (imaging.raw offset, record)


def run_batch(tables: MemoryTables, records: Iterable[Record], wall: float = 1000.0) -> list[tuple[Any, Any]]:
    """Apply a batch as the agent does; returns its writes (not applied to ``tables``)."""
    batch = BatchState(tables)
    for offset, record in records:
        at = Arrival(wall + offset, wall + offset, PARTITION, offset)
        if isinstance(record, CommitmentRequest):
            apply_commitment(batch, record, PARTITION, offset)
        else:
            apply_event(batch, record, at, max_instances=10_000)
    return batch_writes(batch)


def commit(tables: MemoryTables, writes: Iterable[tuple[Any, Any]]) -> MemoryTables:
    for key, value in writes:
        tables.rows[key] = value
    return tables


class MemoryStudy:
    """One study applied event by event (offsets counting up), as in single-event batches."""

    def __init__(self) -> None:
        self.tables = MemoryTables()
        self.offset = 0

    @property
    def header(self) -> rules.StudyHeader | None:
        return next((v for k, v in self.tables.rows.items() if k[0] == "h"), None)

    @header.setter
    def header(self, value: rules.StudyHeader) -> None:
        self.tables.rows[("h", value.study.uid)] = value

    @property
    def instances(self) -> dict[str, rules.InstanceInfo]:
        return {k[2]: v for k, v in self.tables.rows.items() if k[0] == "i"}

    @property
    def series(self) -> dict[str, rules.SeriesInfo]:
        return {k[2]: v for k, v in self.tables.rows.items() if k[0] == "s"}

    def apply(self, event: InstanceEvent, wall: float = 1000.0, event_time: float | None = None) -> rules.StudyUpdate:
        self.offset += 1
        at = Arrival(wall, wall if event_time is None else event_time, PARTITION, self.offset)
        update = apply_instance(
            self.header, self.series.get(event.series_uid), self.instances.get(event.sop_instance_uid), event, at
        )
        if update.changed:
            self.header = update.header
            if update.series is not None:
                self.tables.rows[("s", event.study_uid, update.series.uid)] = update.series
            if update.instance is not None:
                self.tables.rows[("i", event.study_uid, update.instance.uid)] = update.instance
        return update


def test_first_instance_opens_revision_1_with_patient_study_and_series() -> None:
    study = SyntheticStudy(series=1, per_series=1)
    state = MemoryStudy()
    update = state.apply(study.events()[0])
    assert update.changed and update.opened_revision
    assert update.header.revision == 1 and update.header.status is StudyStatus.RECEIVING
    assert (update.header.instance_count, update.header.series_count, update.header.partition) == (1, 1, PARTITION)
    assert update.header.patient.id == "PID" + study.uid[-6:]
    assert update.series is not None and update.series.body_part == "CHEST"
    assert update.instance is not None and (update.instance.revision, update.instance.first_offset) == (1, 1)


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
    first_offset = state.instances[study.events()[0].sop_instance_uid].first_offset
    update = state.apply(replace(study.events()[0], sha256="a" * 64, replaced=True))
    assert update.changed and update.header.instance_count == 2
    assert update.instance is not None and update.instance.first_offset == first_offset


def test_instance_after_publication_opens_the_next_revision() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    state = MemoryStudy()
    state.apply(study.events()[0])
    assert state.header is not None
    state.header = mark_published(mark_sealed(state.header, "t"))
    update = state.apply(study.events()[1])
    assert update.opened_revision
    assert (update.header.revision, update.header.published_revision, update.header.status) == (
        2,
        1,
        StudyStatus.RECEIVING,
    )
    assert update.instance is not None and update.instance.revision == 2
    assert state.apply(study.events()[1]).changed is False  # the repeat changes nothing, no revision 3


def test_instance_after_sealing_opens_the_next_revision_even_before_the_ready_record_is_acknowledged() -> None:
    study = SyntheticStudy(series=1, per_series=2)
    state = MemoryStudy()
    state.apply(study.events()[0])
    assert state.header is not None
    state.header = mark_sealed(state.header, "2024-05-01T10:00:00.000Z")
    assert needs_check(state.header, 0.0, QUIET)  # sealed: the ready record is (re)sent at the next check
    update = state.apply(study.events()[1])
    assert (update.header.revision, update.header.status, update.header.sealed_at) == (2, StudyStatus.RECEIVING, "")


def test_the_latest_instance_s_attributes_win_and_empty_ones_never_erase() -> None:
    study = SyntheticStudy(series=1, per_series=4)
    first, second, third, late = study.events()
    state = MemoryStudy()
    state.apply(replace(first, study_description="", laterality=""), event_time=100.0)
    state.apply(replace(second, study_description="CORRECTED", laterality="L", model="Other"), event_time=200.0)
    state.apply(replace(third, study_description="", model=""), event_time=300.0)  # says nothing: keeps
    state.apply(replace(late, study_description="OLD", model="Older"), event_time=150.0)  # read late: fills only
    assert state.header is not None and state.header.study.description == "CORRECTED"
    series = state.series[first.series_uid]
    assert (series.laterality, series.model) == ("L", "Other")


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


def test_sealed_or_published_study_is_never_ready_again_until_a_new_instance() -> None:
    state = MemoryStudy()
    state.apply(SyntheticStudy(1, 1).events()[0])
    assert state.header is not None
    sealed = mark_sealed(state.header, "t")
    assert not is_ready(sealed, 9999.0, 9999.0, QUIET)
    assert not is_ready(mark_published(sealed), 9999.0, 9999.0, QUIET)
    assert not needs_check(mark_published(sealed), 9999.0, QUIET)


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


def test_a_commitment_the_header_already_reflects_changes_nothing() -> None:
    state = MemoryStudy()
    state.apply(SyntheticStudy(1, 1).events()[0])
    assert state.header is not None
    header = request_commitment(state.header, ["1.2.3.9"], offset=7)
    assert header.applied_offset == 7 and header.commitment_waiting == ("1.2.3.9",)
    assert request_commitment(header, ["1.2.3.10"], offset=7) is header  # the same request read again


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
    assert event_time_of(replace(event, received_at="garbage"), 5.0, fallback=7.0) == 5.0
    assert event_time_of(replace(event, received_at="9999-12-31T23:59:59-23:59"), 5.0, fallback=7.0) > 5.0
    assert event_time_of(replace(event, received_at=""), None, fallback=7.0) == 7.0


def test_a_record_keyed_by_another_study_is_rejected() -> None:
    event = make_event("1.2", "1.2.3", 1)
    check_key(event, b"1.2")
    for key in (b"9.9", None, b"1.2 "):
        with pytest.raises(InvalidRecordError, match="key differs") as raised:
            check_key(event, key)
        assert raised.value.reason == "key_mismatch"


def test_state_values_round_trip_and_rows_written_before_offsets_decode() -> None:
    state = MemoryStudy()
    for event in SyntheticStudy(2, 2).events():
        state.apply(event)
    assert state.header is not None
    assert decode_header(encode_header(state.header)) == state.header
    instance = next(iter(state.instances.values()))
    assert decode_instance(encode_instance(instance)) == instance
    series = next(iter(state.series.values()))
    assert decode_series(encode_series(series)) == series
    old_row = decode_instance(b'["1.2.3","1.2","1.2.840.10008.5.1.4.1.1.2",1,"",""]')  # schema 1: six fields
    assert (old_row.revision, old_row.first_offset, old_row.source_offset) == (0, -1, -1)
    with pytest.raises(InvalidRecordError) as raised:
        decode_header(b"{}")
    assert raised.value.reason == "corrupt_state"


@pytest.mark.parametrize(
    ("info_from_event", "blank"),
    [
        (patient_from_event, {"sex": "", "birth_date": ""}),
        (study_from_event, {"description": "", "procedure_codes": ()}),
        (series_from_event, {"number": None, "model": "", "body_part": ""}),
    ],
)
def test_the_latest_instance_wins_and_an_older_one_only_fills_blanks(
    info_from_event: Callable[[InstanceEvent], Any], blank: dict[str, object]
) -> None:
    event = make_event("1.2.3.4", "1.2.3.4.1", 1, series_number=1)
    complete = info_from_event(event)
    known = replace(complete, **blank)
    assert merge_latest(known, complete, newer=False) == complete  # an older instance fills what is empty
    assert merge_latest(complete, complete, newer=True) is complete  # nothing changes: no copy
    other = make_event("1.2.3.4", "1.2.3.4.1", 2, series_number=7, sex="M", model="Other", study_description="X")
    corrected = info_from_event(other)
    assert merge_latest(complete, corrected, newer=False) is complete  # older: never overwrites
    merged = merge_latest(complete, corrected, newer=True)
    assert merged == corrected  # newer: every non-empty value wins
    emptied = replace(corrected, **blank)
    assert merge_latest(complete, emptied, newer=True) == replace(corrected, **{k: getattr(complete, k) for k in blank})


# --- A batch whose writes reached the changelog only in part, replayed --------------------------


def test_rows_delivered_without_their_header_are_counted_when_the_batch_is_replayed() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    records = list(enumerate(study.events()))
    writes = run_batch(MemoryTables(), records)
    clean = commit(MemoryTables(), writes)
    # The worker died with the instance rows acknowledged, the series row and the header not.
    partial = commit(MemoryTables(), [(k, v) for k, v in writes if k[0] == "i"])
    replayed = commit(partial, run_batch(partial, records))
    assert replayed.rows == clean.rows
    header = replayed.header(study.uid, PARTITION)
    assert header is not None and (header.instance_count, header.series_count) == (3, 1)


def test_a_header_delivered_without_some_rows_gets_them_back_and_a_sealed_study_a_new_revision() -> None:
    study = SyntheticStudy(series=1, per_series=3)
    records = list(enumerate(study.events()))
    writes = run_batch(MemoryTables(), records)
    missing = ("i", study.uid, study.events()[1].sop_instance_uid)
    partial = commit(MemoryTables(), [(k, v) for k, v in writes if k != missing])
    header = partial.rows[("h", study.uid)]
    partial.rows[("h", study.uid)] = mark_published(mark_sealed(header, "t"))  # published without that row
    replayed = commit(partial, run_batch(partial, records, wall=5000.0))
    assert replayed.rows[missing].uid == missing[2]
    repaired = replayed.header(study.uid, PARTITION)
    assert repaired is not None
    assert (repaired.revision, repaired.status, repaired.instance_count) == (2, StudyStatus.RECEIVING, 3)


def rejection_note_of(study: SyntheticStudy) -> InstanceEvent:
    events = study.events()
    return make_event(
        study.uid,
        f"{study.uid}.99",
        1,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.59",
        rejection_code="113001",
        rejected_uids=tuple(e.sop_instance_uid for e in events[1::2]),
    )


@st.composite
def batches_and_a_crash(draw: st.DrawFn) -> tuple[list[list[Record]], int, list[bool]]:
    """Batches of records of two studies (repeats, replaced instances, commitments, rejection notes); the
    batch the worker died in, and which of that batch's writes reached the changelog."""
    studies = [SyntheticStudy(series=2, per_series=3), SyntheticStudy(series=1, per_series=2)]
    pool = [e for s in studies for e in s.events()]
    choices = st.one_of(
        st.sampled_from(pool),
        st.sampled_from(pool).map(lambda e: replace(e, sha256="b" * 64, replaced=True)),
        st.sampled_from(studies).map(
            lambda s: CommitmentRequest(s.uid, "2.25.1", tuple(e.sop_instance_uid for e in s.events()[:2]))
        ),
        st.sampled_from(studies).map(rejection_note_of),  # rejects instances seen or not seen yet
    )
    records = draw(st.lists(choices, min_size=1, max_size=20))
    cuts = sorted(draw(st.sets(st.integers(1, len(records)), max_size=3)) | {len(records)})
    batches, start = [], 0
    for cut in cuts:
        batches.append([(start + i, r) for i, r in enumerate(records[start:cut])])
        start = cut
    crashed = draw(st.integers(0, len(batches) - 1))
    delivered = draw(st.lists(st.booleans(), min_size=200, max_size=200))
    return batches, crashed, delivered


@settings(max_examples=300, deadline=None)
@given(batches_and_a_crash())
def test_any_partially_delivered_batch_replayed_ends_exactly_where_the_clean_run_does(
    case: tuple[list[list[Record]], int, list[bool]],
) -> None:
    batches, crashed, delivered = case
    clean = MemoryTables()
    for batch in batches:
        commit(clean, run_batch(clean, batch))

    state = MemoryTables()
    for index, batch in enumerate(batches):
        writes = run_batch(state, batch)
        if index == crashed:  # a subset reached the changelog; the batch is read again after the restart
            commit(state, [w for w, arrived in zip(writes, delivered, strict=False) if arrived])
            writes = run_batch(state, batch)
        commit(state, writes)
    assert state.rows == clean.rows


def test_a_commitment_request_in_parts_commits_only_once_every_part_was_read() -> None:
    study = SyntheticStudy(1, 4)
    state = MemoryStudy()
    for event in study.events():
        state.apply(event)
    assert state.header is not None
    sops = [e.sop_instance_uid for e in study.events()]
    first = request_commitment(state.header, [], offset=100, transaction="2.25.7", part=1, parts=2)
    assert not first.commitment_requested and first.commitment_parts_left == 1
    again = request_commitment(first, [], offset=101, transaction="2.25.7", part=1, parts=2)  # a part repeated
    assert not again.commitment_requested
    both = request_commitment(again, [], offset=102, transaction="2.25.7", part=2, parts=2)
    assert both.commitment_requested and is_ready(both, 0.0, None, QUIET)
    waiting = request_commitment(first, [f"{sops[0]}9"], offset=102, transaction="2.25.7", part=2, parts=2)
    assert not waiting.commitment_requested and waiting.commitment_parts_left == 0


def test_two_versions_stored_at_once_keep_the_one_placed_last_whatever_order_their_events_come_in() -> None:
    event = SyntheticStudy(1, 1).events()[0]
    older = replace(event, sha256="a" * 64, placed_at_ns=1_000)
    newer = replace(event, sha256="b" * 64, placed_at_ns=2_000, replaced=True)
    state = MemoryStudy()
    state.apply(newer)
    late = state.apply(older)  # published after the newer one, but placed before it
    assert not late.changed
    assert state.instances[event.sop_instance_uid].sha256 == "b" * 64
