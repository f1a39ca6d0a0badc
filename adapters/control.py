"""The control topic: what every worker of an app id must agree on before the Faust app exists.

- The state generation (key ``state-generation/<app id>``).
- The redrive ledger (key ``redriven/<app id>``): the dead letters ``studystream redrive`` sent back.
- The ready-replay fence (key ``ready-replay/<app id>``): per imaging.study.ready partition, the
  offset below which records were re-read by ``studystream replay``. The uploader checks such a record
  against the FHIR server instead of trusting its outcomes table (the server may have been restored
  from a backup). Writing to the outcomes changelog instead would need a changelog recovery at the
  next start, during which Faust (0.15) can drop a stream record (faust-streaming issue #596).

The generation is the Faust app ``version`` (see :mod:`domain.replay`): ``studystream replay
--reset-state`` moves to generation N+1, which gives every table a fresh changelog, fresh local
stores and a fresh consumer group. It lives in Kafka, not in each host's configuration, so all
workers agree on it without an operator editing every host: a worker that read generation N and
one that read N+1 would consume the same input twice, in two groups.

One partition, compacted, JSON values (``{"generation": N, ...}``, ``{"group": id, "until": {p: offset}}``):
the last record for a key wins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from app.settings import Settings
from app.topology import topology
from domain.errors import ConfigurationError

FIRST_GENERATION = 1
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ControlState:
    generation: int = FIRST_GENERATION
    ready_replay_group: str = ""  # the consumer group the fence was set for
    ready_replay_until: dict[int, int] = field(default_factory=dict)  # partition → first offset NOT replayed
    redrive_ledger: bytes = b""  # `studystream redrive`: the dead letters already sent back (domain.redrive.Ledger)

    def replayed(self, group_id: str, partition: int, offset: int) -> bool:
        """Whether a ready record was re-read by a replay (of this generation's group)."""
        return group_id == self.ready_replay_group and offset < self.ready_replay_until.get(partition, 0)


def generation_key(app_id: str) -> bytes:
    return f"state-generation/{app_id}".encode()


def ready_replay_key(app_id: str) -> bytes:
    return f"ready-replay/{app_id}".encode()


def redrive_key(app_id: str) -> bytes:
    return f"redriven/{app_id}".encode()


def encode_ready_replay(group_id: str, until: dict[int, int]) -> bytes:
    return orjson.dumps({"group": group_id, "until": {str(p): o for p, o in until.items()}})


def decode_ready_replay(raw: bytes | None) -> tuple[str, dict[int, int]]:
    """(group, partition → offset) of a fence record; ``("", {})`` for anything else."""
    if not raw:
        return "", {}
    try:
        data = orjson.loads(raw)
        return str(data["group"]), {int(p): int(o) for p, o in data["until"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return "", {}


def decode_generation(raw: bytes | None) -> int | None:
    """The generation in one control record; ``None`` for a tombstone or a record that is not one."""
    if not raw:
        return None
    try:
        value = int(orjson.loads(raw)["generation"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return value if value >= FIRST_GENERATION else None


def encode_generation(generation: int, reason: str) -> bytes:
    set_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return orjson.dumps({"generation": generation, "set_at": set_at, "reason": reason})


async def read_control_async(settings: Settings) -> ControlState:
    """The app id's control state; the defaults when the control topic or a key does not exist yet."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(settings.replay_timeout * 1000)
    )
    await admin.start()
    try:
        # Listed, not described: a metadata request for a missing topic would make an auto-creating broker create it.
        if settings.topic_control not in await admin.list_topics():
            return ControlState()
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(settings.replay_timeout * 1000),
    )
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_control, 0)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        # An explicit seek: seek_to_beginning right after assign() can lose to the default "latest" reset.
        consumer.seek(tp, start)
        generation_record, fence_record = generation_key(settings.app_id), ready_replay_key(settings.app_id)
        ledger_record = redrive_key(settings.app_id)
        generation, fence, ledger = FIRST_GENERATION, ("", {}), b""
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=int(settings.replay_timeout * 1000))
            if not batch:
                raise ConfigurationError(f"control topic {settings.topic_control} did not answer")
            for record in batch.get(tp, []):
                if record.key == generation_record:
                    generation = decode_generation(record.value) or FIRST_GENERATION
                elif record.key == fence_record:
                    fence = decode_ready_replay(record.value)
                elif record.key == ledger_record:
                    ledger = record.value or b""
        return ControlState(generation, fence[0], fence[1], ledger)
    finally:
        await consumer.stop()


async def read_generation_async(settings: Settings) -> int:
    return (await read_control_async(settings)).generation


async def write_control_async(settings: Settings, key: bytes, value: bytes) -> None:
    """Write one control record (creating the compacted control topic when missing)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        if settings.topic_control not in await admin.list_topics():
            control = topology(settings).control
            response = await admin.create_topics(
                [NewTopic(control.name, control.partitions, 1, topic_configs=dict(control.config))]
            )
            for name, code, *rest in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigurationError(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_control, key=key, value=value, partition=0)
    finally:
        await producer.stop()


async def write_generation_async(settings: Settings, generation: int, reason: str) -> None:
    await write_control_async(settings, generation_key(settings.app_id), encode_generation(generation, reason))


async def write_ready_replay_async(settings: Settings, group_id: str, until: dict[int, int]) -> None:
    await write_control_async(settings, ready_replay_key(settings.app_id), encode_ready_replay(group_id, until))


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even when the caller is inside an event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def read_control(settings: Settings) -> ControlState:
    """For :mod:`app.stream_app`, before the Faust app exists. Fails (never guesses) when Kafka does not answer."""
    try:
        return run_sync(read_control_async(settings))
    except KafkaError as exc:
        raise ConfigurationError(
            f"cannot read the state generation from {settings.topic_control} at {settings.broker_url}: {exc}"
        ) from exc
