"""Create StudyStream's topics with the configured partition count before anything produces to them.

Faust declares only its internal topics (changelogs, repartitions); a source topic auto-created by the
broker on first produce would get the broker's default partition count and break co-partitioning with
the tables. Every process that produces or consumes calls :func:`ensure_topics` first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.settings import Settings
from app.topology import topology
from domain.errors import ConfigurationError

TopicSpec = tuple[str, Mapping[str, str]]


async def create_topics_async(settings: Settings, specs: Sequence[TopicSpec]) -> None:
    """Create each (name, config) topic with the configured partitions; a topic that exists is fine.

    No metadata lookup first: on a broker with auto.create.topics.enable, naming a missing topic in a
    metadata request creates it with the broker's default partition count.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, settings.topic_partitions, 1, topic_configs=dict(config)) for name, config in specs]
        )
        for name, code, *rest in response.topic_errors:
            # Another process may have created it meanwhile: that is fine.
            if code not in (0, TopicAlreadyExistsError.errno):
                raise ConfigurationError(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
        await _wait_until_led(admin, [name for name, _ in specs], settings.topic_ready_timeout)
    finally:
        await admin.close()


async def _wait_until_led(admin: AIOKafkaAdminClient, names: Sequence[str], timeout: float) -> None:
    """Wait until every topic is listed and each partition has a leader.

    Right after creation (seen on a broker that had just started) a Faust worker's first metadata could
    miss them: its assignment then ignored those partitions and nothing was processed.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        listed = set(await admin.list_topics())  # a listing never auto-creates a topic
        if listed >= set(names):
            described = await admin.describe_topics(list(names))
            if all(
                t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return
        if asyncio.get_running_loop().time() >= deadline:
            raise ConfigurationError(f"topics {', '.join(names)} not ready after {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def ensure_topics_async(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Create the missing topics (by default the public ones of :mod:`app.topology`, each with its declared
    configuration); return the names created. Existing topics must have the right partitions."""
    declared = topology(settings)
    wanted = list(names if names is not None else (d.name for d in declared.public))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        # A metadata request naming a missing topic makes a broker with auto-creation on create it with
        # its default partition count, so look the names up in the full listing first.
        present = set(await admin.list_topics())
        described = (
            await admin.describe_topics([name for name in wanted if name in present]) if present & set(wanted) else []
        )
        existing = {t["topic"]: t for t in described if t["error_code"] == 0}
        for name, info in existing.items():
            if len(info["partitions"]) != settings.topic_partitions:
                raise ConfigurationError(
                    f"topic {name} has {len(info['partitions'])} partitions, StudyStream is configured for "
                    f"{settings.topic_partitions} (STUDYSTREAM_TOPIC_PARTITIONS); tables need them equal"
                )
    finally:
        await admin.close()
    missing = [name for name in wanted if name not in existing]
    if missing:
        configs = {d.name: d.config for d in (declared.raw, declared.ready, declared.dlq, declared.retry, declared.due)}
        default = declared.raw.config  # a topic of the caller's own (tests): sized like the public ones
        await create_topics_async(settings, [(name, configs.get(name, default)) for name in missing])
    return missing


def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    return asyncio.run(ensure_topics_async(settings, names))
