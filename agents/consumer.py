"""The Faust consumer's internals StudyStream reads, in one place (pinned by ``tests/agents/test_consumer.py``).

Faust 0.15 keeps the committed offsets, the paused and the active partitions in private attributes;
every use goes through these functions, so an upgrade that renames them fails here, loudly.
"""

from __future__ import annotations

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
