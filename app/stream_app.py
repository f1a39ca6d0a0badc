"""The Faust application and every topic it reads or writes, each declared once.

``faust -A app.stream_app:app worker`` and ``studystream worker`` both use :data:`app`. Values on
StudyStream's topics are raw bytes decoded by domain functions, so one malformed message is
dead-lettered instead of crashing the agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from app.settings import Settings, get_settings
from infra.control import read_control


@dataclass(frozen=True, slots=True)
class Topics:
    raw: faust.TopicT
    ready: faust.TopicT
    dlq: faust.TopicT


def create_app(settings: Settings, generation: int = 1) -> faust.App:
    """A Faust app configured entirely from ``settings``.

    ``generation`` (replay, issue 7) is the Faust app version: with N > 1 the consumer group, every
    changelog and the local stores are ``<app id>-vN``-prefixed / under ``<datadir>/vN``, i.e. fresh state.
    """
    return faust.App(
        settings.app_id,
        version=generation,
        broker=settings.broker_url,
        store="rocksdb://",
        topic_partitions=settings.topic_partitions,
        datadir=str(settings.state_dir / "worker-{conf.web_port}"),
        web_port=settings.web_port,
        web_host=settings.web_host or None,  # None: Faust's default, the machine's host name
        # The raw table endpoint would expose patient data; the web view serves its own pages.
        web_tables_enabled=False,
        # Faust's /router page (partition map, host names) would be served without authentication; the
        # web view routes requests itself (app.router in-process), so the page is not needed.
        web_router_enabled=False,
        producer_max_request_size=settings.max_message_bytes,
        consumer_max_fetch_size=settings.max_message_bytes,
        producer_acks=-1,
        autodiscover=False,
        # Aggregator: a crashed worker's partitions move after this; Kafka wants heartbeats 3x as often.
        broker_session_timeout=settings.aggregator_session_timeout,
        broker_heartbeat_interval=settings.aggregator_session_timeout / 4,
        # Every table write is a changelog record: without a linger each goes out in its own request.
        producer_linger=settings.aggregator_producer_linger,
        producer_max_batch_size=settings.aggregator_producer_batch_bytes,
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


def upload_due_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-upload-due"


@dataclass(frozen=True, slots=True)
class UploaderChannels:
    """The uploader's topics: ``retry`` (parked revisions, public), ``due`` (internal), ``input`` (ready + due).

    A parked revision waits in ``retry`` until its due time, then moves to ``due``; the uploader agent
    reads ``imaging.study.ready`` and ``due`` through one channel, so it alone writes the outcomes
    table. All are co-partitioned with ``imaging.study.ready`` (same partitions, key = study UID).
    """

    retry: faust.TopicT
    due: faust.TopicT
    input: faust.TopicT


def declare_uploader_channels(app: faust.App, settings: Settings) -> UploaderChannels:
    def channel(*names: str, internal: bool) -> faust.TopicT:
        return app.topic(
            *names,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
            internal=internal,
        )

    due = upload_due_topic_name(settings)
    return UploaderChannels(
        retry=channel(settings.topic_retry, internal=False),
        due=channel(due, internal=True),
        input=channel(settings.topic_ready, due, internal=True),
    )


settings = get_settings()
# Replay (issue 7): every worker starts with the state generation recorded in the control topic, which
# `studystream replay --reset-state` bumps, and the ready-replay fence the uploader honours (infra.control);
# read here so `faust -A app.stream_app:app` gets them too.
control = read_control(settings)
app = create_app(settings, generation=control.generation)
topics = declare_topics(app, settings)
study_check, aggregator_input = declare_aggregator_channels(app, settings)
uploader_channels = declare_uploader_channels(app, settings)


def load_agents() -> None:
    """Import the modules that register agents, tables and pages on :data:`app`."""
    import agents  # noqa: F401
    import web.views  # noqa: F401
