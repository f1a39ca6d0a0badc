"""One receiving process: an asyncio DICOM acceptor, its storage and outbox, its publisher and its metrics.

:func:`build_receiver` wires the parts from the settings; :meth:`Receiver.start` takes the outbox's lock
(before anything touches the storage directory), recovers what a crash left, starts the publisher and
listens (``SO_REUSEPORT``: several processes may share the port); :meth:`Receiver.stop` stops
accepting, lets open associations finish (bounded), publishes what it can and closes everything. One
event loop serves every association; the blocking steps (parse, fsync, SQLite) run in a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from app.settings import Settings
from domain.dicom_event import EventLimits
from domain.errors import ConfigurationError
from scp.association import Association, ReceiverDeps
from scp.commitment import InstanceIndex, ReportRoute, parse_commitment_peers
from scp.cstore import EVENT_ROOM_BYTES, StoreLimits
from scp.metrics import ReceiverMetrics, start_http
from scp.mpps import StepStore
from scp.negotiation import CallingAllowlist, Offer, supported_contexts
from scp.outbox import Outbox
from scp.publisher import Publisher
from scp.storage import InstanceStore
from scp.stow import start_dicomweb

log = logging.getLogger(f"studystream.{__name__}")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.receiver_tls_cert and not settings.receiver_tls_key:
        return None
    if not (settings.receiver_tls_cert and settings.receiver_tls_key):
        raise ConfigurationError("TLS needs both STUDYSTREAM_RECEIVER_TLS_CERT and STUDYSTREAM_RECEIVER_TLS_KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.receiver_tls_cert, settings.receiver_tls_key)
    if settings.receiver_tls_ca:
        context.load_verify_locations(settings.receiver_tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def outbox_path(settings: Settings, slot: int) -> Path:
    base = settings.receiver_outbox_path or settings.state_dir / "receiver-outbox.sqlite"
    return base if slot == 0 else base.with_name(f"{base.stem}-{slot}{base.suffix}")


def index_path(settings: Settings) -> Path:
    return outbox_path(settings, 0).parent / "receiver-index.sqlite"


def mpps_path(settings: Settings) -> Path:
    """The Modality Performed Procedure Steps, shared by the receiving processes (:mod:`scp.mpps`)."""
    return outbox_path(settings, 0).parent / "receiver-mpps.sqlite"


def slot_of_outbox(settings: Settings, path: Path) -> int | None:
    """The receiving slot an outbox file belongs to (0 for the base file), or None if it is not one."""
    base = outbox_path(settings, 0)
    if path == base:
        return 0
    prefix, suffix = f"{base.stem}-", base.suffix
    name = path.name
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    number = name[len(prefix) : len(name) - len(suffix)]
    return int(number) if number.isdigit() else None


def adopt_orphan_outboxes(settings: Settings, processes: int) -> int:
    """Move the events of slots ``>= processes`` (a receiver restarted with fewer processes) into slot 0's outbox.

    Those slots will not run again, so nothing else would ever publish what their outboxes still hold.
    Returns the number of events moved.
    """
    base = outbox_path(settings, 0)
    if not base.parent.is_dir():
        return 0
    orphans = sorted(
        path
        for path in base.parent.glob(f"{base.stem}-*{base.suffix}")
        if (slot := slot_of_outbox(settings, path)) is not None and slot >= processes
    )
    if not orphans:
        return 0
    outbox = Outbox(base, fsync=settings.receiver_fsync)
    moved = 0
    try:
        for path in orphans:
            count = outbox.adopt(path)
            log.info("outbox %s of a slot no longer running: %d events moved to %s", path, count, base)
            moved += count
    finally:
        outbox.close()
    return moved


def store_limits(settings: Settings) -> StoreLimits:
    return StoreLimits(
        max_dataset_bytes=settings.receiver_max_dataset_bytes,
        max_inflated_bytes=settings.receiver_max_inflated_bytes,
        min_free_bytes=settings.receiver_min_free_bytes,
        max_event_bytes=settings.max_message_bytes - EVENT_ROOM_BYTES,
        event=EventLimits(
            settings.receiver_event_max_values,
            settings.receiver_event_max_items,
            settings.receiver_event_unbounded_chars,
            settings.receiver_rejection_max_instances,
        ),
    )


class Receiver:
    """One receiving process (see the module doc)."""

    def __init__(self, settings: Settings, slot: int, port: int, ae_title: str, storage_dir: Path) -> None:
        self.settings, self.slot, self.port, self.ae_title = settings, slot, port, ae_title
        self.storage_dir = storage_dir
        self.metrics = ReceiverMetrics()
        self.pool = ThreadPoolExecutor(
            max_workers=settings.receiver_max_associations + 2, thread_name_prefix="receiver-store"
        )
        self.outbox: Outbox | None = None
        self.store: InstanceStore | None = None
        self.index: InstanceIndex | None = None
        self.mpps: StepStore | None = None
        self.publisher: Publisher | None = None
        self.server: asyncio.Server | None = None
        self.http: Any = None
        self.dicomweb: Any = None  # aiohttp AppRunner of the STOW-RS front door, when it serves
        self.associations: set[asyncio.Task[None]] = set()
        self.deps: ReceiverDeps | None = None

    async def start(self) -> None:
        s = self.settings
        # The outbox's lock first: a second receiver on this state directory must fail here, before it
        # could delete the running one's staged files.
        self.outbox = Outbox(outbox_path(s, self.slot), fsync=s.receiver_fsync)
        self.store = InstanceStore(
            self.storage_dir, fsync=s.receiver_fsync, slot=str(self.slot), sync_threads=s.receiver_max_associations
        )
        # Recovery first: it may finish a rename from a staged file, which prepare() would delete.
        kept, dropped = self.outbox.recover(self.store.settle)
        leftovers = self.store.prepare()
        log.info(
            "outbox %s: %d events to publish, %d dropped (file never placed); %d partial files removed",
            self.outbox.path,
            kept,
            dropped,
            leftovers,
        )
        self.metrics.outbox_depth.set(kept)
        self.publisher = Publisher(s, self.outbox, self.metrics, before_publish=self.store.sync_placed)
        self.publisher.start()
        self.index = InstanceIndex(index_path(s), busy_timeout=s.receiver_index_timeout)
        self.mpps = StepStore(mpps_path(s), busy_timeout=s.receiver_index_timeout, fsync=s.receiver_fsync)
        self.deps = self._deps(asyncio.get_running_loop(), self.store, self.outbox, self.index)
        self.deps.mpps, self.deps.mpps_max_instances = self.mpps, s.receiver_mpps_max_instances
        self.server = await asyncio.start_server(
            self.serve,
            s.dicom_host,
            self.port,
            ssl=tls_context(s),
            reuse_port=True,
            backlog=max(16, 2 * s.receiver_max_associations),
            ssl_handshake_timeout=s.receiver_acse_timeout if s.receiver_tls_cert else None,
        )
        if s.receiver_metrics_port:
            self.http = start_http(self.metrics, s.dicom_host, s.receiver_metrics_port + self.slot, self.health)
        self.dicomweb = await start_dicomweb(
            self.deps, s, self.ae_title, s.dicom_host, s.receiver_dicomweb_port, tls_context(s)
        )
        log.info(
            "receiver %s listening on %s:%d (slot %d), storing in %s",
            self.ae_title,
            s.dicom_host,
            self.port,
            self.slot,
            self.storage_dir,
        )

    def _deps(
        self, loop: asyncio.AbstractEventLoop, store: InstanceStore, outbox: Outbox, index: InstanceIndex
    ) -> ReceiverDeps:
        """What every association of this process shares, from the settings."""
        s = self.settings
        return ReceiverDeps(
            offer=Offer(
                ae_title=self.ae_title,
                allowlist=CallingAllowlist.parse(s.receiver_allowed_calling_aes),
                max_pdu=s.receiver_max_pdu,
                contexts=supported_contexts(),
                require_called_ae=s.receiver_require_called_ae,
            ),
            limits=store_limits(s),
            store=store,
            outbox=outbox,
            metrics=self.metrics,
            run_blocking=lambda fn, *args: loop.run_in_executor(self.pool, partial(fn, *args)),
            acse_timeout=s.receiver_acse_timeout,
            dimse_timeout=s.receiver_dimse_timeout,
            network_timeout=s.receiver_network_timeout,
            max_associations=s.receiver_max_associations,
            max_associations_per_ae=s.receiver_max_associations_per_ae,
            max_action_bytes=s.receiver_max_action_bytes,
            index=index,
            report_route=ReportRoute(
                peers=parse_commitment_peers(s.receiver_commitment_peers),
                our_ae_title=self.ae_title,
                timeout=s.receiver_commitment_report_timeout,
            ),
            commitment_max_uids=s.receiver_commitment_record_max_uids,
            fault_after_store=s.receiver_fault_after_store,
            inline_store=s.receiver_inline_store,
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.deps is not None
        task = asyncio.current_task()
        assert task is not None
        self.associations.add(task)
        try:
            await Association(reader, writer, self.deps).run()
        finally:
            self.associations.discard(task)

    def health(self) -> dict[str, object]:
        assert self.publisher is not None and self.outbox is not None
        quarantined = self.publisher.quarantine_depth
        return {
            "ok": self.server is not None and self.server.is_serving(),
            "status": "degraded" if quarantined or not self.publisher.connected else "ok",
            "ae_title": self.ae_title,
            "port": self.port,
            "dicomweb_port": self.settings.receiver_dicomweb_port if self.dicomweb is not None else None,
            "broker_connected": self.publisher.connected,
            "outbox_depth": self.outbox.depth(),
            "quarantine_depth": quarantined,
            "associations": len(self.associations),
        }

    async def stop(self) -> None:
        log.info("receiver stopping")
        if self.server is not None:
            self.server.close()
        if self.dicomweb is not None:
            await self.dicomweb.cleanup()  # requests under way finish (bounded by receiver_acse_timeout)
        if self.associations:
            _, running = await asyncio.wait(list(self.associations), timeout=self.settings.receiver_acse_timeout)
            for task in running:
                task.cancel()
        if self.publisher is not None:
            await self.publisher.stop(timeout=self.settings.receiver_publish_timeout)
        if self.http is not None:
            self.http.shutdown()
        self.pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
        if self.index is not None:
            self.index.close()
        if self.mpps is not None:
            self.mpps.close()
        if self.outbox is not None:
            self.outbox.close()


def build_receiver(settings: Settings, slot: int, port: int, ae_title: str, storage_dir: Path) -> Receiver:
    return Receiver(settings, slot, port, ae_title, storage_dir)


def run_receiver(settings: Settings, port: int, ae_title: str, storage_dir: Path, slot: int = 0) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_handshake_failures)
        receiver = build_receiver(settings, slot, port, ae_title, storage_dir)
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await receiver.start()
        try:
            await stopping.wait()
        finally:
            await receiver.stop()

    asyncio.run(main())
    return 0


def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A TLS peer that fails its handshake is the peer's problem: one line, not a traceback."""
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError):
        log.warning("connection refused at TLS: %s", type(exc).__name__)
        return
    loop.default_exception_handler(context)
