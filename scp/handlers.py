"""pynetdicom event handlers of the receiver. Dependencies are bound arguments, never globals.

Contracts (statuses a handler may return):

* ``handle_store`` (EVT_C_STORE): 0x0000 after the file is durable and its event is in the outbox;
  0xA700 storage or outbox failure (out of resources); 0xA900 missing/malformed UIDs or a dataset that
  contradicts the request; 0xC210 dataset cannot be parsed. Never raises into pynetdicom.
* ``handle_echo`` (EVT_C_ECHO): 0x0000.
* ``scp.commitment.handle_n_action`` (EVT_N_ACTION): Storage Commitment requests.
* ``handle_requested`` (EVT_REQUESTED): rejects associations from calling AEs outside the allowlist.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec.structs import replace
from pydicom import dcmread
from pynetdicom.events import Event

from domain.dicom_event import (
    EventLimits,
    InstanceRejected,
    Reception,
    check_identity,
    instance_event,
    parse_defect,
)
from scp.metrics import ReceiverMetrics
from scp.outbox import Outbox
from scp.storage import InstanceStore, StorageError, file_sha256

if TYPE_CHECKING:
    from scp.commitment import InstanceIndex, ReportRoute

LOG = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210  # pynetdicom's "failed to decode the dataset"

_REASON_STATUS = {
    "missing_uid": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "malformed_uid": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "sop_class_mismatch": DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "sop_instance_mismatch": DATASET_DOES_NOT_MATCH_SOP_CLASS,
}

# A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised.
_REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


@dataclass(frozen=True, slots=True)
class CallingAllowlist:
    """Entries ``AE`` or ``AE@host``; an empty list allows everybody."""

    entries: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> CallingAllowlist:
        entries = []
        for item in (part.strip() for part in text.split(",")):
            if item:
                ae, _, host = item.partition("@")
                entries.append((ae.strip(), host.strip() or None))
        return cls(tuple(entries))

    def allows(self, calling_ae: str, host: str) -> bool:
        if not self.entries:
            return True
        return any(ae == calling_ae and (allowed is None or allowed == host) for ae, allowed in self.entries)


@dataclass
class ReceiverDeps:
    store: InstanceStore
    outbox: Outbox
    metrics: ReceiverMetrics
    allowlist: CallingAllowlist = field(default_factory=CallingAllowlist)
    index: InstanceIndex | None = None  # for Storage Commitment
    report_route: ReportRoute | None = None  # where commitment results go when the association is gone
    fault_after_store: int = 0  # testing: os._exit after this many stored instances
    commitment_max_uids: int = 10_000  # instances per storage_commitment record (a longer request is split)
    event_limits: EventLimits = field(default_factory=EventLimits)
    _stored: int = 0
    _stored_lock: threading.Lock = field(default_factory=threading.Lock)

    def count_stored(self) -> int:
        with self._stored_lock:
            self._stored += 1
            return self._stored


def handle_requested(event: Event, deps: ReceiverDeps) -> None:
    requestor = event.assoc.requestor
    # Before negotiation the requestor's AE title is only in the A-ASSOCIATE-RQ primitive.
    calling_ae = str(requestor.primitive.calling_ae_title if requestor.primitive else requestor.ae_title).strip()
    if not deps.allowlist.allows(calling_ae, str(requestor.address)):
        deps.metrics.associations_rejected.labels(reason="calling_ae_not_allowed").inc()
        LOG.warning("association rejected: calling AE %r from %s not allowed", calling_ae, requestor.address)
        event.assoc.acse.send_reject(_REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
        # As pynetdicom's own rejections do: kill() lets the DUL flush the A-ASSOCIATE-RJ before the
        # socket closes (without it the peer often sees only an abort).
        event.assoc.kill()


def handle_echo(event: Event) -> int:
    return SUCCESS


def _fail(deps: ReceiverDeps, reason: str, status: int, sop_instance: str, detail: str) -> int:
    deps.metrics.failures.labels(reason=reason).inc()
    LOG.warning("C-STORE %s refused: status 0x%04X %s (%s)", sop_instance, status, reason, detail)
    return status


def _staged_file(event: Event, deps: ReceiverDeps) -> Path:
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    if isinstance(path, Path):
        return path
    # Not in chunked mode: the dataset arrived in memory.
    return deps.store.stage_bytes(event.encoded_dataset(include_meta=True))


def handle_store(event: Event, deps: ReceiverDeps) -> int:
    started = time.perf_counter()
    request = event.request
    sop_instance = str(request.AffectedSOPInstanceUID or "").strip()
    sop_class = str(request.AffectedSOPClassUID or "").strip()
    try:
        staged = _staged_file(event, deps)
    except (StorageError, OSError) as exc:
        return _fail(deps, "storage_error", OUT_OF_RESOURCES, sop_instance, str(exc))
    try:
        return _store_staged(event, deps, staged, sop_class, sop_instance, started)
    finally:
        # Renamed away on success; otherwise the partial file must not linger.
        staged.unlink(missing_ok=True)


def _store_staged(
    event: Event, deps: ReceiverDeps, staged: Path, sop_class: str, sop_instance: str, started: float
) -> int:
    try:
        size = staged.stat().st_size
    except OSError as exc:
        return _fail(deps, "storage_error", OUT_OF_RESOURCES, sop_instance, str(exc))
    try:
        dataset = dcmread(staged, stop_before_pixels=True, defer_size="256 KB")
        defect = parse_defect(dataset, str(event.context.transfer_syntax), size)
        if defect:
            return _fail(deps, "unparseable", CANNOT_UNDERSTAND, sop_instance, defect)
        identity = check_identity(dataset, sop_class, sop_instance)
    except InstanceRejected as exc:
        return _fail(
            deps, exc.reason, _REASON_STATUS.get(exc.reason, DATASET_DOES_NOT_MATCH_SOP_CLASS), sop_instance, exc.detail
        )
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed input
        return _fail(deps, "unparseable", CANNOT_UNDERSTAND, sop_instance, type(exc).__name__)

    try:
        target = deps.store.path_for(identity.study_uid, identity.series_uid, identity.sop_instance_uid)
    except StorageError as exc:
        return _fail(deps, "storage_error", OUT_OF_RESOURCES, sop_instance, str(exc))

    assoc = event.assoc
    context = event.context
    reception = Reception(
        transfer_syntax_uid=str(context.transfer_syntax),
        calling_ae=str(assoc.requestor.ae_title).strip(),
        called_ae=str(assoc.acceptor.ae_title).strip(),
        peer_address=f"{assoc.requestor.address}:{assoc.requestor.port}",
        received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        stored_path=str(target),
        size=size,
        sha256="",
    )
    try:
        # Reads (and decodes with the Specific Character Set) only the attributes the event needs.
        instance = instance_event(dataset, identity, reception, deps.event_limits)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed values
        return _fail(deps, "unparseable", CANNOT_UNDERSTAND, sop_instance, type(exc).__name__)
    # The file's data flush runs while the outbox row is committed (each waits for the disk).
    data_sync = deps.store.start_sync(staged)
    # One placement of this SOP Instance UID at a time, across processes: its stamp orders the versions.
    with deps.store.placing(target) as placed_at_ns:
        try:
            # The outbox row records what the file will be (its hash), so recovery can verify it.
            instance = replace(instance, sha256=file_sha256(staged), placed_at_ns=placed_at_ns)
            row_id = deps.outbox.add(instance)
        except (sqlite3.Error, OSError) as exc:
            if data_sync is not None:
                data_sync.exception()  # let the flush finish before the caller deletes the staged file
            return _fail(deps, "outbox_error", OUT_OF_RESOURCES, sop_instance, f"{type(exc).__name__}: {exc}")
        try:
            stored = deps.store.commit(staged, target, instance.sha256, data_sync)
        except StorageError as exc:
            deps.outbox.discard(row_id)
            return _fail(deps, "storage_error", OUT_OF_RESOURCES, sop_instance, str(exc))
    if stored.duplicate or stored.replaced:
        # Known only after the store's locked comparison: correct the row before it is released.
        final = replace(instance, duplicate=stored.duplicate, replaced=stored.replaced)
        try:
            deps.outbox.rewrite(row_id, final)
        except (sqlite3.Error, OSError) as exc:
            # The file is in place and the row holds a valid (merely unflagged) event: publish that.
            LOG.warning("C-STORE %s: could not flag the event (%s)", sop_instance, exc)

    if deps.index is not None:
        try:
            deps.index.record(identity.sop_instance_uid, identity.sop_class_uid, identity.study_uid, str(target))
        except sqlite3.Error as exc:  # the index only serves Storage Commitment: never fail a store for it
            LOG.warning("C-STORE %s: not indexed for storage commitment (%s)", sop_instance, exc)

    outcome = "duplicate" if stored.duplicate else "replaced" if stored.replaced else "new"
    deps.metrics.instances_stored.labels(outcome=outcome).inc()
    deps.metrics.bytes_stored.inc(stored.size)
    count = deps.count_stored()
    if deps.fault_after_store and count >= deps.fault_after_store:
        LOG.error("fault injection: exiting after %d stored instances, before publishing", count)
        logging.shutdown()
        os._exit(70)
    deps.outbox.release(row_id)
    elapsed = time.perf_counter() - started
    deps.metrics.store_seconds.observe(elapsed)
    LOG.debug(
        "stored %s/%s/%s (%s, %d bytes) in %.1f ms",
        identity.study_uid,
        identity.series_uid,
        identity.sop_instance_uid,
        outcome,
        stored.size,
        elapsed * 1000,
    )
    return SUCCESS
