"""The error policy inside a real Faust agent, run with Faust's ``test_context()`` (no broker): records
before and after a poison one are handled in order, the poison one is dead-lettered with its reason
and source, and the agent keeps consuming."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import faust

from agents.policy import DeadLetterWriter, MessagePolicy
from domain import dead_letters
from domain.errors import InvalidRecordError


class RecordingTopic:
    """Stands in for imaging.dlq: keeps what is sent, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []

    async def send(self, key: bytes | None, value: bytes, headers: Any) -> asyncio.Future[None]:
        self.sent.append((key, value, dict(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_poison_record_is_dead_lettered_and_the_agent_handles_the_records_around_it(tmp_path: Any) -> None:
    app = faust.App("test-policy-agent", broker="kafka://127.0.0.1:9", store="memory://", datadir=str(tmp_path))
    dlq = RecordingTopic()
    counts: Counter[tuple[str, str]] = Counter()
    policy = MessagePolicy(app, DeadLetterWriter(dlq, counts), time.time)  # type: ignore[arg-type]
    handled: list[bytes] = []

    @app.agent(app.channel(), name="under-test")
    async def under_test(stream: faust.StreamT) -> None:
        async for event in stream.events():

            async def handle(value: bytes = event.value) -> None:
                if value.startswith(b"poison"):
                    raise InvalidRecordError("not a record", reason="not_json")
                handled.append(value)

            await policy.handle(event.message, "test", handle)

    async def run() -> None:
        async with under_test.test_context() as agent:
            for key, value in ((b"1.1", b"first"), (b"1.2", b"poison!"), (b"1.3", b"after")):
                await agent.put(value, key=key)

    asyncio.run(run())
    assert handled == [b"first", b"after"]
    assert counts == Counter({("test", "not_json"): 1})
    ((key, value, headers),) = dlq.sent
    assert (key, value) == (b"1.2", b"poison!")  # the original record, to redrive once fixed
    assert headers[dead_letters.REASON] == b"not_json" and headers[dead_letters.STAGE] == b"test"
    assert headers[dead_letters.MESSAGE] == b"not a record"
