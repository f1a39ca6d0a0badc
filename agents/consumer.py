"""The Faust consumer's internals StudyStream reads, in one place (pinned by ``tests/agents/test_consumer.py``).

Faust 0.15 keeps the committed offsets, the paused and the active partitions in private attributes;
every use goes through these functions, so an upgrade that renames them fails here, loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faust.types import TP


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The group's committed offset of ``tp`` as this worker knows it (the next record to read)."""
    return consumer._committed_offset.get(tp)


def is_paused(consumer: Any, tp: TP) -> bool:
    return tp in consumer._paused_partitions


def is_active(consumer: Any, tp: TP) -> bool:
    active = consumer._active_partitions
    return active is not None and tp in active


def assignment(consumer: Any) -> set[TP]:
    return set(consumer.assignment())


async def seek(consumer: Any, tp: TP, offset: int) -> None:
    """Read ``tp`` again from ``offset`` (Faust's seek also resets its read offset, which drops re-reads otherwise)."""
    await consumer.seek(tp, offset)


def intercept_acks(consumer: Any, may_ack: Callable[[Any], bool]) -> None:
    """Route every acknowledgement of ``consumer`` through ``may_ack`` first (idempotent).

    ``Consumer.ack`` is the funnel of Faust's commit bookkeeping: ``Message.ack`` ends there for every
    stream, so a message refused here is never committed.
    """
    if getattr(consumer.ack, "studystream_gate", None) is may_ack:
        return
    original = consumer.ack

    def ack(message: Any) -> bool:
        return may_ack(message) and original(message)

    ack.studystream_gate = may_ack  # type: ignore[attr-defined]
    consumer.ack = ack
