"""domain.health.judge: the verdict of `studystream status` (0 healthy, 1 degraded, 2 down), without I/O."""

from __future__ import annotations

import dataclasses

import pytest

from domain.health import (
    DeadLetters,
    GroupInfo,
    Lag,
    Level,
    PartitionLag,
    Reachability,
    ReceiverHealth,
    Snapshot,
    StudyCounts,
    Thresholds,
    WorkerMember,
    judge,
)

LIMITS = Thresholds(partition_lag=100, outbox_depth=50, quarantine_depth=0, dead_letters=0, parked=0, failed=0)
RECEIVER = ReceiverHealth(
    "http://r1:9110/health",
    True,
    200,
    readable=True,
    serving=True,
    broker_connected=True,
    outbox_depth=0,
    quarantine_depth=0,
    associations=0,
)
MEMBER = WorkerMember("m1", "faust-0.15", "10.0.0.1", "http://w1:6066", {"imaging.raw": (0, 1)}, "ok")


def healthy() -> Snapshot:
    return Snapshot(
        broker=Reachability("broker", "localhost:9092", True, "1 broker(s)"),
        fhir=Reachability("fhir", "http://fhir/r4", True, "HAPI"),
        receivers=(RECEIVER,),
        group=GroupInfo("studystream", "Stable", (MEMBER,)),
        lag=Lag((PartitionLag("imaging.raw", 0, 0, 10, 10), PartitionLag("imaging.raw", 1, 0, 5, 5))),
        studies=StudyCounts({"published": 3, "ready": 1}, workers_asked=1, workers_answered=1),
        dead_letters=DeadLetters("imaging.dlq", 3600.0, 0),
    )


def level_of(**changes: object) -> tuple[Level, list[str]]:
    verdict = judge(dataclasses.replace(healthy(), **changes), LIMITS)
    return verdict.level, [f.message for f in verdict.findings]


def test_a_healthy_pipeline_has_no_finding_and_exit_status_0() -> None:
    verdict = judge(healthy(), LIMITS)
    assert verdict.level is Level.HEALTHY and int(verdict.level) == 0
    assert verdict.findings == ()
    assert verdict.of("broker") is Level.HEALTHY


@pytest.mark.parametrize("service", ["broker", "fhir"])
def test_an_unreachable_broker_or_fhir_server_is_down(service: str) -> None:
    gone = Reachability(service, "somewhere", False, "ConnectError")
    level, messages = level_of(**{service: gone})
    assert level is Level.DOWN
    assert messages == [f"{service} unreachable at somewhere: ConnectError"]


def test_a_broker_that_did_not_answer_leaves_the_kafka_parts_unasked_not_failed() -> None:
    level, messages = level_of(broker=Reachability("broker", "b:9092", False, "timed out"), group=None, lag=None)
    assert level is Level.DOWN and len(messages) == 1


@pytest.mark.parametrize(
    ("receiver", "expected", "words"),
    [
        (ReceiverHealth("http://r1/health", False, error="ConnectError"), Level.DOWN, "unreachable"),
        (dataclasses.replace(RECEIVER, http_status=503, serving=False), Level.DOWN, "not serving"),
        (ReceiverHealth("http://r1/health", True, 404, error="HTTP 404"), Level.DOWN, "not serving"),
        (ReceiverHealth("http://r1/health", True, 200, error="unreadable health"), Level.DEGRADED, "unreadable health"),
        (dataclasses.replace(RECEIVER, broker_connected=False), Level.DEGRADED, "no connection to the broker"),
        (dataclasses.replace(RECEIVER, quarantine_depth=1), Level.DEGRADED, "1 events in quarantine"),
        (dataclasses.replace(RECEIVER, outbox_depth=51), Level.DEGRADED, "outbox depth 51"),
        (dataclasses.replace(RECEIVER, outbox_depth=50), Level.HEALTHY, ""),
    ],
)
def test_receivers(receiver: ReceiverHealth, expected: Level, words: str) -> None:
    level, messages = level_of(receivers=(RECEIVER, receiver))
    assert level is expected
    assert all(words in m for m in messages) and len(messages) == (expected is not Level.HEALTHY)


def test_a_receiver_in_trouble_on_several_counts_says_each() -> None:
    troubled = dataclasses.replace(RECEIVER, broker_connected=False, quarantine_depth=3, outbox_depth=900)
    level, messages = level_of(receivers=(troubled,))
    assert level is Level.DEGRADED and len(messages) == 3


@pytest.mark.parametrize(
    ("group", "expected", "words"),
    [
        (GroupInfo("studystream", "Empty", ()), Level.DOWN, "no worker in consumer group studystream"),
        (GroupInfo("studystream", "Dead", ()), Level.DOWN, "no worker"),
        (GroupInfo("studystream", error="timed out"), Level.DOWN, "unreadable: timed out"),
        (GroupInfo("studystream", "PreparingRebalance", (MEMBER,)), Level.DEGRADED, "PreparingRebalance"),
        (
            GroupInfo("studystream", "Stable", (dataclasses.replace(MEMBER, partitions=None),)),
            Level.DEGRADED,
            "unreadable partition assignment",
        ),
        (
            GroupInfo("studystream", "Stable", (dataclasses.replace(MEMBER, state="rebalancing"),)),
            Level.DEGRADED,
            "http://w1:6066: rebalancing",
        ),
        (GroupInfo("studystream", "Stable", (dataclasses.replace(MEMBER, state=""),)), Level.HEALTHY, ""),
    ],
)
def test_workers(group: GroupInfo, expected: Level, words: str) -> None:
    level, messages = level_of(group=group)
    assert level is expected
    assert all(words in m for m in messages) and len(messages) == (expected is not Level.HEALTHY)


def test_lag_is_the_distance_from_the_commit_or_from_the_log_start_without_one() -> None:
    assert PartitionLag("t", 0, 0, 10, 4).lag == 6
    assert PartitionLag("t", 0, 0, 10, 10).lag == 0
    assert PartitionLag("t", 0, 3, 10, None).lag == 7  # never committed: everything retained is unread
    assert PartitionLag("t", 0, 8, 10, 2).lag == 2  # committed below the log start: the rest is gone
    assert PartitionLag("t", 0, 0, 10, 12).lag == 0
    lag = Lag((PartitionLag("a", 0, 0, 10, 4), PartitionLag("a", 1, 0, 3, 0), PartitionLag("b", 0, 0, 1, 1)))
    assert lag.by_topic() == {"a": 9, "b": 0}


def test_lag_above_the_threshold_on_one_partition_is_degraded_and_names_the_worst() -> None:
    at_limit = Lag((PartitionLag("imaging.raw", 0, 0, 100, 0), PartitionLag("imaging.raw", 1, 0, 0, 0)))
    assert level_of(lag=at_limit)[0] is Level.HEALTHY
    behind = Lag((PartitionLag("imaging.raw", 0, 0, 101, 0), PartitionLag("imaging.study.ready", 3, 0, 500, 0)))
    level, messages = level_of(lag=behind)
    assert level is Level.DEGRADED
    assert messages == ["2 partition(s) lag more than 100 records (worst imaging.study.ready[3]: 500)"]
    assert level_of(lag=Lag(error="timed out"))[0] is Level.DEGRADED


@pytest.mark.parametrize(
    ("studies", "words"),
    [
        (StudyCounts({"failed": 1}), "1 failed and 0 conflicting studies"),
        (StudyCounts({"conflict": 2}), "0 failed and 2 conflicting studies"),
        (StudyCounts({}, parked=3, oldest_parked_seconds=125.4), "3 uploads parked (oldest 125 s)"),
        (StudyCounts({}, complete=False, workers_asked=2, workers_answered=1), "1 of 2 workers answered"),
        (StudyCounts(error="w1: unreadable answer"), "studies unavailable: w1: unreadable answer"),
    ],
)
def test_studies_that_need_a_look_degrade(studies: StudyCounts, words: str) -> None:
    level, messages = level_of(studies=studies)
    assert level is Level.DEGRADED and len(messages) == 1 and words in messages[0]


def test_study_thresholds_are_strict() -> None:
    lenient = dataclasses.replace(LIMITS, failed=2, parked=1)
    verdict = judge(
        dataclasses.replace(healthy(), studies=StudyCounts({"failed": 1, "conflict": 1}, parked=1)), lenient
    )
    assert verdict.level is Level.HEALTHY


def test_dead_letters_in_the_window_degrade() -> None:
    assert level_of(dead_letters=DeadLetters("imaging.dlq", 3600.0, 0))[0] is Level.HEALTHY
    level, messages = level_of(dead_letters=DeadLetters("imaging.dlq", 3600.0, 4))
    assert level is Level.DEGRADED and messages == ["4 dead letters in the last 3600 s"]
    level, messages = level_of(dead_letters=DeadLetters("imaging.dlq", 3600.0, error="topic does not exist"))
    assert level is Level.DEGRADED and "imaging.dlq unreadable" in messages[0]


def test_the_worst_finding_decides_and_each_component_keeps_its_own_level() -> None:
    verdict = judge(
        dataclasses.replace(
            healthy(),
            fhir=Reachability("fhir", "http://fhir", False, "timed out"),
            dead_letters=DeadLetters("imaging.dlq", 3600.0, 1),
        ),
        LIMITS,
    )
    assert verdict.level is Level.DOWN and int(verdict.level) == 2
    assert verdict.of("fhir") is Level.DOWN
    assert verdict.of("dead letters") is Level.DEGRADED
    assert verdict.of("receivers") is Level.HEALTHY
