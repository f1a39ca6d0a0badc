"""Assembles one receiving process: AE, presentation contexts, storage, outbox, publisher, metrics."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from types import FrameType

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from app.settings import Settings
from domain.dicom_event import EventLimits
from domain.errors import ConfigurationError
from scp.commitment import InstanceIndex, ReportRoute, handle_n_action, parse_commitment_peers
from scp.handlers import CallingAllowlist, ReceiverDeps, handle_echo, handle_requested, handle_store
from scp.metrics import ReceiverMetrics, start_http
from scp.outbox import Outbox
from scp.publisher import Publisher
from scp.storage import InstanceStore, file_sha256

LOG = logging.getLogger(__name__)

# What real senders use, most common first (a pynetdicom SCP prefers earlier entries when a context
# offers several); every other syntax pydicom knows follows.
PREFERRED_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
TRANSFER_SYNTAXES = [UID(uid) for uid in PREFERRED_TRANSFER_SYNTAXES] + [
    uid for uid in AllTransferSyntaxes if uid not in PREFERRED_TRANSFER_SYNTAXES
]


class ReusePortServer(ThreadedAssociationServer):
    """Lets several receiving processes listen on one port; the kernel spreads connections."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def build_ae(settings: Settings, ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = settings.receiver_max_associations
    ae.acse_timeout = settings.receiver_acse_timeout
    ae.dimse_timeout = settings.receiver_dimse_timeout
    ae.network_timeout = settings.receiver_network_timeout
    ae.maximum_pdu_size = settings.receiver_max_pdu
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:4])
    ae.add_supported_context(StorageCommitmentPushModel, TRANSFER_SYNTAXES[:4])
    return ae


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
            LOG.info("outbox %s of a slot no longer running: %d events moved to %s", path, count, base)
            moved += count
    finally:
        outbox.close()
    return moved


def _file_matches(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and file_sha256(path) == sha256
    except OSError:
        return False


def run_receiver(settings: Settings, port: int, ae_title: str, storage_dir: Path, slot: int = 0) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    store = InstanceStore(
        storage_dir, fsync=settings.receiver_fsync, slot=str(slot), sync_threads=settings.receiver_max_associations
    )
    outbox = Outbox(outbox_path(settings, slot), fsync=settings.receiver_fsync)  # the lock first
    leftovers = store.prepare()
    # pynetdicom writes each arriving dataset with NamedTemporaryFile: put it beside its final place so
    # the commit is a rename, not a copy. This process exists only to receive, so the global is ours.
    tempfile.tempdir = str(store.incoming)

    kept, dropped = outbox.recover(_file_matches)
    LOG.info(
        "outbox %s: %d events to publish, %d dropped (file never placed); %d partial files removed",
        outbox.path,
        kept,
        dropped,
        leftovers,
    )

    metrics = ReceiverMetrics()
    metrics.outbox_depth.set(kept)
    publisher = Publisher(settings, outbox, metrics)
    publisher.start()

    deps = ReceiverDeps(
        store=store,
        outbox=outbox,
        metrics=metrics,
        allowlist=CallingAllowlist.parse(settings.receiver_allowed_calling_aes),
        fault_after_store=settings.receiver_fault_after_store,
        commitment_max_uids=settings.receiver_commitment_record_max_uids,
        event_limits=EventLimits(
            settings.receiver_event_max_values,
            settings.receiver_event_max_items,
            settings.receiver_event_unbounded_chars,
        ),
        index=InstanceIndex(index_path(settings), busy_timeout=settings.receiver_index_timeout),
        report_route=ReportRoute(
            peers=parse_commitment_peers(settings.receiver_commitment_peers),
            our_ae_title=ae_title,
            timeout=settings.receiver_commitment_report_timeout,
        ),
    )
    ae = build_ae(settings, ae_title)
    handlers = [
        (evt.EVT_C_STORE, handle_store, [deps]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_N_ACTION, handle_n_action, [deps]),
        (evt.EVT_REQUESTED, handle_requested, [deps]),
    ]
    server = ae.make_server(
        (settings.dicom_host, port),
        ae_title=ae_title,
        ssl_context=tls_context(settings),
        evt_handlers=handlers,
        server_class=ReusePortServer,
    )
    # What AE.start_server does for its own servers; pynetdicom's shutdown() expects it.
    ae._servers.append(server)
    serving = threading.Thread(target=server.serve_forever, name="receiver-acceptor", daemon=True)
    serving.start()

    http = None
    if settings.receiver_metrics_port:

        def health() -> dict[str, object]:
            quarantined = publisher.quarantine_depth
            return {
                "ok": serving.is_alive(),
                "status": "degraded" if quarantined or not publisher.connected else "ok",
                "ae_title": ae_title,
                "port": port,
                "broker_connected": publisher.connected,
                "outbox_depth": outbox.depth(),
                "quarantine_depth": quarantined,
            }

        http = start_http(metrics, settings.dicom_host, settings.receiver_metrics_port + slot, health)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    LOG.info(
        "receiver %s listening on %s:%d (slot %d), storing in %s",
        ae_title,
        settings.dicom_host,
        port,
        slot,
        storage_dir,
    )
    while not stop.wait(1.0):
        pass
    LOG.info("receiver stopping")
    server.shutdown()
    server.server_close()
    publisher.stop(timeout=settings.receiver_publish_timeout)
    if http is not None:
        http.shutdown()
    store.close()
    if deps.index is not None:
        deps.index.close()
    outbox.close()
    return 0
