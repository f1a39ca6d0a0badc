"""The delivery gate: no acknowledgement of a message no agent handled reaches the commit, and such a
message is read again; on imaging.raw a jump in offsets rewinds to the first one missing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.consumer import intercept_acks
from agents.delivery import DeliveryGate

RAW, CHECK = "imaging.raw", "check"


class Message:
    __slots__ = ("__weakref__", "offset", "partition", "topic", "tp")

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.tp = TP(topic, partition)


@dataclass
class Event:
    message: Message


def events(topic: str, partition: int, *offsets: int) -> list[Event]:
    return [Event(Message(topic, partition, o)) for o in offsets]


@dataclass
class FakeConsumer:
    assigned: set[TP]
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    acked: list[tuple[TP, int]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return self.assigned

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    def ack(self, message: Any) -> bool:
        self.acked.append((message.tp, message.offset))
        return True


def test_an_acknowledgement_the_policy_did_not_release_is_refused_and_rewinds_its_partition() -> None:
    gate = DeliveryGate({RAW})
    consumer = FakeConsumer({TP(RAW, 0)})
    intercept_acks(consumer, gate.may_ack)
    intercept_acks(consumer, gate.may_ack)  # installing twice wraps once
    released, skipped, later = (Message(RAW, 0, o) for o in (7, 8, 9))
    gate.release(released)

    assert consumer.ack(released) is True
    assert consumer.ack(skipped) is False
    assert consumer.ack(later) is False
    assert consumer.acked == [(TP(RAW, 0), 7)]
    assert gate.rewinds == {TP(RAW, 0): 8}
    assert gate.refused[RAW] == 2


def test_topics_outside_the_gate_are_acknowledged_as_faust_decides() -> None:
    gate = DeliveryGate({RAW})
    assert gate.may_ack(Message("other", 0, 3)) is True
    assert gate.rewinds == {}


def test_a_partition_being_rewound_admits_nothing_past_the_rewind_until_it_comes_back() -> None:
    gate = DeliveryGate({RAW, CHECK})
    gate.rewind(TP(RAW, 0), 8, "test")
    consumer = FakeConsumer({TP(RAW, 0)})

    asyncio.run(gate.seek_pending(consumer))
    asyncio.run(gate.seek_pending(consumer))  # sought once per rewind (until reseek_after)
    assert consumer.seeks == [(TP(RAW, 0), 8)]

    stale = gate.admit(events(RAW, 0, 9, 10) + events(CHECK, 0, 4))
    assert [(e.message.topic, e.message.offset) for e in stale] == [(CHECK, 4)]
    again = gate.admit(events(RAW, 0, 8, 9, 10))
    assert [e.message.offset for e in again] == [8, 9, 10]
    assert gate.rewinds == {}


def test_a_jump_on_a_gapless_topic_rewinds_to_the_first_offset_missing_and_blocks_the_rest_of_that_partition() -> None:
    gate = DeliveryGate({RAW, CHECK}, gapless={RAW})
    assert len(gate.admit(events(RAW, 0, 4) + events(RAW, 1, 0))) == 2  # positions known from here on
    batch = events(RAW, 0, 5, 6, 9, 10) + events(RAW, 1, 1, 2) + events(CHECK, 0, 2, 7)
    admitted = gate.admit(batch)

    assert [(e.message.partition, e.message.offset) for e in admitted if e.message.topic == RAW] == [
        (0, 5),
        (0, 6),
        (1, 1),
        (1, 2),
    ]
    assert [e.message.offset for e in admitted if e.message.topic == CHECK] == [2, 7]  # not gapless: no check
    assert gate.rewinds == {TP(RAW, 0): 7}
    assert gate.gaps[RAW] == 1


def test_offsets_already_handled_are_admitted_again_for_the_domain_to_deduplicate() -> None:
    gate = DeliveryGate({RAW}, gapless={RAW})
    gate.admit(events(RAW, 0, 3, 4))
    admitted = gate.admit(events(RAW, 0, 3, 4, 5))
    assert [e.message.offset for e in admitted] == [3, 4, 5]
    assert gate.rewinds == {}


def test_after_a_revocation_the_first_record_read_is_compared_with_the_committed_offset() -> None:
    committed: dict[TP, int] = {}
    gate = DeliveryGate({RAW}, gapless={RAW}, committed=committed.get)
    gate.admit(events(RAW, 0, 3))
    gate.forget({TP(RAW, 0)})
    assert [e.message.offset for e in gate.admit(events(RAW, 0, 40))] == [40]  # nothing committed known
    gate.forget({TP(RAW, 0)})
    committed[TP(RAW, 0)] = 40
    assert gate.admit(events(RAW, 0, 42)) == []
    assert gate.rewinds == {TP(RAW, 0): 40}


def test_a_revoked_or_unassigned_partition_forgets_its_rewind() -> None:
    gate = DeliveryGate({RAW})
    gate.rewind(TP(RAW, 0), 1, "test")
    gate.rewind(TP(RAW, 1), 1, "test")
    gate.forget({TP(RAW, 0)})
    consumer = FakeConsumer(set())
    asyncio.run(gate.seek_pending(consumer))
    assert gate.rewinds == {} and consumer.seeks == []


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 30),
    skips=st.sets(st.integers(1, 80), max_size=25),
    drops=st.sets(st.integers(1, 80), max_size=10),
    batch_size=st.integers(1, 6),
    prefetch=st.integers(1, 8),
)
def test_whatever_faust_skips_the_commit_never_passes_an_unhandled_offset_and_every_offset_is_handled(
    length: int, skips: set[int], drops: set[int], batch_size: int, prefetch: int
) -> None:
    """A model of one imaging.raw partition under a consumer that skips (acknowledges unseen) the
    deliveries numbered in ``skips``, silently drops those in ``drops`` (never the partition's last
    record: the input watchdog's case), and keeps what it prefetched across a seek."""
    logging.getLogger("studystream.agents.delivery").disabled = True
    try:
        handled, committed = asyncio.run(simulate(length, skips, drops, batch_size, prefetch))
    finally:
        logging.getLogger("studystream.agents.delivery").disabled = False
    assert committed == length
    assert handled == set(range(length))


async def simulate(
    length: int, skips: set[int], drops: set[int], batch_size: int, prefetch: int
) -> tuple[set[int], int]:
    tp = TP(RAW, 0)
    ticks = iter(range(10**6))  # the clock: a second per reading
    gate = DeliveryGate(
        {RAW}, gapless={RAW}, committed=lambda _: committed(), reseek_after=3, clock=lambda: next(ticks)
    )
    consumer = FakeConsumer({tp})
    handled: set[int] = set()
    acked: set[int] = set()
    queue: list[Message] = []
    position, delivery = 0, 0

    def ack(message: Message) -> None:
        if gate.may_ack(message):
            acked.add(message.offset)

    def committed() -> int:
        offset = 0
        while offset in acked:
            offset += 1
        return offset

    for _ in range(1000):
        if committed() == length:
            break
        if consumer.seeks:
            position = consumer.seeks.pop()[1]  # the fetcher moves; what was queued stays queued
            consumer.seeks.clear()
        if not queue:
            queue = [Message(RAW, 0, o) for o in range(position, min(length, position + prefetch))]
            position += len(queue)
        taken, queue = queue[:batch_size], queue[batch_size:]
        delivered = []
        for message in taken:
            delivery += 1
            if delivery in skips:
                ack(message)  # Faust's skipped_value path: acknowledged, never handed to the agent
            elif delivery in drops and message.offset < length - 1:
                pass  # the fetcher's delivery cancelled by a suspended flow: neither handed over nor acknowledged
            else:
                delivered.append(Event(message))
        await gate.seek_pending(consumer)
        for event in gate.admit(delivered):
            handled.add(event.message.offset)
            gate.release(event.message)
            ack(event.message)
        for event in delivered:
            ack(event.message)  # Faust acknowledges the whole batch once the agent moves on
        assert set(range(committed())) <= handled
    return handled, committed()


def test_the_gate_counts_what_it_did_by_event_and_topic() -> None:
    gate = DeliveryGate({RAW}, gapless={RAW})
    gate.may_ack(Message(RAW, 0, 4))
    gate.admit(events(RAW, 1, 1))
    gate.admit(events(RAW, 1, 3))
    asyncio.run(gate.seek_pending(FakeConsumer({TP(RAW, 0), TP(RAW, 1)})))
    assert gate.counts() == {("refused_ack", RAW): 1, ("gap", RAW): 1, ("rewind", RAW): 2}
