"""One publish round against a producer whose answers the test chooses: acknowledged rows are confirmed even when
the round fails, a row refused for good is quarantined, and nothing acknowledged is sent twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, NotLeaderForPartitionError, RecordTooLargeError

from app.settings import Settings
from scp.metrics import ReceiverMetrics
from scp.outbox import Outbox, list_quarantine, retry_quarantine
from scp.publisher import Publisher
from tests.conftest import free_port


class ScriptedProducer:
    """send() answers each value as ``outcomes`` says: "ok", "transient", "too_large" (broker), "refuse" (client)."""

    def __init__(self, outcomes: dict[bytes, str]) -> None:
        self.outcomes = outcomes
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        outcome = self.outcomes.get(value, "ok")
        if outcome == "refuse":
            raise MessageSizeTooLargeError()
        self.sent.append(value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if outcome == "ok":
            future.set_result(None)
        elif outcome == "transient":
            future.set_exception(NotLeaderForPartitionError())
        else:
            future.set_exception(RecordTooLargeError())
        return future


def outbox_with(tmp_path: Path, values: list[bytes]) -> Outbox:
    outbox = Outbox(tmp_path / "outbox.sqlite", fsync=False)
    for i, value in enumerate(values):
        outbox.add_record(f"1.2.{i}", value)
    return outbox


async def test_a_failed_round_confirms_what_the_broker_took_and_quarantines_what_it_refused(tmp_path: Path) -> None:
    values = [b"a", b"b", b"c", b"d", b"e"]
    outbox = outbox_with(tmp_path, values)
    publisher = Publisher(Settings(receiver_publish_timeout=2.0), outbox, ReceiverMetrics())
    producer = ScriptedProducer({b"b": "refuse", b"c": "transient", b"d": "too_large"})
    with pytest.raises(NotLeaderForPartitionError):
        await publisher._drain_once(producer)  # type: ignore[arg-type]
    assert [e.value for e in outbox.pending(10)] == [b"c"]  # only the transient one waits for the next round
    assert sorted(r.reason.split(":")[0] for r in list_quarantine(outbox.path)) == [
        "MessageSizeTooLargeError",
        "RecordTooLargeError",
    ]
    assert publisher.quarantine_depth == 2

    again = ScriptedProducer({})
    assert await publisher._drain_once(again) == 1  # type: ignore[arg-type]
    assert again.sent == [b"c"]  # a, e were acknowledged in the failed round: not sent again
    assert retry_quarantine(outbox.path, None) == 2 and outbox.quarantine_depth() == 0
    assert sorted(e.value for e in outbox.pending(10)) == [b"b", b"d"]
    outbox.close()


async def test_an_acknowledgement_that_never_comes_is_counted_and_the_row_kept(tmp_path: Path) -> None:
    outbox = outbox_with(tmp_path, [b"x"])
    metrics = ReceiverMetrics()
    publisher = Publisher(Settings(receiver_publish_timeout=0.2), outbox, metrics)

    class Silent:
        async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
            return asyncio.get_running_loop().create_future()

    with pytest.raises(TimeoutError):
        await publisher._drain_once(Silent())  # type: ignore[arg-type]
    assert outbox.depth() == 1
    assert metrics.publish_unconfirmed._value.get() == 1
    outbox.close()


def test_a_row_whose_delete_fails_neither_publishes_nor_blocks_its_study(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", fsync=False)
    first = outbox.add_record("1.2", b"first")
    outbox._in_flight.add(first)
    later = outbox.add_record("1.2", b"later")

    class Broken:
        def execute(self, *args: object) -> None:
            import sqlite3

            raise sqlite3.OperationalError("disk I/O error")

    real = outbox._db
    outbox._db = Broken()  # type: ignore[assignment]
    outbox.discard(first)
    outbox._db = real
    assert [e.id for e in outbox.pending(10)] == [later]
    outbox.confirm([later])
    assert outbox.depth() == 0  # the set-aside row deleted with the next confirmation
    outbox.close()


def _publishing_to_nobody(tmp_path: Path, retry: float) -> tuple[Outbox, ReceiverMetrics, Publisher]:
    """A started publisher with one waiting row, its broker a closed port, its back-off ``retry`` seconds."""
    outbox = outbox_with(tmp_path, [b"waiting"])
    metrics = ReceiverMetrics()
    settings = Settings(
        broker_url=f"kafka://127.0.0.1:{free_port()}",
        receiver_publish_retry_initial=retry,
        receiver_publish_retry_max=retry,
        receiver_publish_timeout=2.0,
    )
    publisher = Publisher(settings, outbox, metrics)
    publisher.start()
    return outbox, metrics, publisher


async def test_new_events_do_not_cut_the_back_off_short_while_the_broker_is_away(tmp_path: Path) -> None:
    # Each stored instance releases a row and notifies the publisher. That used to end the back-off: one
    # connection attempt and one warning per instance (about 80 a second under load) instead of one a back-off.
    outbox, metrics, publisher = _publishing_to_nobody(tmp_path, retry=0.4)
    window = 2.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while loop.time() < deadline:
        publisher.notify()  # as each C-STORE's release does
        await asyncio.sleep(0.005)
    attempts = metrics.registry.get_sample_value("studystream_receiver_publish_errors_total")
    await publisher.stop(5)
    assert attempts is not None and attempts >= 1  # it did try
    assert attempts <= window / 0.4 + 2  # one attempt a back-off, not one a release (hundreds)
    assert [e.value for e in outbox.pending(10)] == [b"waiting"]  # nothing lost meanwhile
    outbox.close()


async def test_stopping_ends_a_back_off_at_once(tmp_path: Path) -> None:
    outbox, metrics, publisher = _publishing_to_nobody(tmp_path, retry=60.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not metrics.registry.get_sample_value("studystream_receiver_publish_errors_total"):
        assert loop.time() < deadline, "the publisher never failed against a closed port"
        await asyncio.sleep(0.01)
    started = loop.time()
    await publisher.stop(30)
    assert publisher._task is not None and publisher._task.done()
    assert loop.time() - started < 5  # not the 60 s back-off
    outbox.close()
