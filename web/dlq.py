"""Recent dead letters for ``/api/dlq``: the tail of ``imaging.dlq``, read on request.

Read with a group-less consumer (no offsets committed, no rebalance of the workers' group), so every
worker answers with the dead letters of all partitions, and nothing is lost across restarts. The
records' values (original events, which carry patient data) are not returned, only their size and
the reason headers the aggregator and the uploader set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from app.settings import Settings
from domain import dead_letters


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


def dead_letter_row(
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    value_size: int,
    show_patient_data: bool = False,
) -> dict[str, Any]:
    """One dead letter as the API shows it (pure): the safe headers; the server's diagnostics only with patient data."""
    named = dead_letters.header_map(headers)
    row: dict[str, Any] = {
        "partition": partition,
        "offset": offset,
        "timestamp": (
            datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if timestamp_ms
            else ""
        ),
        "study_uid": _text(key),
        "value_bytes": value_size,
        "has_operation_outcome": dead_letters.OPERATION_OUTCOME in named,
    }
    for name in dead_letters.SAFE_HEADERS:
        row[name.removeprefix(dead_letters.PREFIX).replace("-", "_")] = dead_letters.text(named, name)
    if show_patient_data:
        row["detail"] = dead_letters.text(named, dead_letters.DETAIL)
    return row


def newest(rows: Sequence[Mapping[str, Any]], keep: int) -> list[Mapping[str, Any]]:
    """The ``keep`` most recent rows, newest first."""
    return sorted(rows, key=lambda r: (r["timestamp"], r["partition"], r["offset"]), reverse=True)[:keep]


async def read_recent_dead_letters(
    settings: Settings, keep: int, timeout: float, show_patient_data: bool = False
) -> list[Mapping[str, Any]]:
    """Up to ``keep`` newest records of the DLQ topic (the last ``keep`` of each partition, merged)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=settings.max_message_bytes,
        max_partition_fetch_bytes=settings.max_message_bytes,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        # Subscribing to a missing topic would make a broker with auto-create on create it: look first.
        if settings.topic_dlq not in await asyncio.wait_for(consumer.topics(), timeout):
            return []
        # Without a group, aiokafka assigns every partition of a subscribed topic on its next metadata update.
        consumer.subscribe([settings.topic_dlq])
        while not consumer.assignment() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        if not tps:
            return []
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        for tp in pending:
            consumer.seek(tp, max(begin[tp], end[tp] - keep))
        while pending and loop.time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=200)
            for records in batch.values():
                for r in records:
                    size = len(r.value) if r.value is not None else 0
                    rows.append(
                        dead_letter_row(r.partition, r.offset, r.timestamp, r.key, r.headers, size, show_patient_data)
                    )
            # Compacted or transactional gaps: the position, not the last offset, says when a partition is read.
            pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
    finally:
        await consumer.stop()
    return newest(rows, keep)
