"""Modality Performed Procedure Step SOP Class as SCP (PS3.4 Annex F.7): N-CREATE and N-SET.

The rules are pure (:mod:`domain.mpps`); this module keeps the steps durable and answers. Every step
is one row of one SQLite file beside the outbox that all receiving processes share (a modality's
N-CREATE and its N-SETs may reach different processes), written in a transaction that holds SQLite's
write lock from the read to the commit, with ``synchronous=FULL`` when ``receiver_fsync`` is on: a
restart keeps every step, and no two N-SETs of one step interleave.

A step that ends (COMPLETED or DISCONTINUED) puts one ``performed_procedure_step`` record on
``imaging.raw`` through the outbox, after the study's earlier events, before the step's row commits:
a crash in between answers the N-SET with a failure, and the modality's repeat publishes the record
again (the aggregator takes a repeat as it takes the first).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from domain import mpps
from domain.events import encode_performed_procedure_step
from domain.uids import is_valid_uid
from scp import dimse

log = logging.getLogger(f"studystream.{__name__}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    uid TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    updated REAL NOT NULL
)
"""


class StepStore:
    """The MPPS instances, by SOP Instance UID (see the module doc). Thread-safe."""

    def __init__(self, path: Path, busy_timeout: float, *, fsync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def get(self, uid: str) -> mpps.MppsStep | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM steps WHERE uid = ?", (uid,)).fetchone()
        return mpps.decode_step(bytes(row[0])) if row is not None else None

    def change(
        self,
        uid: str,
        decide: Callable[[mpps.MppsStep | None], mpps.Outcome],
        before_commit: Callable[[mpps.Outcome], None],
    ) -> mpps.Outcome:
        """Read step ``uid``, ``decide`` its next state and keep it; ``before_commit`` runs inside the
        transaction (the outbox record of a step that ended): when it raises, nothing is kept."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock from the read on: other processes wait
            try:
                row = self._db.execute("SELECT value FROM steps WHERE uid = ?", (uid,)).fetchone()
                outcome = decide(mpps.decode_step(bytes(row[0])) if row is not None else None)
                if outcome.step is not None:
                    before_commit(outcome)
                    self._db.execute(
                        "INSERT OR REPLACE INTO steps VALUES (?, ?, ?)",
                        (uid, mpps.encode_step(outcome.step), time.time()),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return outcome

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class MppsAnswer:
    """What the N-CREATE-RSP / N-SET-RSP says."""

    status: int
    sop_instance_uid: str = ""
    comment: str = ""
    error_id: int | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _publish(deps: Any, calling_ae: str) -> Callable[[mpps.Outcome], None]:
    def publish(outcome: mpps.Outcome) -> None:
        if not outcome.final or outcome.step is None:
            return
        record = mpps.step_record(outcome.step, _now())
        deps.outbox.add_record(record.study_uid, encode_performed_procedure_step(record))
        deps.metrics.mpps_steps_ended.labels(status=record.status).inc()
        if record.truncated:
            log.warning(
                "MPPS %s from %s names more than %d instances (receiver_mpps_max_instances): published without "
                "completing study %s (its quiet period decides)",
                record.mpps_uid,
                calling_ae,
                len(record.sop_instance_uids),
                record.study_uid,
            )

    return publish


def mpps_response(deps: Any, command: dimse.Command, info: Dataset | None, calling_ae: str) -> bytes:
    """The encoded N-CREATE-RSP / N-SET-RSP of one request (:func:`mpps_request`)."""
    answer = mpps_request(deps, command, info, calling_ae)
    creating = int(command.CommandField) == dimse.N_CREATE_RQ
    operation = "N-CREATE" if creating else "N-SET"
    deps.metrics.mpps_requests.labels(operation=operation, status=f"0x{answer.status:04X}").inc()
    field = dimse.N_CREATE_RSP if creating else dimse.N_SET_RSP
    return dimse.response(
        field,
        command,
        answer.status,
        sop_instance=answer.sop_instance_uid or None,
        error_comment=answer.comment,
        error_id=answer.error_id,
    )


def mpps_request(deps: Any, command: dimse.Command, info: Dataset | None, calling_ae: str) -> MppsAnswer:
    """N-CREATE or N-SET of a Modality Performed Procedure Step (in the receiver's thread pool): the answer.

    ``info`` is the request's dataset, ``None`` when it was too large or did not decode.
    """
    creating = int(command.CommandField) == dimse.N_CREATE_RQ
    keyword = "Affected" if creating else "Requested"
    sop_class = str(command.get(f"{keyword}SOPClassUID", "") or "").strip()
    uid = str(command.get(f"{keyword}SOPInstanceUID", "") or "").strip()
    if sop_class != mpps.MPPS_SOP_CLASS:
        return MppsAnswer(mpps.NO_SUCH_SOP_CLASS)
    if creating and not uid:
        uid = str(generate_uid(prefix=None))  # a 2.25 UUID UID, returned in the response
    if not is_valid_uid(uid):
        return MppsAnswer(mpps.INVALID_OBJECT_INSTANCE, comment="SOP Instance UID is not a UID")
    operation = "N-CREATE" if creating else "N-SET"
    if info is None:
        return _answer(operation, uid, calling_ae, mpps.Outcome(mpps.PROCESSING_FAILURE), "dataset unreadable")
    change = mpps.read_change(info, deps.mpps_max_instances)
    if isinstance(change, mpps.Refusal):
        return _answer(operation, uid, calling_ae, mpps.Outcome(change.status, refusal=change))
    now = _now()
    if creating:

        def decide(step: mpps.MppsStep | None) -> mpps.Outcome:
            return mpps.create(step, uid, change, calling_ae, now)
    else:

        def decide(step: mpps.MppsStep | None) -> mpps.Outcome:
            return mpps.update(step, change, now)

    try:
        outcome = deps.mpps.change(uid, decide, _publish(deps, calling_ae))
    except Exception as exc:  # SQLite, the outbox, a corrupt row: the modality may try again
        log.exception("MPPS %s %s from %s failed: %s", operation, uid, calling_ae, type(exc).__name__)
        return MppsAnswer(mpps.PROCESSING_FAILURE, uid, comment="the receiver could not keep the step")
    return _answer(operation, uid, calling_ae, outcome)


def _answer(operation: str, uid: str, calling_ae: str, outcome: mpps.Outcome, comment: str = "") -> MppsAnswer:
    refusal = outcome.refusal
    step = outcome.step
    if refusal is None and outcome.status == mpps.SUCCESS and step is not None:
        log.info(
            "MPPS %s %s from %s: %s, study %s, %d instance(s) named",
            operation,
            uid,
            calling_ae,
            step.status,
            step.study_uid,
            len(step.sop_instance_uids),
        )
        return MppsAnswer(mpps.SUCCESS, uid)
    comment = refusal.comment if refusal is not None else comment
    log.warning("MPPS %s %s from %s refused: status 0x%04X (%s)", operation, uid, calling_ae, outcome.status, comment)
    return MppsAnswer(outcome.status, uid, comment, refusal.error_id if refusal is not None else None)
