"""The Faust application of a worker, built from the settings: app, topics, tables, agents and web view.

:func:`build_worker` constructs everything with its collaborators injected and registers the agents,
timers and pages on the app; importing this module touches no network. ``studystream worker`` calls
it, and so does ``faust -A app.worker:app worker`` (:mod:`app.worker`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import faust

from adapters.control import ControlState
from agents import aggregator as aggregator_agent
from agents import consumer as consumer_view
from agents import uploader as uploader_agent
from agents.delivery import DeliveryGate
from agents.policy import DeadLetterWriter, MessagePolicy
from agents.watchdog import InputWatchdog
from app.settings import Settings
from app.topology import topology
from tables.outcomes import UploadOutcomes
from tables.store import TableStore
from tables.studies import StudyTables
from web import views


@dataclass(frozen=True, slots=True)
class Topics:
    raw: faust.TopicT
    ready: faust.TopicT
    dlq: faust.TopicT


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


@dataclass(frozen=True, slots=True)
class Worker:
    """Everything one worker process runs, built by :func:`build_worker`."""

    settings: Settings
    control: ControlState
    app: faust.App
    topics: Topics
    policy: MessagePolicy
    tables: StudyTables
    outcomes: UploadOutcomes
    aggregator: aggregator_agent.StudyAggregator
    uploader: uploader_agent.StudyUploader
    web: views.StudyWeb


def create_app(settings: Settings, generation: int = 1) -> faust.App:
    """A Faust app configured entirely from ``settings``.

    ``generation`` (replay) is the Faust app version: with N > 1 the consumer group, every changelog
    and the local stores are ``<app id>-vN``-prefixed / under ``<datadir>/vN``, i.e. fresh state.
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


def _topic(app: faust.App, settings: Settings, *names: str, internal: bool = False) -> faust.TopicT:
    return app.topic(
        *names, key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions, internal=internal
    )


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    return Topics(
        raw=_topic(app, settings, settings.topic_raw),
        ready=_topic(app, settings, settings.topic_ready),
        dlq=_topic(app, settings, settings.topic_dlq),
    )


def declare_aggregator_channels(app: faust.App, settings: Settings) -> tuple[faust.TopicT, faust.TopicT]:
    """The completeness timer's command topic, and the aggregator's input: imaging.raw + that topic.

    The timer cannot write tables, so it sends "check <study>" to a topic co-partitioned with
    imaging.raw; the aggregator agent (the only writer) reads both through one channel, so one task
    handles every message of a study in order. Internal: Faust creates the check topic itself.
    """
    check = topology(settings).check.name
    return (
        _topic(app, settings, check, internal=True),
        _topic(app, settings, settings.topic_raw, check, internal=True),
    )


def declare_uploader_channels(app: faust.App, settings: Settings) -> UploaderChannels:
    due = topology(settings).due.name
    return UploaderChannels(
        retry=_topic(app, settings, settings.topic_retry),
        due=_topic(app, settings, due, internal=True),
        input=_topic(app, settings, settings.topic_ready, due, internal=True),
    )


def build_worker(settings: Settings, control: ControlState) -> Worker:
    """The app and everything on it; agents, timers and pages registered. No network until it runs."""
    app = create_app(settings, generation=control.generation)
    topics = declare_topics(app, settings)
    check, aggregator_input = declare_aggregator_channels(app, settings)
    channels = declare_uploader_channels(app, settings)
    store = TableStore(app, settings.aggregator_fault_point, settings.aggregator_fault_after_writes)
    dead_letters: Counter[tuple[str, str]] = Counter()
    topo = topology(settings)
    # Every input of the agents is a delete-policy topic written without transactions: gapless.
    gate = DeliveryGate(
        topo.worker_inputs,
        gapless=topo.worker_inputs,
        committed=lambda tp: consumer_view.committed_offset(app.consumer, tp),
        reseek_after=settings.worker_reseek_after,
    )
    policy = MessagePolicy(
        app, DeadLetterWriter(topics.dlq, dead_letters), time.time, stop_timeout=settings.worker_stop_timeout, gate=gate
    )
    register_delivery_gate(app, gate)
    tables = StudyTables(app, settings, store)
    outcomes = UploadOutcomes(app, settings, store)
    aggregator = aggregator_agent.StudyAggregator(
        app, settings, tables, topics.ready, check, policy, generation=control.generation
    )
    uploader = uploader_agent.StudyUploader(app, settings, outcomes, channels.retry, channels.due, policy, control)
    web = views.StudyWeb(app, settings, tables, outcomes, aggregator.counters, dead_letters, policy, uploader)
    aggregator_agent.register(app, aggregator, aggregator_input, topo.check)
    uploader_agent.register(app, uploader, channels.input, channels.retry, topo)
    views.register(app, web)
    watchdog = InputWatchdog(app, topo.worker_inputs, policy.handled, settings.aggregator_stall_timeout)
    register_watchdog(app, watchdog, policy)
    register_quiet_logging(app)
    return Worker(settings, control, app, topics, policy, tables, outcomes, aggregator, uploader, web)


def register_delivery_gate(app: faust.App, gate: DeliveryGate) -> None:
    """Every acknowledgement through the gate from the first assignment on; revoked partitions forget their rewinds."""

    @app.on_partitions_assigned.connect
    async def gate_acks(sender: faust.App, *_: Any, **__: Any) -> None:
        consumer_view.intercept_acks(app.consumer, gate.may_ack)

    @app.on_partitions_revoked.connect
    async def forget_rewinds(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        gate.forget(revoked)


def register_watchdog(app: faust.App, watchdog: InputWatchdog, policy: MessagePolicy) -> None:
    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: faust.App, revoked: set[Any], **_: Any) -> None:
        watchdog.forget(revoked)

    @app.timer(max(1.0, watchdog.timeout / 6))
    async def watch_input() -> None:
        await policy.timer_round("input watchdog", watchdog.round)


def register_quiet_logging(app: faust.App) -> None:
    @app.task
    async def drop_debug_logging() -> None:
        """Undo the DEBUG root level Faust's worker sets for its start-up spinner at ``-l warn`` or above.

        With it, every aiokafka debug record (several per message produced or fetched) is built and then
        dropped by the console handler, which costs the worker real CPU.
        """
        root = logging.getLogger()
        console_levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"]
        if console_levels and root.level < min(console_levels):
            root.setLevel(min(console_levels))
