"""Storage Commitment Push Model, SCP side (DICOM PS3.4 Annex J).

A sender names instances in an N-ACTION (Transaction UID + Referenced SOP Sequence). The receiver
looks each one up in its instance index (every stored instance, shared by the receiving processes),
answers the N-ACTION at once (:func:`commitment_action`), publishes commitment records per study on
``imaging.raw`` (through the outbox, after the study's instance events; in parts when long) so the
aggregator can call the study complete without waiting for the quiet period, and reports the outcome
with an N-EVENT-REPORT on the same association (:mod:`scp.association`).

The report goes to the sender's own listener when ``STUDYSTREAM_RECEIVER_COMMITMENT_PEERS`` names its
AE title (``AE=host:port``; the receiver requests that association and takes the SCP role by role
selection, PS3.4 J.3.3): what modalities that release right after the N-ACTION expect. Otherwise it
goes on the requesting association, which the sender must keep open until the result arrives.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance  # type: ignore[attr-defined]

from domain.errors import ConfigurationError
from domain.events import CommitmentRequest, encode_commitment_request
from domain.uids import is_valid_uid
from scp.dimse import Command

log = logging.getLogger(f"studystream.{__name__}")

REQUEST_COMMITMENT_ACTION = 1
ALL_COMMITTED_EVENT = 1
SOME_FAILED_EVENT = 2
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION = 0x0123
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
SUCCESS = 0x0000
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance (PS3.4 J.3.1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    stored_path TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class ReportRoute:
    """How to reach a sender that released its association before its Storage Commitment result."""

    peers: Mapping[str, tuple[str, int]]  # calling AE title → (host, port)
    our_ae_title: str
    timeout: float


def parse_commitment_peers(text: str) -> dict[str, tuple[str, int]]:
    """``AE=host:port, ...`` → {AE: (host, port)}; a malformed entry is a configuration error."""
    peers: dict[str, tuple[str, int]] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        ae, _, address = entry.partition("=")
        host, _, port = address.strip().rpartition(":")
        if not ae.strip() or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"STUDYSTREAM_RECEIVER_COMMITMENT_PEERS: {entry!r} is not AE=host:port")
        peers[ae.strip()] = (host.strip("[]"), int(port))
    return peers


@dataclass(frozen=True, slots=True)
class IndexedInstance:
    sop_class_uid: str
    study_uid: str
    stored_path: str


class InstanceIndex:
    """Every stored instance by SOP Instance UID, in one SQLite file all receiving processes share.

    Written without a flush of its own (an entry lost in a power cut makes a later commitment request
    report that instance as failed, and the sender sends it again: the safe side).
    """

    def __init__(self, path: Path, busy_timeout: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def record(self, sop_instance_uid: str, sop_class_uid: str, study_uid: str, stored_path: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?)",
                (sop_instance_uid, sop_class_uid, study_uid, stored_path),
            )

    def lookup(self, sop_instance_uids: Iterable[str]) -> dict[str, IndexedInstance]:
        found: dict[str, IndexedInstance] = {}
        with self._lock:
            for uid in dict.fromkeys(sop_instance_uids):
                row = self._db.execute(
                    "SELECT sop_class_uid, study_uid, stored_path FROM instances WHERE sop_instance_uid = ?", (uid,)
                ).fetchone()
                if row is not None:
                    found[uid] = IndexedInstance(*row)
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class CommitmentOutcome:
    """Which referenced instances are safely stored, which are not (with the failure reason)."""

    committed: list[tuple[str, str]] = field(default_factory=list)  # (SOP Class UID, SOP Instance UID)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # + Failure Reason
    studies: dict[str, list[str]] = field(default_factory=dict)  # study → committed SOP Instance UIDs


def judge_commitment(
    references: Iterable[tuple[str, str]],
    indexed: Mapping[str, IndexedInstance],
    is_stored: Callable[[str], bool],
) -> CommitmentOutcome:
    """Commit each referenced (SOP class, SOP instance) that is indexed with that class and whose file is there."""
    outcome = CommitmentOutcome()
    for sop_class, sop_instance in references:
        entry = indexed.get(sop_instance)
        if entry is None or not is_stored(entry.stored_path):
            outcome.failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
        elif entry.sop_class_uid != sop_class:
            outcome.failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
        else:
            outcome.committed.append((sop_class, sop_instance))
            outcome.studies.setdefault(entry.study_uid, []).append(sop_instance)
    return outcome


def build_report(transaction_uid: str, outcome: CommitmentOutcome) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information (PS3.4 J.3.3)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    committed = []
    for sop_class, sop_instance in outcome.committed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        committed.append(item)
    if committed:
        ds.ReferencedSOPSequence = committed
    if not outcome.failed:
        return ALL_COMMITTED_EVENT, ds
    failed = []
    for sop_class, sop_instance, reason in outcome.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.FailureReason = reason
        failed.append(item)
    ds.FailedSOPSequence = failed
    return SOME_FAILED_EVENT, ds


def read_request(info: Dataset | None) -> tuple[str, list[tuple[str, str]]] | None:
    """(Transaction UID, referenced (class, instance) pairs) of an N-ACTION, or None when malformed."""
    if info is None:
        return None
    transaction_uid = str(info.get("TransactionUID", "") or "").strip()
    references = []
    for item in info.get("ReferencedSOPSequence", []) or []:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            return None
        references.append((sop_class, sop_instance))
    if not is_valid_uid(transaction_uid) or not references:
        return None
    return transaction_uid, references


def commitment_records(
    transaction_uid: str, outcome: CommitmentOutcome, calling_ae: str, received_at: datetime, max_uids: int
) -> list[CommitmentRequest]:
    """One record per study, in parts of at most ``max_uids`` instances (each part fits one Kafka message)."""
    records = []
    for study_uid, sops in outcome.studies.items():
        chunks = [tuple(sops[i : i + max_uids]) for i in range(0, len(sops), max_uids)]
        records += [
            CommitmentRequest(
                study_uid=study_uid,
                transaction_uid=transaction_uid,
                sop_instance_uids=chunk,
                calling_ae=calling_ae,
                received_at=received_at.isoformat(timespec="milliseconds"),
                part=index,
                parts=len(chunks),
            )
            for index, chunk in enumerate(chunks, start=1)
        ]
    return records


@dataclass(frozen=True, slots=True)
class CommitmentReport:
    """The N-EVENT-REPORT a Storage Commitment request is answered with (PS3.4 J.3.3)."""

    transaction_uid: str
    event_type: int
    info: Dataset
    instance_uid: str = STORAGE_COMMITMENT_INSTANCE


def commitment_action(
    deps: Any, command: Command, info: Dataset | None, calling_ae: str
) -> tuple[int, CommitmentReport | None]:
    """N-ACTION of Storage Commitment: the status to answer at once, and the report to send afterwards.

    The commitment records (one per study, in parts) go to the outbox after the study's instance events.
    """
    metrics = deps.metrics
    if str(command.get("RequestedSOPClassUID", "")).strip() != str(StorageCommitmentPushModel):
        metrics.commitments.labels(outcome="refused").inc()
        return NO_SUCH_SOP_CLASS, None
    if int(command.get("ActionTypeID", 0) or 0) != REQUEST_COMMITMENT_ACTION:
        metrics.commitments.labels(outcome="refused").inc()
        return NO_SUCH_ACTION, None
    try:
        request = read_request(info)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many exception types on malformed input
        log.warning("storage commitment request unreadable (%s)", type(exc).__name__)
        request = None
    if request is None or deps.index is None:
        metrics.commitments.labels(outcome="refused").inc()
        return INVALID_ARGUMENT_VALUE, None
    transaction_uid, references = request
    outcome = judge_commitment(
        references, deps.index.lookup(sop for _, sop in references), lambda path: Path(path).is_file()
    )
    records = commitment_records(transaction_uid, outcome, calling_ae, datetime.now(UTC), deps.commitment_max_uids)
    for record in records:
        deps.outbox.add_record(record.study_uid, encode_commitment_request(record))
    metrics.commitments.labels(outcome="committed" if not outcome.failed else "some_failed").inc()
    log.info(
        "storage commitment %s from %s: %d committed, %d failed, %d study(ies)",
        transaction_uid,
        calling_ae,
        len(outcome.committed),
        len(outcome.failed),
        len(outcome.studies),
    )
    event_type, report = build_report(transaction_uid, outcome)
    return SUCCESS, CommitmentReport(transaction_uid, event_type, report)


def report_on_new_association(route: ReportRoute, peer_ae: str, report: CommitmentReport) -> bool:
    """Send the report on an association to the sender's own listener (we request it and act as SCP)."""
    host, port = route.peers[peer_ae]
    ae = AE(ae_title=route.our_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = route.timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    # We (the Storage Commitment SCP) request this association: role selection says we act as SCP.
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    try:
        assoc = ae.associate(host, port, ae_title=peer_ae, ext_neg=[role])
    except Exception as exc:  # noqa: BLE001 - unreachable peer, bad address
        log.info("storage commitment %s: cannot associate with %s (%s)", report.transaction_uid, peer_ae, exc)
        return False
    if not assoc.is_established:
        return False
    try:
        status, _ = assoc.send_n_event_report(
            report.info, report.event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
    except Exception as exc:  # noqa: BLE001 - the association may be gone meanwhile
        log.info("storage commitment %s: report failed (%s)", report.transaction_uid, type(exc).__name__)
        return False
    finally:
        assoc.release()
    return int(status.get("Status", 0xFFFF)) == SUCCESS
