"""The C-STORE path as named steps: stage the dataset as it arrives, read and identify it, commit it durably.

1. :class:`StagedInstance` — each P-DATA fragment is written to a temporary file beside its final place
   (File Meta Information first, then the bytes as received, hashed on the way); past
   ``receiver_max_dataset_bytes``, or below ``receiver_min_free_bytes`` of free disk, it stops writing,
   removes the partial file and keeps only the refusal (the sender still sends the rest, which is read
   and dropped, then gets 0xA700).
2. :func:`identify` — the stored bytes are read without pixel data (a deflated dataset is first inflated
   into a second temporary file, never past ``receiver_max_inflated_bytes``), checked, and turned into
   the instance event.
3. :func:`commit_durably` — under the SOP Instance UID's placement lock, the event is committed to the
   outbox (grouped with the other associations' commits), the file flushed and renamed into place;
   only then does the sender get success.

Every refusal is a :class:`~domain.statuses.StoreRefused` with its reason; the status comes from
:data:`domain.statuses.REFUSAL_STATUS`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import struct
import tempfile
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from pydicom import dcmread
from pydicom.dataset import Dataset

from domain.dicom_event import EventLimits, InstanceRejected, Reception, check_identity, instance_event, parse_defect
from domain.events import InstanceEvent, encode_instance_event
from domain.statuses import StoreRefused
from scp.header import DEFER_SIZE, parse_head
from scp.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from scp.outbox import Outbox
from scp.storage import InstanceStore, StorageError, StoredInstance

log = logging.getLogger(f"studystream.{__name__}")

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_INFLATE_CHUNK = 1024 * 1024
EVENT_ROOM_BYTES = 64 * 1024  # what an event may not take of max_message_bytes (framing, headers)
HEAD_BYTES = 64 * 1024  # of each staged file kept in memory: the header is parsed from it (bounds memory)
SYNC_AHEAD_BYTES = 128 * 1024  # a large staged file's data is flushed in the background every this many bytes


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_dataset_bytes: int
    max_inflated_bytes: int
    min_free_bytes: int
    max_event_bytes: int
    event: EventLimits


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """One File Meta element (group 0002), explicit VR little endian."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, implementation: str, version: str) -> bytes:
    """The File Meta Information group of a staged file, encoded by hand: pydicom's writer took longer
    per C-STORE than staging the dataset itself. Non-ASCII UIDs raise (the C-STORE is refused)."""
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _padded(sop_class, b"\0")),
            _explicit(0x0003, b"UI", _padded(sop_instance, b"\0")),
            _explicit(0x0010, b"UI", _padded(transfer_syntax, b"\0")),
            _explicit(0x0012, b"UI", _padded(implementation, b"\0")),
            _explicit(0x0013, b"SH", _padded(version, b" ")),
        )
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


class StagedInstance:
    """The temporary file one C-STORE's dataset streams into (see the module doc).

    The first :data:`HEAD_BYTES` of the file are also kept in memory (:attr:`head`): the header is parsed
    from them (:mod:`scp.header`) rather than read back from disk. A large file's data is flushed to disk
    in the background every :data:`SYNC_AHEAD_BYTES` while it arrives, so that little is left for the
    fsync before the response.

    ``with_file_meta=False``: the bytes written are a whole PS3.10 file already (a STOW-RS part), kept as
    received; the UIDs are then unknown here and may be empty.
    """

    def __init__(
        self,
        store: InstanceStore,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        limits: StoreLimits,
        *,
        with_file_meta: bool = True,
    ) -> None:
        self.limits = limits
        self.sop_class, self.sop_instance = sop_class, sop_instance
        self.transfer_syntax = transfer_syntax
        self.with_file_meta = with_file_meta
        self.refused: StoreRefused | None = None
        self.size = 0  # dataset bytes received (what max_dataset_bytes bounds)
        self.written = 0  # bytes of the file: preamble and File Meta included
        self.head = bytearray()
        self._digest = hashlib.sha256()
        self._store = store
        self.path: Path | None = None
        self._file: Any = None
        self._unsynced = 0  # bytes in the file since the last background flush began
        self._syncing: Future[None] | None = None
        try:
            free = shutil.disk_usage(store.incoming).free
        except OSError as exc:
            self.refused = StoreRefused("storage_error", f"cannot check free space: {exc.strerror}")
            return
        if free < limits.min_free_bytes:
            self.refused = StoreRefused("disk_full", f"{free} bytes free, the floor is {limits.min_free_bytes}")
            return
        # Created here, on the event loop, as the command arrives: created in the thread pool instead (at
        # the end, or in the background), the fsyncs after it measured slower, a net loss.
        try:
            fd, self.path = store.new_staged_file()
            self._file = os.fdopen(fd, "wb")
            if with_file_meta:
                meta = file_meta(
                    sop_class, sop_instance, transfer_syntax, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
                )
                self._write(b"\x00" * 128 + b"DICM" + meta)
        except OSError as exc:
            self._fail(StoreRefused("storage_error", f"cannot stage: {exc.strerror}"))
        except Exception as exc:  # noqa: BLE001 - the request's UIDs did not encode as File Meta
            self._fail(StoreRefused("malformed_uid", f"request UIDs unusable ({type(exc).__name__})"))

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._digest.update(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.written += len(data)
        self._unsynced += len(data)
        if self._unsynced >= SYNC_AHEAD_BYTES and (self._syncing is None or self._syncing.done()):
            self._unsynced = 0
            self._file.flush()
            self._syncing = self._store.sync_ahead(self._file.fileno())

    def write(self, chunk: bytes) -> None:
        """A fragment's bytes, in order; ignored once the instance is refused."""
        if self.refused is not None:
            return
        self.size += len(chunk)
        if self.size > self.limits.max_dataset_bytes:
            self._fail(StoreRefused("too_large", f"dataset past {self.limits.max_dataset_bytes} bytes"))
            return
        try:
            self._write(chunk)
        except OSError as exc:
            self._fail(StoreRefused("storage_error", f"cannot write: {exc.strerror}"))

    def finish(self) -> Path:
        """The complete staged file (flushed to the OS, not yet to disk); raises the refusal if any."""
        if self.refused is not None:
            raise self.refused
        assert self._file is not None and self.path is not None
        try:
            self._file.close()
        except OSError as exc:
            self._fail(StoreRefused("storage_error", f"cannot write: {exc.strerror}"))
            raise self.refused from None  # type: ignore[misc]
        return self.path

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def _fail(self, refusal: StoreRefused) -> None:
        self.refused = refusal
        self.head = bytearray()
        self.discard()

    def discard(self) -> None:
        """Remove the partial file (an abort, a refusal, a failed commit)."""
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _inflated_copy(staged: Path, store: InstanceStore, limit: int) -> Path:
    """A temporary copy of a deflated instance with its dataset inflated, never past ``limit`` bytes.

    pydicom inflates a whole deflated dataset in memory before anything can be checked; this does it in
    chunks, into a file, and gives up at the bound.
    """
    with staged.open("rb") as source:
        source.seek(132)  # preamble and "DICM"; then (0002,0000) UL, explicit VR: its value at bytes 8-11
        group_length = int.from_bytes(source.read(12)[8:12], "little")
        source.seek(132 + 12 + group_length)
        # Only for the parse: explicit VR little endian once inflated.
        fd, name = tempfile.mkstemp(dir=store.incoming, suffix=".inflated")
        out_path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                meta = file_meta("1.2", "1.2", EXPLICIT_LITTLE, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION)
                out.write(b"\x00" * 128 + b"DICM" + meta)
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                written = 0
                while chunk := source.read(_INFLATE_CHUNK):
                    data = inflater.decompress(chunk, _INFLATE_CHUNK)
                    while True:
                        written += len(data)
                        if written > limit:
                            raise StoreRefused("inflates_too_large", f"inflates past {limit} bytes")
                        out.write(data)
                        if not inflater.unconsumed_tail:
                            break
                        data = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
        except zlib.error:
            out_path.unlink(missing_ok=True)
            raise StoreRefused("unparseable", "deflated data does not inflate") from None
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
    return out_path


def read_header(
    staged: Path,
    transfer_syntax: str,
    size: int,
    store: InstanceStore,
    limits: StoreLimits,
    head: bytes | bytearray | None = None,
) -> Dataset:
    """The dataset without pixel data, checked for defects pydicom reads past.

    ``head``: the file's first bytes, when its File Meta is the receiver's own: parsed in memory where
    :func:`scp.header.parse_head` can (the same result as reading the file, without reading it).
    """
    parsed_path, parsed_syntax = staged, transfer_syntax
    dataset = parse_head(head, transfer_syntax, size) if head is not None else None
    if dataset is None and transfer_syntax == DEFLATED:
        parsed_path, parsed_syntax = _inflated_copy(staged, store, limits.max_inflated_bytes), EXPLICIT_LITTLE
    try:
        if dataset is None:
            dataset = dcmread(parsed_path, stop_before_pixels=True, defer_size=DEFER_SIZE)
        defect = parse_defect(dataset, parsed_syntax, parsed_path.stat().st_size if parsed_path != staged else size)
    except StoreRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed input
        raise StoreRefused("unparseable", type(exc).__name__) from None
    finally:
        if parsed_path != staged:
            parsed_path.unlink(missing_ok=True)
    if defect:
        raise StoreRefused("unparseable", defect)
    return dataset


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the association knows of one C-STORE besides its bytes."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    calling_ae: str
    called_ae: str
    peer_address: str


def identify(
    staged: StagedInstance, path: Path, arrival: Arrival, store: InstanceStore, limits: StoreLimits
) -> tuple[InstanceEvent, Path]:
    """Step 2: the instance event and the path it goes to, or :class:`StoreRefused`."""
    size = staged.written  # the file's size, known without a stat
    head = staged.head if staged.with_file_meta else None  # a STOW-RS part's File Meta is the sender's
    dataset = read_header(path, arrival.transfer_syntax, size, store, limits, head)
    try:
        identity = check_identity(dataset, arrival.sop_class, arrival.sop_instance)
    except InstanceRejected as exc:
        raise StoreRefused(exc.reason, exc.detail) from None
    try:
        target = store.path_for(identity.study_uid, identity.series_uid, identity.sop_instance_uid)
    except StorageError as exc:
        raise StoreRefused("storage_error", str(exc)) from None
    reception = Reception(
        transfer_syntax_uid=arrival.transfer_syntax,
        calling_ae=arrival.calling_ae,
        called_ae=arrival.called_ae,
        peer_address=arrival.peer_address,
        received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        stored_path=str(target),
        size=size,
        sha256=staged.sha256,
    )
    try:
        event = instance_event(dataset, identity, reception, limits.event)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed values
        raise StoreRefused("unparseable", type(exc).__name__) from None
    if len(encode_instance_event(event)) > limits.max_event_bytes:
        raise StoreRefused("event_too_large", "the instance event does not fit one Kafka message")
    return event, target


def commit_durably(
    path: Path, event: InstanceEvent, target: Path, store: InstanceStore, outbox: Outbox
) -> tuple[StoredInstance, int]:
    """Step 3: outbox row and file durable, in that order, under the SOP's placement lock. Returns the row."""
    # The file's flush overlaps the outbox commit. On this machine's ext4 they still cost nearly the sum
    # (a new 10 KB file's fsync 0.25 ms, an outbox commit 0.21 ms, both at once 0.44-0.50 ms: each waits
    # for a journal commit), but never more. (Begun earlier, during the header's parse, the file's flush
    # was a journal commit of its own that the outbox's then waited behind: slower.)
    data_sync = store.start_sync(path)
    with store.placing(target) as placed_at_ns:
        instance = msgspec.structs.replace(event, placed_at_ns=placed_at_ns)
        try:
            row_id = outbox.add(instance, staged=path)
        except (sqlite3.Error, OSError) as exc:
            if data_sync is not None:
                data_sync.exception()  # let the flush finish before the caller deletes the staged file
            raise StoreRefused("outbox_error", f"{type(exc).__name__}: {exc}") from None
        try:
            stored = store.commit(path, target, instance.sha256, data_sync)
        except StorageError as exc:
            outbox.discard(row_id)
            raise StoreRefused("storage_error", str(exc)) from None
    if stored.duplicate or stored.replaced:
        # Known only after the store's locked comparison: correct the row before it is released.
        final = msgspec.structs.replace(instance, duplicate=stored.duplicate, replaced=stored.replaced)
        try:
            outbox.rewrite(row_id, final)
        except (sqlite3.Error, OSError) as exc:
            # The file is in place and the row holds a valid (merely unflagged) event: publish that.
            log.warning("C-STORE %s: could not flag the event (%s)", event.sop_instance_uid, exc)
    return stored, row_id


def account_stored(
    index: Any, metrics: Any, event: InstanceEvent, target: Path, stored: StoredInstance, via: str
) -> None:
    """After step 3, for C-STORE and STOW-RS alike: index the instance for Storage Commitment and count it.

    ``index``: :class:`scp.commitment.InstanceIndex` or None; ``metrics``: :class:`scp.metrics.ReceiverMetrics`.
    """
    if index is not None:
        try:
            index.record(event.sop_instance_uid, event.sop_class_uid, event.study_uid, str(target))
        except Exception as exc:  # noqa: BLE001 - the index only serves Storage Commitment: never fail a store
            log.warning("%s %s: not indexed for storage commitment (%s)", via, event.sop_instance_uid, exc)
    outcome = "duplicate" if stored.duplicate else "replaced" if stored.replaced else "new"
    metrics.instances_stored.labels(outcome=outcome).inc()
    metrics.bytes_stored.inc(stored.size)
