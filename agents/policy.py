"""The error policy: every message ends handled, dead-lettered with its reason, or not committed — decided here.

The aggregator, the uploader, the retry line and the timers hand each message (or timer round) to
:class:`MessagePolicy`; none of them has a ``try``/``except`` of its own for a message's fate.

- A record's own defect (:class:`~domain.errors.InvalidRecordError`), a downstream's final refusal
  (:class:`~domain.errors.RejectedError`), or any other error its content provokes goes to
  ``imaging.dlq`` with its reason (:class:`DeadLetterWriter`) and is counted. No record's content can
  crash an agent.
- An infrastructure failure (broker, disk, table store: :data:`INFRASTRUCTURE_ERRORS`) stops the
  worker **without committing** the message: it is read again after the restart.

Commits follow acknowledgements, and Faust acknowledges a message when its agent's iteration moves
on, even when the body raised (``Stream.__aiter__``, and ``take_events`` for a whole batch). So every
message is *held* (one extra reference) from the moment the agent sees it, and *released* only once it
was handled or dead-lettered; a message never released is never acknowledged, and the group's
committed offset stays below it. Faust's own acknowledgements of messages no agent saw (around a
rebalance) are refused by the :class:`~agents.delivery.DeliveryGate` the policy releases through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError

from agents.delivery import DeliveryGate
from domain import dead_letters
from domain.errors import InfrastructureError, InvalidRecordError, RejectedError, StudyStreamError
from domain.study import iso_utc

log = logging.getLogger(f"studystream.{__name__}")

# Failures no record can cause. Everything else a handler raises is charged to the record.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (InfrastructureError, OSError, KafkaError, MemoryError)


def is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, INFRASTRUCTURE_ERRORS):
        return True
    # Faust wraps producer failures (ProducerSendError) around the aiokafka error that caused them.
    cause = exc.__cause__ or exc.__context__
    return type(exc).__name__ == "ProducerSendError" or (cause is not None and isinstance(cause, KafkaError))


def dead_letter_of(exc: BaseException, stage: str) -> dead_letters.DeadLetter:
    """What the dead letter says about ``exc``. An unexpected error names only its type: its text may quote data."""
    if isinstance(exc, InvalidRecordError):
        return dead_letters.DeadLetter(stage, exc.reason, str(exc))
    if isinstance(exc, RejectedError):
        return dead_letters.DeadLetter(
            stage,
            exc.reason,
            str(exc),
            detail=exc.detail,
            http_status=exc.http_status,
            operation_outcome=exc.operation_outcome,
        )
    return dead_letters.DeadLetter(stage, "unexpected_error", f"{type(exc).__name__} while handling the record")


def source_of(message: Any) -> dead_letters.Source:
    return dead_letters.Source(str(message.topic), int(message.partition), int(message.offset))


STOPPED_EXIT_STATUS = 75  # EX_TEMPFAIL: a supervisor should start the worker again


def _exit_now() -> None:
    log.error("worker stopped after an infrastructure failure (exit status %d)", STOPPED_EXIT_STATUS)
    logging.shutdown()
    os._exit(STOPPED_EXIT_STATUS)


class WorkerStopping(StudyStreamError):
    """Raised into an agent after the policy stopped the worker: nothing more may be handled."""


class DeadLetterWriter:
    """Sends a record to ``imaging.dlq`` with the headers of :mod:`domain.dead_letters` and waits for the broker."""

    def __init__(self, topic: faust.TopicT, counts: Counter[tuple[str, str]]) -> None:
        self.topic = topic
        self.counts = counts  # (stage, reason) → dead letters, for /metrics

    async def send(self, message: Any, letter: dead_letters.DeadLetter, now: float) -> None:
        value = message.value if message.value is not None else b""
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        await self.send_derived(message, message.key, value, letter, now)

    async def send_derived(
        self, message: Any, key: bytes | None, value: bytes, letter: dead_letters.DeadLetter, now: float
    ) -> None:
        """Dead-letter ``value``, a record made while handling ``message`` (a revision its check held back)."""
        source = source_of(message)
        headers = dead_letters.build_headers(
            letter, source, iso_utc(now), dead_letters.header_map(message.headers or ()).items()
        )
        delivered = await self.topic.send(key=key, value=value, headers=headers)
        await delivered
        self.counts[(letter.stage, letter.reason)] += 1
        study = message.key.decode("ascii", "replace")[:64] if isinstance(message.key, bytes) else ""
        log.warning(
            "dead-lettered %s (study %s) at %s: %s: %s", source, study, letter.stage, letter.reason, letter.message,
            extra={"study_uid": study, "stage": letter.stage, "reason": letter.reason, "outcome": "dead_letter"},
        )  # fmt: skip


class MessagePolicy:
    """Holds, handles and releases the messages of one worker's agents; stops the worker on infrastructure failure."""

    def __init__(
        self,
        app: faust.App,
        writer: DeadLetterWriter,
        clock: Callable[[], float],
        stop_timeout: float = 10.0,
        gate: DeliveryGate | None = None,
    ) -> None:
        self.app = app
        self.writer = writer
        self.gate = gate if gate is not None else DeliveryGate(())
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.timer_failures: Counter[str] = Counter()
        self.stopping = False
        # (topic, partition) → offset after the last message released: how far this worker handled its input.
        self.handled: dict[tuple[str, int], int] = {}

    @staticmethod
    def hold(events: Iterable[Any]) -> None:
        """Keep Faust from acknowledging these events until :meth:`release` (see the module doc)."""
        for event in events:
            event.message.incref()

    async def admit(self, events: Sequence[Any]) -> list[Any]:
        """The events of a batch an agent may handle, held; the others are left to be read again.

        See :mod:`agents.delivery`: rewinds pending are sought first, and a partition being rewound (or
        whose offsets jump) admits nothing beyond the offset it is read again from.
        """
        await self.gate.seek_pending(self.app.consumer)
        admitted = self.gate.admit(events)
        self.hold(admitted)
        return admitted

    def release(self, events: Iterable[Any]) -> None:
        """The events are handled or dead-lettered: let Faust acknowledge (and later commit) them."""
        handled = self.handled
        for event in events:
            message = event.message
            key = (message.topic, message.partition)
            handled[key] = max(handled.get(key, 0), message.offset + 1)
            self.gate.release(message)
            event.ack()

    async def handle(self, message: Any, stage: str, handler: Callable[[], Awaitable[None]]) -> None:
        """Run ``handler`` for ``message``; a failure of the record's own dead-letters it, anything else stops us."""
        try:
            await handler()
        except asyncio.CancelledError:
            raise
        except WorkerStopping:
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that decides what any failure means
            await self.fail(message, stage, exc)

    async def fail(self, message: Any, stage: str, exc: BaseException) -> None:
        """Dead-letter ``message`` for ``exc``, or stop the worker if ``exc`` is the infrastructure's."""
        if is_infrastructure(exc):
            await self.stop(f"{stage} could not handle {source_of(message)}", exc)
        letter = dead_letter_of(exc, stage)
        if letter.reason == "unexpected_error":
            # Where it happened, without the exception's text (it may quote the record).
            frames = "".join(traceback.format_tb(exc.__traceback__)[-6:])
            log.error("%s: unexpected %s handling %s at\n%s", stage, type(exc).__name__, source_of(message), frames)
        try:
            await self.writer.send(message, letter, self.clock())
        except asyncio.CancelledError:
            raise
        except Exception as send_error:  # noqa: BLE001 - cannot dead-letter: the broker is the problem
            await self.stop(f"{stage} could not dead-letter {source_of(message)}", send_error)

    async def run(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Work on messages already held (a batch's table write, its sends).

        Whatever escapes it is the infrastructure's: each record's own failures were handled inside.
        """
        try:
            await work()
        except (asyncio.CancelledError, WorkerStopping):
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            await self.stop(what, exc)

    @staticmethod
    async def halt() -> None:
        """What an agent does once the worker is stopping: nothing, until Faust cancels it."""
        await asyncio.get_running_loop().create_future()

    async def stop(self, what: str, exc: BaseException) -> None:
        """Stop the worker; the message in hand stays unacknowledged, so it is never committed. Does not return."""
        self.stopping = True
        log.error("%s: %s: %s; stopping the worker without committing it", what, type(exc).__name__, exc)
        # Faust's own stop waits for every message to be acknowledged, which the held one never is: it
        # gets `stop_timeout` to leave the group and close cleanly, then the process exits regardless.
        asyncio.get_running_loop().call_later(self.stop_timeout, _exit_now)
        await self.app.crash(exc if isinstance(exc, Exception) else InfrastructureError(str(exc)))
        raise WorkerStopping(what) from exc

    async def timer_round(self, name: str, round_: Callable[[], Awaitable[Any]]) -> None:
        """One round of a timer. A timer consumes no message: a failed round is counted and tried again next time."""
        if self.stopping:
            return
        try:
            await round_()
        except asyncio.CancelledError:
            raise
        except WorkerStopping:
            raise
        except Exception as exc:  # noqa: BLE001 - a timer must outlive a broker that is away for a while
            self.timer_failures[name] += 1
            log.warning("%s: round skipped (%s: %s); next round as scheduled", name, type(exc).__name__, exc)
