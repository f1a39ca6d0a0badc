"""The real broker: produce and consume through aiokafka, and topic creation with the configured partitions."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from adapters.topics import ensure_topics_async
from app.settings import Settings


async def test_produce_and_consume_on_a_unique_topic(kafka: Settings, unique: str) -> None:
    topic = f"test.roundtrip.{unique}"
    await ensure_topics_async(kafka, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = {f"k{i}".encode(): f"value-{i}".encode() for i in range(10)}
        for key, value in sent.items():
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, group_id=f"test-{unique}", auto_offset_reset="earliest"
    )
    await consumer.start()
    received: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    received.update({m.key: m.value for m in messages})
    finally:
        await consumer.stop()
    assert received == sent


async def test_topics_are_created_with_the_configured_partition_count(kafka: Settings, unique: str) -> None:
    settings = kafka.model_copy(update={"topic_partitions": 3})
    names = [f"test.partitions.{unique}.a", f"test.partitions.{unique}.b"]
    assert sorted(await ensure_topics_async(settings, names)) == names
    assert await ensure_topics_async(settings, names) == []  # idempotent

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {name: 3 for name in names}
