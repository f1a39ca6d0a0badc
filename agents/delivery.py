"""Delivery: no message is committed that no agent handled, whatever Faust does around a rebalance.

Faust's stream acknowledges, without handing them to the agent, the messages it reads while its flow
control is suspended or whose fetch generation is no longer the consumer's (``Stream._py_aiter``, the
``skipped_value`` path), and an acknowledged message is committed. Around a rebalance a record could so
be committed that no agent ever saw: measured with ``tests/aggregator/test_aggregator_worker.py``'s
takeover test, a worker that took over the partitions of a worker killed with SIGKILL handled offsets
7 and 9 of imaging.raw[6] and never 8, and its study went to FHIR with 9 of its 10 instances (1 run in 5).

:class:`DeliveryGate` closes that door in the one place every acknowledgement passes
(``Consumer.ack``, reached through :func:`agents.consumer.intercept_acks`):

- a message on an input topic of the agents is acknowledged only if the error policy released it
  (handled or dead-lettered); any other acknowledgement is refused, counted, and its partition is
  *rewound* to it, so the consumer reads it again;
- before a batch is handled, pending rewinds are sought, and a partition being rewound admits
  nothing past the rewind offset until that offset itself comes back (what Faust had buffered beyond
  it is left unacknowledged: refused, and read again after it);
- on the agents' inputs, whose offsets have no gaps of their own (neither compacted nor transactional),
  a record that arrives past the one after the last admitted is the other face of the same failure
  (Faust's fetcher drops a record it was delivering when a rebalance suspends the flow, without
  acknowledging it: seen twice in 8 runs of that test): the partition is rewound to the first offset
  missing. Positions are in memory; the first record read after an assignment is compared with the
  committed offset (Faust's copy of it can be older than where the consumer starts: the rewind then
  re-reads records already handled, which the agents ignore).

A revoked partition forgets its rewind: its next owner starts from the committed offset, which is
never past a refused message.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from faust.types import TP

from agents import consumer as consumer_view

log = logging.getLogger(f"studystream.{__name__}")


def _unknown(tp: TP) -> int | None:
    return None


class DeliveryGate:
    """Decides which acknowledgements reach Faust's commit and which fetched messages an agent may handle."""

    def __init__(
        self,
        topics: Iterable[str],
        gapless: Iterable[str] = (),
        committed: Callable[[TP], int | None] = _unknown,
        reseek_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reseek_after = reseek_after  # a rewind whose offset has not come back by then is sought again
        self.clock = clock
        self.topics = frozenset(topics)
        self.gapless = frozenset(gapless)  # topics whose offsets have no gaps of their own
        self.committed = committed  # the group's committed offset as the consumer knows it (None: unknown)
        self.released: weakref.WeakSet[Any] = weakref.WeakSet()
        self.rewinds: dict[TP, int] = {}
        self.sought: dict[TP, tuple[int, float]] = {}  # TP → (offset sought, when)
        self.after: dict[TP, set[int]] = {}  # TP → offsets refused past its pending rewind
        self.positions: dict[TP, int] = {}  # TP of a gapless topic → offset after the last one admitted
        self.refused: Counter[str] = Counter()  # topic → acknowledgements refused
        self.rewound: Counter[str] = Counter()  # topic → rewinds sought
        self.gaps: Counter[str] = Counter()  # topic → offset gaps found in a batch

    def counts(self) -> dict[tuple[str, str], int]:
        """(event, topic) → count, for ``/metrics``: refused acknowledgements, gaps found, rewinds sought."""
        found: dict[tuple[str, str], int] = {}
        for event, counter in (("refused_ack", self.refused), ("gap", self.gaps), ("rewind", self.rewound)):
            for topic, count in counter.items():
                found[(event, topic)] = count
        return found

    # --- acknowledgements ---

    def release(self, message: Any) -> None:
        """The policy finished with ``message``: its acknowledgement may be committed."""
        self.released.add(message)

    def may_ack(self, message: Any) -> bool:
        """For :func:`agents.consumer.intercept_acks`: True lets Faust acknowledge ``message``."""
        if message.topic not in self.topics or message in self.released:
            return True
        self.refused[message.topic] += 1
        self.rewind(message.tp, message.offset, "acknowledged by Faust without reaching the agent")
        return False

    def rewind(self, tp: TP, offset: int, why: str) -> None:
        current = self.rewinds.get(tp)
        if current is not None and current < offset:
            # Read again after the current rewind completes (unless the seek re-reads it anyway: harmless).
            self.after.setdefault(tp, set()).add(offset)
            return
        # Equal: the offset sought was fetched again and skipped again; seek once more.
        self.rewinds[tp] = offset
        self.sought.pop(tp, None)
        log.warning("%s[%d]: offset %d %s: not committed, read again from there", tp.topic, tp.partition, offset, why)

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked: their next owner reads from the committed offset, never past a refused message."""
        for tp in tps:
            self.rewinds.pop(tp, None)
            self.sought.pop(tp, None)
            self.after.pop(tp, None)
            self.positions.pop(tp, None)

    # --- admission ---

    async def seek_pending(self, consumer: Any) -> None:
        """Seek every partition with a rewind not sought yet (or sought ``reseek_after`` ago: the record
        can be dropped again while re-read) and still assigned, to its offset."""
        if not self.rewinds:
            return
        assigned = consumer_view.assignment(consumer)
        for tp, offset in list(self.rewinds.items()):
            sought = self.sought.get(tp)
            if sought is not None and sought[0] == offset and self.clock() - sought[1] < self.reseek_after:
                continue
            if tp not in assigned:
                self.forget((tp,))
                continue
            await consumer_view.seek(consumer, tp, offset)
            self.sought[tp] = (offset, self.clock())
            self.rewound[tp.topic] += 1

    @staticmethod
    def _gap_reason(offset: int, position: int, first: bool) -> str:
        if first:
            return f"is the committed offset, but the first record read after the assignment is {offset}"
        return f"and {offset - position - 1} more were never delivered to the agent"

    def rewound_to(self, tp: TP, offset: int) -> None:
        """The rewind's offset came back; a refusal past it made meanwhile is the next rewind."""
        del self.rewinds[tp]
        self.sought.pop(tp, None)
        later = sorted(o for o in self.after.pop(tp, ()) if o > offset)
        if later:
            self.rewinds[tp] = later[0]
            if later[1:]:
                self.after[tp] = set(later[1:])

    def admit(self, events: Sequence[Any]) -> list[Any]:
        """The events an agent may handle, in order; the others stay unacknowledged (see the module doc)."""
        admitted: list[Any] = []
        blocked: set[TP] = set()
        for event in events:
            message = event.message
            tp = message.tp
            if tp in blocked:
                continue
            offset = message.offset
            rewind = self.rewinds.get(tp)
            if rewind is not None:
                if offset > rewind:
                    continue
                if offset == rewind:
                    self.rewound_to(tp, offset)
            if tp.topic in self.gapless:
                position = self.positions.get(tp)
                first = position is None
                if first:
                    # The first record since the assignment: the consumer started at the committed offset.
                    position = self.committed(tp)
                if position is not None and offset > position:
                    self.gaps[tp.topic] += 1
                    self.rewind(tp, position, self._gap_reason(offset, position, first))
                    blocked.add(tp)
                    continue
                self.positions[tp] = max(position or 0, offset + 1)
            admitted.append(event)
        return admitted
