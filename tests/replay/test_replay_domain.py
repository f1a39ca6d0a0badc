"""domain.replay without Kafka: parsing targets, planning offsets per partition, a new state generation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.control import decode_generation, encode_generation
from domain.replay import (
    PartitionOffsets,
    ReplayError,
    ReplayTarget,
    TargetKind,
    group_id_for,
    make_target,
    parse_datetime,
    parse_offsets,
    plan_new_generation,
    plan_replay,
    render_plan,
)

TOPIC = "imaging.raw"


def offsets(partition: int, log_start: int, end: int, committed: int | None, at_time: int | None = None):
    return PartitionOffsets(partition, log_start, end, committed, at_time)


# --- parsing ---


def test_offsets_spec_is_parsed_sorted_and_validated() -> None:
    assert parse_offsets("3:0, 0:120") == ((0, 120), (3, 0))
    for bad in ("", "0", "a:1", "0:-1", "-1:0", "0:1,0:2"):
        with pytest.raises(ReplayError):
            parse_offsets(bad)


def test_datetime_needs_a_utc_offset() -> None:
    expected = int(datetime(2024, 5, 1, 8, 0, tzinfo=UTC).timestamp() * 1000)
    assert parse_datetime("2024-05-01T10:00:00+02:00") == expected
    assert parse_datetime("2024-05-01T08:00:00Z") == expected
    with pytest.raises(ReplayError, match="no UTC offset"):
        parse_datetime("2024-05-01T10:00:00")
    with pytest.raises(ReplayError, match="not an ISO 8601"):
        parse_datetime("yesterday")


def test_exactly_one_target_option() -> None:
    assert make_target(True, None, None).kind is TargetKind.EARLIEST
    assert make_target(False, "2024-05-01T08:00:00Z", None).kind is TargetKind.DATETIME
    assert make_target(False, None, "1:5").offsets == ((1, 5),)
    for args in ((False, None, None), (True, "2024-05-01T08:00:00Z", None), (True, None, "1:5")):
        with pytest.raises(ReplayError, match="exactly one"):
            make_target(*args)


# --- planning ---


def test_earliest_rereads_from_log_start_and_counts_what_was_already_read() -> None:
    plan = plan_replay(
        TOPIC,
        "studystream",
        ReplayTarget(TargetKind.EARLIEST),
        [offsets(1, 5, 40, 40), offsets(0, 0, 10, 7), offsets(2, 0, 0, None)],
    )
    assert [p.partition for p in plan.partitions] == [0, 1, 2]
    assert plan.commits == {0: 0, 1: 5, 2: 0}
    assert [p.reread for p in plan.partitions] == [7, 35, 0]
    assert plan.reread == 42 and plan.skipped == 0


def test_datetime_target_uses_offsets_for_times_and_the_end_when_nothing_is_that_new() -> None:
    target = ReplayTarget(TargetKind.DATETIME, timestamp_ms=1)
    plan = plan_replay(TOPIC, "g", target, [offsets(0, 0, 10, 10, at_time=6), offsets(1, 0, 8, 8, at_time=None)])
    assert plan.commits == {0: 6, 1: 8}
    assert plan.reread == 4


def test_uncommitted_partition_resumes_at_log_start_so_a_datetime_target_skips_ahead() -> None:
    plan = plan_replay(TOPIC, "g", ReplayTarget(TargetKind.DATETIME, timestamp_ms=1), [offsets(0, 2, 10, None, 6)])
    (p,) = plan.partitions
    assert (p.resume, p.target, p.reread, p.skipped) == (2, 6, 0, 4)
    assert "WARNING: 4 event(s) not yet read will be skipped" in render_plan(plan)


def test_explicit_offsets_move_only_the_listed_partitions_and_must_be_inside_the_log() -> None:
    parts = [offsets(0, 0, 10, 10), offsets(1, 3, 9, 9)]
    plan = plan_replay(TOPIC, "g", ReplayTarget(TargetKind.OFFSETS, offsets=((1, 4),)), parts)
    assert plan.commits == {1: 4}
    assert [p.changed for p in plan.partitions] == [False, True]
    assert plan.reread == 5
    with pytest.raises(ReplayError, match="outside the log"):
        plan_replay(TOPIC, "g", ReplayTarget(TargetKind.OFFSETS, offsets=((1, 2),)), parts)
    with pytest.raises(ReplayError, match="no partition 7"):
        plan_replay(TOPIC, "g", ReplayTarget(TargetKind.OFFSETS, offsets=((7, 0),)), parts)


def test_rendered_plan_lists_every_partition_and_the_total() -> None:
    plan = plan_replay(TOPIC, "grp", ReplayTarget(TargetKind.EARLIEST), [offsets(0, 0, 10, 7), offsets(1, 0, 0, None)])
    text = render_plan(plan)
    assert "Replay of imaging.raw for consumer group grp to earliest:" in text
    rows = [line.split() for line in text.splitlines()[3:5]]
    assert rows == [["0", "0", "10", "7", "0", "7"], ["1", "0", "0", "-", "0", "0"]]
    assert text.splitlines()[-1] == "7 event(s) will be read again."


# --- new state generation ---


def test_group_id_follows_faust_version_naming() -> None:
    assert group_id_for("studystream", 1) == "studystream"
    assert group_id_for("studystream", 3) == "studystream-v3"


def test_new_generation_continues_other_topics_and_starts_the_replayed_one_at_the_target() -> None:
    plan = plan_replay(
        TOPIC,
        "app-v2",
        ReplayTarget(TargetKind.DATETIME, timestamp_ms=1),
        [offsets(0, 0, 10, 10, at_time=4), offsets(1, 0, 0, None, at_time=None)],
    )
    old = {
        (TOPIC, 0): 10,
        ("imaging.study.ready", 0): 3,
        ("imaging.study.ready", 1): 5,
        ("app-upload-due", 0): 2,
        ("app-v2-study-headers-changelog", 0): 99,
    }
    gen = plan_new_generation("app", 2, old, plan)
    assert (gen.generation, gen.group_id) == (3, "app-v3")
    assert gen.commits == {
        (TOPIC, 0): 4,
        (TOPIC, 1): 0,  # moved by the replay (to its end): committed although the old group never was
        ("imaging.study.ready", 0): 3,
        ("imaging.study.ready", 1): 5,
        ("app-upload-due", 0): 2,
    }


def test_control_record_round_trips_and_ignores_what_is_not_a_generation() -> None:
    assert decode_generation(encode_generation(4, "test")) == 4
    for raw in (None, b"", b"not json", b'{"generation": 0}', b'{"other": 1}'):
        assert decode_generation(raw) is None
