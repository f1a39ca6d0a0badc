"""Drains the outbox to Kafka (acks=all, idempotent producer), a task in the receiver's event loop.

The loop never touches SQLite itself (outbox calls run in worker threads). A failed round closes the
producer, waits with exponential backoff and starts over from the outbox, so events wait there however
long the broker is away, and a crash at any moment costs at most duplicate events, never lost ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)

from adapters.topics import ensure_topics_async
from app.settings import Settings
from scp.metrics import ReceiverMetrics
from scp.outbox import Outbox, OutboxEntry

# The broker (or the client) will never take these records as they are: retrying would stall every
# record behind them. They go to the outbox's quarantine.
PERMANENT_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidMessageError,
    UnsupportedForMessageFormatError,
    TopicAuthorizationFailedError,
    InvalidTopicError,
    PolicyViolationError,
)

log = logging.getLogger(f"studystream.{__name__}")

_IDLE_WAIT = 1.0  # seconds between outbox checks when nobody signals new events
# While events stream, the depth gauges are read at most this often (two queries of the outbox each,
# which the associations' commits wait behind); when idle, and after a quarantine, at once.
_BUSY_DEPTHS_INTERVAL = 1.0


class Publisher:
    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        metrics: ReceiverMetrics,
        before_publish: Callable[[], None] | None = None,
    ) -> None:
        """``before_publish`` runs (in a thread) after the outbox is read and before its events are sent:
        :meth:`scp.storage.InstanceStore.sync_placed`, which makes the files of those events durable."""
        self.settings = settings
        self.outbox = outbox
        self.metrics = metrics
        self._before_publish = before_publish
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = asyncio.Event()  # set by stop(); ends a back-off
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.quarantine_depth = 0
        self._depths_at = 0.0  # time.monotonic() of the last depth update

    def start(self) -> None:
        """Run in the receiver's event loop (the caller's), beside the associations."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.outbox.on_release(self.notify)
        self._task = asyncio.create_task(self._main(), name="receiver-publisher")

    def notify(self) -> None:
        """Thread-safe: new events are publishable."""
        if self._wake is not None and self._wake.is_set():
            # Already woken, not yet cleared: the round ahead reads the outbox after this release. (Waking
            # the loop again, once per stored instance, measured as a few per cent of the receive rate.)
            return
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop closed meanwhile: we are shutting down
                pass

    async def stop(self, timeout: float) -> None:
        """Publish what is publishable (within ``timeout``), then stop."""
        self._stopping.set()
        self.notify()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()

    async def _main(self) -> None:
        backoff = self.settings.receiver_publish_retry_initial
        producer: AIOKafkaProducer | None = None
        next_probe = 0.0
        while True:
            try:
                if producer is None:
                    producer = await self._start_producer()
                    next_probe = time.monotonic() + self.settings.receiver_broker_probe_interval
                published = await self._drain_once(producer)
                backoff = self.settings.receiver_publish_retry_initial
                if self._stopping.is_set() and not published:
                    break
                if published >= self.settings.receiver_publish_batch or (published and self._stopping.is_set()):
                    continue  # a backlog, or what is left before stopping: the next round at once
                if not published and time.monotonic() >= next_probe:
                    await self._probe(producer)
                    next_probe = time.monotonic() + self.settings.receiver_broker_probe_interval
                # A partial round (events streaming in) waits for the linger like an idle one: the rounds
                # that followed each other at once took one or two events each, and their Kafka requests
                # cost the event loop about a quarter of its time at 200 instances/s.
                if await self._sleep(_IDLE_WAIT) and not self._stopping.is_set():
                    await asyncio.sleep(self.settings.receiver_publish_linger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the publisher must outlive any broker or client failure
                self.metrics.publish_errors.inc()
                self._set_connected(False)
                log.warning("publish failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, backoff)
                if producer is not None:
                    await self._close(producer)
                    producer = None
                if self._stopping.is_set():
                    break
                await self._back_off(backoff)
                backoff = min(backoff * 2, self.settings.receiver_publish_retry_max)
        if producer is not None:
            await self._close(producer)

    async def _back_off(self, seconds: float) -> None:
        """Wait ``seconds`` after a failed round, or until stopping. New events do not end the wait: they do not
        bring the broker back. (Ended by each release, the wait became one connection attempt and one warning
        per stored instance while the broker was away: about 80 a second under load.)"""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _sleep(self, seconds: float) -> bool:
        """Wait until notified or ``seconds`` pass; True when notified."""
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
            woken = True
        except TimeoutError:
            woken = False
        self._wake.clear()
        return woken

    async def _start_producer(self) -> AIOKafkaProducer:
        timeout = self.settings.receiver_publish_timeout
        await asyncio.wait_for(ensure_topics_async(self.settings, [self.settings.topic_raw]), timeout)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            max_request_size=self.settings.max_message_bytes,
            request_timeout_ms=int(timeout * 1000),
            linger_ms=int(self.settings.receiver_producer_linger * 1000),
        )
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except BaseException:
            await self._close(producer)
            raise
        self._set_connected(True)
        log.info("publisher connected to %s, topic %s", self.settings.broker_url, self.settings.topic_raw)
        return producer

    async def _probe(self, producer: AIOKafkaProducer) -> None:
        """While idle, ask the broker for metadata: nothing else would notice it went away."""
        try:
            reachable = bool(
                await asyncio.wait_for(producer.client.force_metadata_update(), self.settings.receiver_publish_timeout)
            )
        except (TimeoutError, OSError, KafkaError):
            reachable = False
        if reachable != self.connected:
            if reachable:
                log.info("broker %s reachable again", self.settings.broker_url)
            else:
                log.warning("broker %s unreachable; events wait in the outbox", self.settings.broker_url)
        self._set_connected(reachable)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 5)
        except Exception as exc:  # noqa: BLE001 - closing a broken producer may fail in many ways
            log.debug("closing producer: %s", exc)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.metrics.broker_connected.set(1 if connected else 0)

    async def _drain_once(self, producer: AIOKafkaProducer) -> int:
        """One round: send what the outbox holds, confirm each event the broker acknowledged, quarantine each
        it refused for good; a transient failure fails the round (after confirming what did get through)."""
        entries = await asyncio.to_thread(self._publishable)
        if not entries:
            await self._update_depths()
            return 0
        started = time.perf_counter()
        sent: list[tuple[OutboxEntry, asyncio.Future[Any]]] = []
        refused: list[tuple[OutboxEntry, BaseException]] = []
        for entry in entries:
            try:
                # send() only enqueues, in order; a record the client refuses outright raises here.
                sent.append((entry, await producer.send(self.settings.topic_raw, entry.value, key=entry.key)))
            except PERMANENT_ERRORS as exc:
                refused.append((entry, exc))
        futures = [future for _, future in sent]
        if futures:
            await asyncio.wait(futures, timeout=self.settings.receiver_publish_timeout)
        confirmed, failed = [], None
        for entry, future in sent:
            if not future.done():
                self.metrics.publish_unconfirmed.inc()  # sent again next round: a duplicate at worst, counted
                failed = failed or TimeoutError("broker did not acknowledge within receiver_publish_timeout")
            elif future.exception() is None:
                confirmed.append(entry)
            elif isinstance(future.exception(), PERMANENT_ERRORS):
                refused.append((entry, future.exception()))  # type: ignore[arg-type]
            else:
                failed = failed or future.exception()
        await asyncio.to_thread(self.outbox.confirm, [entry.id for entry in confirmed])
        for entry, exc in refused:
            await asyncio.to_thread(self.outbox.quarantine, entry.id, f"{type(exc).__name__}: {exc}"[:500])
            self.metrics.quarantined.inc()
            log.error(
                "event %d (study %s) refused by the broker for good (%s): quarantined; "
                "`studystream receiver quarantine list` shows it",
                entry.id,
                entry.key.decode("ascii", "replace"),
                type(exc).__name__,
            )
        now = time.time()
        for entry in confirmed:
            self.metrics.publish_latency.observe(max(0.0, now - entry.created))
        self.metrics.published.inc(len(confirmed))
        if refused or time.monotonic() - self._depths_at >= _BUSY_DEPTHS_INTERVAL:
            await self._update_depths()
        log.debug("published %d events in %.1f ms", len(confirmed), (time.perf_counter() - started) * 1000)
        if failed is not None:
            raise failed
        return len(confirmed) + len(refused)

    def _publishable(self) -> list[OutboxEntry]:
        entries = self.outbox.pending(self.settings.receiver_publish_batch)
        if entries and self._before_publish is not None:
            self._before_publish()  # an event read above was released after its file's rename: covered
        return entries

    async def _update_depths(self) -> None:
        self._depths_at = time.monotonic()
        self.metrics.outbox_depth.set(await asyncio.to_thread(self.outbox.depth))
        self.quarantine_depth = await asyncio.to_thread(self.outbox.quarantine_depth)
        self.metrics.quarantine_depth.set(self.quarantine_depth)
