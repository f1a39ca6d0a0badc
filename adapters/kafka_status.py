"""The Kafka half of ``studystream status``: the broker, the workers' consumer group, its lag, the DLQ.

Read only: nothing here joins the group, commits or creates a topic (topics are listed before any
is named, so an auto-creating broker creates nothing). Every request is bounded by
``status_timeout``; a request that fails or times out makes its part of the snapshot an error, the
rest is still read. The group's members are decoded by :mod:`domain.health_decode` (foreign bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from adapters.control import read_generation_async
from app.settings import Settings
from app.topology import topology
from domain.health import DeadLetters, GroupInfo, Lag, PartitionLag, Reachability
from domain.health_decode import clean_text, decode_member
from domain.replay import group_id_for

_T = TypeVar("_T")


def failure(exc: BaseException) -> str:
    """Why a probe failed, without the exception's text (it may quote a URL with credentials)."""
    return "timed out" if isinstance(exc, TimeoutError | asyncio.TimeoutError) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class KafkaStatus:
    broker: Reachability
    group: GroupInfo | None = None
    lag: Lag | None = None
    dead_letters: DeadLetters | None = None


class _Bounded:
    """Awaits with the status timeout."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.status_timeout

    async def __call__(self, awaitable: Awaitable[_T]) -> _T:
        return await asyncio.wait_for(awaitable, self.timeout)


async def kafka_status(settings: Settings, now: float) -> KafkaStatus:
    """Everything ``status`` reads from Kafka at wall-clock time ``now`` (epoch seconds)."""
    bounded = _Bounded(settings)
    target = ",".join(settings.bootstrap_servers)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(settings.status_timeout * 1000)
    )
    try:
        await bounded(admin.start())
        cluster = await bounded(admin.describe_cluster())
        described = await bounded(admin.describe_topics())
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is "broker down"
        await _quietly(admin.close(), bounded)
        return KafkaStatus(Reachability("broker", target, False, failure(exc)))
    try:
        brokers = len(cluster.get("brokers", ()))
        broker = Reachability("broker", target, True, f"{brokers} broker(s)")
        partitions = {
            t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if not t["error_code"]
        }
        try:
            group_id = group_id_for(settings.app_id, await bounded(read_generation_async(settings)))
        except Exception as exc:  # noqa: BLE001
            error = f"state generation unreadable ({failure(exc)})"
            return KafkaStatus(broker, GroupInfo(settings.app_id, error=error), Lag(error=error))
        group, commits = await asyncio.gather(
            _group(admin, group_id, settings, bounded), _commits(admin, group_id, bounded), return_exceptions=True
        )
        lag, dead_letters = await _offsets(settings, partitions, commits, now, bounded)
        return KafkaStatus(broker, _as_group(group, group_id), lag, dead_letters)
    finally:
        await _quietly(admin.close(), bounded)


async def _quietly(awaitable: Awaitable[Any], bounded: _Bounded) -> None:
    try:
        await bounded(awaitable)
    except Exception:  # noqa: BLE001, S110 - closing a client that never connected
        pass


def _as_group(result: GroupInfo | BaseException, group_id: str) -> GroupInfo:
    return result if isinstance(result, GroupInfo) else GroupInfo(group_id, error=failure(result))


async def _group(admin: AIOKafkaAdminClient, group_id: str, settings: Settings, bounded: _Bounded) -> GroupInfo:
    # One group per request: aiokafka 0.14 mis-parses a DescribeGroups response listing several.
    (response,) = await bounded(admin.describe_consumer_groups([group_id]))
    (group,) = response.to_object()["groups"]
    if group["error_code"] != 0:
        return GroupInfo(group_id, error=f"error {group['error_code']}")
    members = tuple(
        decode_member(
            m.get("member_id"),
            m.get("client_id"),
            m.get("client_host"),
            m.get("member_metadata"),
            m.get("member_assignment"),
            settings.status_max_body_bytes,
        )
        for m in group["members"]
    )
    return GroupInfo(group_id, clean_text(group["state"], 40), members)


async def _commits(admin: AIOKafkaAdminClient, group_id: str, bounded: _Bounded) -> dict[tuple[str, int], int]:
    offsets = await bounded(admin.list_consumer_group_offsets(group_id))
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def _lag_topics(settings: Settings, partitions: dict[str, list[int]], commits: Iterable[tuple[str, int]]) -> list[str]:
    """The worker's inputs that exist, and any other topic the group committed offsets for."""
    wanted = set(topology(settings).worker_inputs) | {topic for topic, _ in commits}
    return sorted(topic for topic in wanted if topic in partitions)


async def _offsets(
    settings: Settings,
    partitions: dict[str, list[int]],
    commits: dict[tuple[str, int], int] | BaseException,
    now: float,
    bounded: _Bounded,
) -> tuple[Lag, DeadLetters]:
    dlq_topic, window = settings.topic_dlq, settings.status_dlq_window
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=int(settings.status_timeout * 1000),
    )
    try:
        await bounded(consumer.start())
    except Exception as exc:  # noqa: BLE001
        await _quietly(consumer.stop(), bounded)
        return Lag(error=failure(exc)), DeadLetters(dlq_topic, window, error=failure(exc))
    try:
        if isinstance(commits, BaseException):
            lag = Lag(error=f"committed offsets unreadable ({failure(commits)})")
        else:
            lag = await _lag(consumer, _lag_topics(settings, partitions, commits), partitions, commits, bounded)
        dead_letters = await _dead_letters(consumer, dlq_topic, partitions.get(dlq_topic), window, now, bounded)
        return lag, dead_letters
    finally:
        await _quietly(consumer.stop(), bounded)


async def _lag(
    consumer: AIOKafkaConsumer,
    topics: list[str],
    partitions: dict[str, list[int]],
    commits: dict[tuple[str, int], int],
    bounded: _Bounded,
) -> Lag:
    tps = [TopicPartition(topic, p) for topic in topics for p in partitions[topic]]
    if not tps:
        return Lag()
    try:
        starts = await bounded(consumer.beginning_offsets(tps))
        ends = await bounded(consumer.end_offsets(tps))
    except Exception as exc:  # noqa: BLE001
        return Lag(error=failure(exc))
    return Lag(
        tuple(
            PartitionLag(tp.topic, tp.partition, starts[tp], ends[tp], commits.get((tp.topic, tp.partition)))
            for tp in tps
        )
    )


async def _dead_letters(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: list[int] | None,
    window: float,
    now: float,
    bounded: _Bounded,
) -> DeadLetters:
    """Records appended to the DLQ since ``now - window``: per partition, end offset minus the first
    offset at or after that time (none: no record that recent)."""
    if partitions is None:
        return DeadLetters(topic, window, error="topic does not exist")
    tps = [TopicPartition(topic, p) for p in partitions]
    since_ms = int((now - window) * 1000)
    try:
        ends = await bounded(consumer.end_offsets(tps))
        found = await bounded(consumer.offsets_for_times(dict.fromkeys(tps, since_ms)))
    except Exception as exc:  # noqa: BLE001
        return DeadLetters(topic, window, error=failure(exc))
    count = sum(max(0, ends[tp] - at.offset) for tp in tps if (at := found.get(tp)) is not None)
    return DeadLetters(topic, window, count)
