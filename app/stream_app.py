"""The Faust application and every topic it reads or writes, each declared once.

``faust -A app.stream_app:app worker`` and ``studystream worker`` both use :data:`app`. Values on
StudyStream's topics are raw bytes decoded by domain functions, so one malformed message is
dead-lettered instead of crashing the agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from app.settings import Settings, get_settings


@dataclass(frozen=True, slots=True)
class Topics:
    raw: faust.TopicT
    ready: faust.TopicT
    dlq: faust.TopicT


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured entirely from ``settings``."""
    return faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store="rocksdb://",
        topic_partitions=settings.topic_partitions,
        datadir=str(settings.state_dir / "worker-{conf.web_port}"),
        web_port=settings.web_port,
        # The raw table endpoint would expose patient data; the web view serves its own pages.
        web_tables_enabled=False,
        producer_max_request_size=settings.max_message_bytes,
        consumer_max_fetch_size=settings.max_message_bytes,
        producer_acks=-1,
        autodiscover=False,
        # Aggregator: a crashed worker's partitions move after this; Kafka wants heartbeats 3x as often.
        broker_session_timeout=settings.aggregator_session_timeout,
        broker_heartbeat_interval=settings.aggregator_session_timeout / 4,
    )


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    def topic(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )

    return Topics(raw=topic(settings.topic_raw), ready=topic(settings.topic_ready), dlq=topic(settings.topic_dlq))


def study_check_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-study-check"


def declare_aggregator_channels(app: faust.App, settings: Settings) -> tuple[faust.TopicT, faust.TopicT]:
    """The completeness timer's command topic, and the aggregator's input: imaging.raw + that topic.

    The timer cannot write tables, so it sends "check <study>" to a topic co-partitioned with
    imaging.raw; the aggregator agent (the only writer) reads both through one channel, so one task
    handles every message of a study in order. Internal: Faust creates the check topic itself.
    """
    check = study_check_topic_name(settings)

    def channel(*names: str) -> faust.TopicT:
        return app.topic(
            *names, key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions, internal=True
        )

    return channel(check), channel(settings.topic_raw, check)


settings = get_settings()
app = create_app(settings)
topics = declare_topics(app, settings)
study_check, aggregator_input = declare_aggregator_channels(app, settings)


def load_agents() -> None:
    """Import the modules that register agents, tables and pages on :data:`app`."""
    import agents  # noqa: F401
