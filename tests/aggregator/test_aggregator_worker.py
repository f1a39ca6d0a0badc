"""The aggregator end to end: `studystream worker` subprocesses on the real broker, RocksDB tables."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from app.settings import Settings
from domain import dead_letters
from domain.events import CommitmentRequest, encode_commitment_request, encode_instance_event
from tests.aggregator.conftest import (
    SyntheticStudy,
    TopicCollector,
    Worker,
    interleave,
    make_event,
    new_worker,
    produce_events,
    produce_raw,
)
from tests.conftest import wait_for

READY_TIMEOUT = 60.0


def test_interleaved_studies_are_ready_once_with_exact_counts_and_duplicates_ignored(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    studies = [SyntheticStudy(series=2, per_series=5), SyntheticStudy(series=1, per_series=7), SyntheticStudy(3, 3)]
    events = interleave(*(s.events() for s in studies))
    produce_events(aggregator_settings, events + events[:6])  # a second delivery of six instances

    new_worker(workers, aggregator_settings, tmp_path, "w1").start().wait_started()

    wait_for(lambda: len(ready_topic.ready) >= 3, READY_TIMEOUT, what="3 ready events")
    for study in studies:
        (record,) = ready_topic.ready_for(study.uid)
        assert record.revision == 1
        assert record.number_of_series == study.series
        assert record.number_of_instances == study.instance_count
        assert [s.number_of_instances for s in record.series] == [study.per_series] * study.series
        assert record.patient.id == "PID" + study.uid[-6:]
        assert record.modalities == ("CT",)
        first = record.series[0]
        assert [i.number for i in first.instances] == list(range(1, study.per_series + 1))


def assert_nothing_more(collector: TopicCollector, expected: int, window: float) -> None:
    """Fail if ``collector`` gets more than ``expected`` messages within ``window`` seconds.

    A repeated ready event would follow a completeness check, which the timer sends every
    ``aggregator_check_interval`` once the quiet period has passed: the window covers several.
    """
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        assert len(collector.messages) <= expected, f"unexpected extra messages: {collector.messages[expected:]}"
        time.sleep(0.2)
    assert len(collector.messages) == expected


def test_late_instance_after_ready_publishes_revision_2_with_new_counts(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    study = SyntheticStudy(series=1, per_series=4)
    produce_events(aggregator_settings, study.events())
    new_worker(workers, aggregator_settings, tmp_path, "w1").start().wait_started()
    wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="revision 1")

    late = make_event(study.uid, study.series_uid(1), 1, series_number=2, modality="SR")
    produce_events(aggregator_settings, [late, study.events()[0]])  # plus a repeat: must not count

    wait_for(lambda: len(ready_topic.ready_for(study.uid)) >= 2, READY_TIMEOUT, what="revision 2")
    first, second = ready_topic.ready_for(study.uid)
    assert (first.revision, first.number_of_series, first.number_of_instances) == (1, 1, 4)
    assert (second.revision, second.number_of_series, second.number_of_instances) == (2, 2, 5)
    assert second.modalities == ("CT", "SR")
    assert_nothing_more(ready_topic, 2, window=3 * aggregator_settings.quiet_period)


def test_poison_events_go_to_the_dlq_and_later_events_are_processed(
    aggregator_settings: Settings,
    workers: list[Worker],
    ready_topic: TopicCollector,
    dlq_topic: TopicCollector,
    tmp_path: Path,
) -> None:
    study = SyntheticStudy(series=1, per_series=3)
    not_json = b"\x00\xffnot json"
    no_sop = orjson.dumps({"study_uid": study.uid, "series_uid": study.series_uid(0), "sop_class_uid": "1.2"})
    bad_uid = encode_instance_event(make_event(study.uid, study.series_uid(0), 9, sop_instance_uid="1.2|x"))
    produce_raw(aggregator_settings, [(study.uid.encode(), not_json), (study.uid.encode(), no_sop)])
    produce_raw(aggregator_settings, [(study.uid.encode(), bad_uid)])
    produce_events(aggregator_settings, study.events())
    new_worker(workers, aggregator_settings, tmp_path, "w1").start().wait_started()

    wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="the valid study to be ready")
    wait_for(lambda: len(dlq_topic.messages) >= 3, READY_TIMEOUT, what="3 dead letters")
    (record,) = ready_topic.ready_for(study.uid)
    assert record.number_of_instances == 3
    values = [value for _, value, _, _ in dlq_topic.messages]
    assert values == [not_json, no_sop, bad_uid]  # the original bytes, in order (one study, one partition)
    reasons = [headers[dead_letters.REASON].decode() for _, _, headers, _ in dlq_topic.messages]
    assert reasons == ["not_json", "invalid_field", "invalid_field"]
    messages = [headers[dead_letters.MESSAGE].decode() for _, _, headers, _ in dlq_topic.messages]
    assert "sop_instance_uid" in messages[1] and "sop_instance_uid" in messages[2]
    sources = [headers[dead_letters.SOURCE].decode() for _, _, headers, _ in dlq_topic.messages]
    assert [s.rsplit("@", 1)[1] for s in sources] == ["0", "1", "2"]
    assert {headers[dead_letters.STAGE] for _, _, headers, _ in dlq_topic.messages} == {b"aggregator"}


def test_worker_killed_mid_study_recovers_and_publishes_the_study_once(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    settings = aggregator_settings.model_copy(update={"quiet_period": 3.0})
    study = SyntheticStudy(series=2, per_series=10)
    events = study.events()
    worker = new_worker(workers, settings, tmp_path, "w1").start()
    worker.wait_started()

    produce_events(settings, events[:12])
    wait_for(lambda: "revision 1 opened" in worker.log(), READY_TIMEOUT, what="the worker to open the study")
    worker.kill()
    assert not ready_topic.ready_for(study.uid), "ready before the quiet period"
    produce_events(settings, events[8:])  # overlaps what the dead worker saw: four duplicates

    worker.start().wait_started(starts=2)
    wait_for(lambda: ready_topic.ready_for(study.uid), READY_TIMEOUT, what="the study after the restart")
    (record,) = ready_topic.ready_for(study.uid)
    assert (record.revision, record.number_of_series, record.number_of_instances) == (1, 2, 20)
    assert_nothing_more(ready_topic, 1, window=2 * settings.quiet_period)


def test_two_workers_one_killed_mid_stream_every_study_ready_once_with_all_instances(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    # Longer than the pause between the two halves (kill, takeover): a study that paused a whole quiet
    # period in event time is complete by definition, and its second half would rightly be revision 2.
    settings = aggregator_settings.model_copy(update={"quiet_period": 10.0})
    studies = [SyntheticStudy(series=2, per_series=5) for _ in range(20)]
    first_halves = interleave(*(s.events()[:5] for s in studies))
    second_halves = interleave(*(s.events()[5:] for s in studies))
    survivor = new_worker(workers, settings, tmp_path, "survivor").start()
    victim = new_worker(workers, settings, tmp_path, "victim").start()
    survivor.wait_started()
    victim.wait_started()

    produce_events(settings, first_halves)
    opened = lambda w: w.log().count("revision 1 opened")  # noqa: E731
    wait_for(lambda: opened(survivor) + opened(victim) == 20, READY_TIMEOUT, what="all studies opened")
    assert opened(victim) > 0, "the rebalance gave the victim no partition: nothing would be tested"
    victim.kill()
    produce_events(settings, second_halves)

    wait_for(lambda: len(ready_topic.ready) >= 20, 2 * READY_TIMEOUT, what="20 ready events")
    assert_nothing_more(ready_topic, 20, window=2 * settings.quiet_period)
    for study in studies:
        (record,) = ready_topic.ready_for(study.uid)
        assert (record.revision, record.number_of_instances, record.number_of_series) == (1, 10, 2)


def test_storage_commitment_covering_the_study_makes_it_ready_without_the_quiet_period(
    aggregator_settings: Settings, workers: list[Worker], ready_topic: TopicCollector, tmp_path: Path
) -> None:
    settings = aggregator_settings.model_copy(update={"quiet_period": 300.0})
    complete, partial = SyntheticStudy(series=1, per_series=4), SyntheticStudy(series=1, per_series=4)
    worker = new_worker(workers, settings, tmp_path, "w1").start()
    worker.wait_started()

    produce_events(settings, complete.events() + partial.events())
    commit_all = CommitmentRequest(complete.uid, "2.25.1", tuple(e.sop_instance_uid for e in complete.events()))
    # One instance the aggregator never saw (stored by another receiving process, say): no shortcut.
    commit_more = CommitmentRequest(
        partial.uid, "2.25.2", (*[e.sop_instance_uid for e in partial.events()], f"{partial.series_uid(0)}.9")
    )
    produce_raw(settings, [(r.key, encode_commitment_request(r)) for r in (commit_all, commit_more)])

    wait_for(lambda: ready_topic.ready_for(complete.uid), 60, what="the committed study, long before 300 s")
    (record,) = ready_topic.ready_for(complete.uid)
    assert (record.revision, record.number_of_instances) == (1, 4)
    wait_for(lambda: "names 1 instance(s) not seen yet" in worker.log(), 30, what="the partial commitment logged")
    assert not ready_topic.ready_for(partial.uid)

    # The instance another receiving process stored arrives: the study is committed, ready at once.
    produce_events(settings, [make_event(partial.uid, partial.series_uid(0), 9, series_number=1)])
    wait_for(lambda: ready_topic.ready_for(partial.uid), 60, what="the partial study once its last instance came")
    (record,) = ready_topic.ready_for(partial.uid)
    assert (record.revision, record.number_of_instances) == (1, 5)
