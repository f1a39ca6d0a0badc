"""Drains the outbox to Kafka (acks=all, idempotent producer) in its own thread and asyncio loop.

The loop never touches SQLite itself (outbox calls run in worker threads). A failed round closes the
producer, waits with exponential backoff and starts over from the outbox, so events wait there however
long the broker is away, and a crash at any moment costs at most duplicate events, never lost ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from app.settings import Settings
from infra.topics import ensure_topics_async
from scp.metrics import ReceiverMetrics
from scp.outbox import Outbox

LOG = logging.getLogger(__name__)

_IDLE_WAIT = 1.0  # seconds between outbox checks when nobody signals new events


class Publisher:
    def __init__(self, settings: Settings, outbox: Outbox, metrics: ReceiverMetrics) -> None:
        self.settings = settings
        self.outbox = outbox
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver-publisher", daemon=True)
        self.connected = False

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        self.outbox.on_release(self.notify)

    def notify(self) -> None:
        """Thread-safe: new events are publishable."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop closed meanwhile: we are shutting down
                pass

    def stop(self, timeout: float) -> None:
        """Publish what is publishable (within ``timeout``), then stop."""
        self._stopping.set()
        self.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._started.set()
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
                if not published:
                    if time.monotonic() >= next_probe:
                        await self._probe(producer)
                        next_probe = time.monotonic() + self.settings.receiver_broker_probe_interval
                    if await self._sleep(_IDLE_WAIT) and not self._stopping.is_set():
                        await asyncio.sleep(self.settings.receiver_publish_linger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the publisher must outlive any broker or client failure
                self.metrics.publish_errors.inc()
                self._set_connected(False)
                LOG.warning("publish failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, backoff)
                if producer is not None:
                    await self._close(producer)
                    producer = None
                if self._stopping.is_set():
                    break
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.settings.receiver_publish_retry_max)
        if producer is not None:
            await self._close(producer)

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
            linger_ms=2,
        )
        try:
            await asyncio.wait_for(producer.start(), timeout)
        except BaseException:
            await self._close(producer)
            raise
        self._set_connected(True)
        LOG.info("publisher connected to %s, topic %s", self.settings.broker_url, self.settings.topic_raw)
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
                LOG.info("broker %s reachable again", self.settings.broker_url)
            else:
                LOG.warning("broker %s unreachable; events wait in the outbox", self.settings.broker_url)
        self._set_connected(reachable)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 5)
        except Exception as exc:  # noqa: BLE001 - closing a broken producer may fail in many ways
            LOG.debug("closing producer: %s", exc)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.metrics.broker_connected.set(1 if connected else 0)

    async def _drain_once(self, producer: AIOKafkaProducer) -> int:
        entries = await asyncio.to_thread(self.outbox.pending, self.settings.receiver_publish_batch)
        if not entries:
            self.metrics.outbox_depth.set(await asyncio.to_thread(self.outbox.depth))
            return 0
        started = time.perf_counter()
        # send() only enqueues, in order; awaiting the futures waits for acks=all.
        futures = [await producer.send(self.settings.topic_raw, entry.value, key=entry.key) for entry in entries]
        await asyncio.wait_for(asyncio.gather(*futures), self.settings.receiver_publish_timeout)
        await asyncio.to_thread(self.outbox.confirm, [entry.id for entry in entries])
        now = time.time()
        for entry in entries:
            self.metrics.publish_latency.observe(max(0.0, now - entry.created))
        self.metrics.published.inc(len(entries))
        self.metrics.outbox_depth.set(await asyncio.to_thread(self.outbox.depth))
        LOG.debug("published %d events in %.1f ms", len(entries), (time.perf_counter() - started) * 1000)
        return len(entries)
