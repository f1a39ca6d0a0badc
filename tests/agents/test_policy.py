"""The error policy without a broker: what each failure means for the message, and that a message the policy
holds is never acknowledged (so never committed) until it is released."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.types.tuples import ConsumerMessage as Message

from agents.policy import DeadLetterWriter, MessagePolicy, WorkerStopping, dead_letter_of, is_infrastructure
from domain import dead_letters
from domain.errors import InfrastructureError, InvalidRecordError, RejectedError


class FakeTopic:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    async def send(self, **kwargs: Any) -> asyncio.Future[None]:
        if self.fail:
            raise KafkaTimeoutError()
        self.sent.append(kwargs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeApp:
    def __init__(self) -> None:
        self.crashed: list[BaseException] = []

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


class FakeConsumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Message) -> bool:  # what Faust's consumer does on the final ack
        message.acked = True
        self.acked.append(message.offset)
        return True


def message(offset: int = 7, value: bytes = b"{}") -> Message:
    return Message("imaging.raw", 2, offset, 0.0, 0, [("trace", b"t1")], b"1.2.3", value, None)


def policy(topic: FakeTopic) -> tuple[MessagePolicy, FakeApp, Counter[tuple[str, str]]]:
    app, counts = FakeApp(), Counter[tuple[str, str]]()
    return MessagePolicy(app, DeadLetterWriter(topic, counts), lambda: 1_800_000_000.0, 3600.0), app, counts  # type: ignore[arg-type]


async def test_an_invalid_record_is_dead_lettered_with_its_reason_source_and_original_headers() -> None:
    topic = FakeTopic()
    rules, app, counts = policy(topic)

    async def handler() -> None:
        raise InvalidRecordError("instance event: Expected `int` - at `$.instance_number`", reason="invalid_field")

    await rules.handle(message(), "aggregator", handler)
    (sent,) = topic.sent
    headers = dict(sent["headers"])
    assert sent["key"] == b"1.2.3" and sent["value"] == b"{}"
    assert headers[dead_letters.REASON] == b"invalid_field"
    assert headers[dead_letters.SOURCE] == b"imaging.raw[2]@7"
    assert headers[dead_letters.STAGE] == b"aggregator"
    assert dead_letters.original_headers(dead_letters.header_map(sent["headers"])) == [("trace", b"t1")]
    assert counts == Counter({("aggregator", "invalid_field"): 1}) and app.crashed == []


async def test_an_unexpected_error_is_dead_lettered_by_its_type_only() -> None:
    topic = FakeTopic()
    rules, _, counts = policy(topic)

    async def handler() -> None:
        raise KeyError("Doe^Jane")

    await rules.handle(message(), "uploader", handler)
    headers = dict(topic.sent[0]["headers"])
    assert headers[dead_letters.REASON] == b"unexpected_error"
    assert b"Doe" not in b"".join(headers.values())
    assert counts[("uploader", "unexpected_error")] == 1


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KafkaTimeoutError(), InfrastructureError("x")]
)
async def test_an_infrastructure_failure_stops_the_worker_and_dead_letters_nothing(error: BaseException) -> None:
    topic = FakeTopic()
    rules, app, _ = policy(topic)

    async def handler() -> None:
        raise error

    with pytest.raises(WorkerStopping):
        await rules.handle(message(), "aggregator", handler)
    assert topic.sent == [] and app.crashed and rules.stopping


async def test_a_dead_letter_the_broker_does_not_take_stops_the_worker() -> None:
    rules, app, _ = policy(FakeTopic(fail=True))

    async def handler() -> None:
        raise InvalidRecordError("bad", reason="invalid_field")

    with pytest.raises(WorkerStopping):
        await rules.handle(message(), "aggregator", handler)
    assert app.crashed


def test_classification() -> None:
    assert is_infrastructure(OSError()) and is_infrastructure(KafkaTimeoutError())
    assert not is_infrastructure(ValueError()) and not is_infrastructure(InvalidRecordError("x"))
    letter = dead_letter_of(RejectedError("HTTP 422", "fhir_rejected", "quotes PID", 422, b"{}"), "uploader")
    assert (letter.reason, letter.http_status, letter.detail) == ("fhir_rejected", 422, "quotes PID")


def test_a_held_message_is_acknowledged_only_when_released_and_the_stream_has_let_go() -> None:
    rules, _, _ = policy(FakeTopic())
    consumer = FakeConsumer()
    held = message(offset=3)
    held.incref()  # the stream's own reference (Faust's conductor takes it on delivery)
    event = SimpleNamespace(message=held, ack=lambda: held.ack(consumer))  # type: ignore[arg-type]
    MessagePolicy.hold([event])
    held.ack(consumer)  # Faust's iteration moves on (or its take_events batch ends, even on an exception)
    assert consumer.acked == [] and not held.acked  # not acknowledged: the commit stays below offset 3
    rules.release([event])
    assert consumer.acked == [3] and held.acked
    assert rules.handled == {(held.topic, held.partition): 4}  # progress the input watchdog compares against
