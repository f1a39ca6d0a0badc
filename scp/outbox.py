"""The durable outbox: every event is committed here before its C-STORE is answered with success.

SQLite in WAL mode (``synchronous=FULL`` when fsync is on). A row is written *before* its file is renamed
into place and is held back from the publisher (in flight) until the handler releases it, so the
publisher never announces a file that is not there. A row also records the file's staged name, so that
after a crash :meth:`Outbox.recover` can finish a rename a power cut lost; it keeps the rows whose file is
then stored with the recorded SHA-256 and drops the rest (their sender got no success).
Published rows are deleted: the table holds exactly the unconfirmed events.

Each outbox is held by one process (an exclusive ``flock`` on ``<outbox>.lock``): two receivers on one
state directory would otherwise publish each other's in-flight rows. :meth:`Outbox.adopt` moves the
rows of an outbox nobody holds (a receiving slot that no longer runs) into this one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domain.errors import StudyStreamError
from domain.events import InstanceEvent, encode_instance_event
from scp.storage import fsync_path

log = logging.getLogger(f"studystream.{__name__}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    stored_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    value BLOB NOT NULL,
    created REAL NOT NULL,
    staged_path TEXT
)
"""

_QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    stored_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    value BLOB NOT NULL,
    created REAL NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
)
"""
# Shared by the outbox and the quarantine. ``staged_path`` (outbox only) is where the file was before its
# rename: a row whose rename a power cut lost is rolled forward from there (scp.storage's docstring).
_COLUMNS = "study_uid, sop_instance_uid, stored_path, sha256, value, created"
_OUTBOX_COLUMNS = f"{_COLUMNS}, staged_path"

_INSERT = f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - constant columns


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """An event the broker refused for good (too large, invalid, not authorised), kept with the reason."""

    id: int
    study_uid: str
    sop_instance_uid: str
    size: int
    reason: str
    quarantined_at: float


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    key: bytes
    value: bytes
    created: float  # time.time() when the event was committed


@dataclass(slots=True)
class _Waiting:
    """One add waiting for its group's commit."""

    row: tuple[str, str, str, str, bytes]
    staged_path: str | None
    row_id: int = 0
    done: bool = False
    error: BaseException | None = None


class OutboxInUse(StudyStreamError):
    """Another process holds this outbox."""


def _lock(path: Path) -> int:
    """Hold ``<path>.lock`` exclusively (released when the descriptor closes, or the process dies)."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutboxInUse(f"outbox {path} is used by another running receiver") from None
    return fd


class Outbox:
    """Thread-safe: association threads add and release, the publisher reads and confirms."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fsync = fsync
        self._lock_fd = _lock(path)
        # One connection shared under a lock: commits are serialised by SQLite anyway.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        _create_tables(self._db)
        self._lock = threading.Lock()
        self._group = threading.Condition()
        self._queue: list[_Waiting] = []
        self._committing = False
        self._in_flight: set[int] = set()
        # Rows whose file was never placed but whose delete failed (disk full, SQLite error): never
        # published, never blocking their study's later rows; deleted at the next confirm, or by recover().
        self._abandoned: set[int] = set()
        self._listeners: list[Callable[[], None]] = []

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)

    def adopt(self, other: Path) -> int:
        """Move every row of the outbox at ``other`` (held by no process) into this one; returns the count.

        The rows are committed here before ``other`` is deleted: a crash in between publishes them twice
        (the aggregator skips duplicates), never not at all.
        """
        lock_fd = _lock(other)
        try:
            source = sqlite3.connect(other, isolation_level=None)
            try:
                _create_tables(source)
                rows = source.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY id").fetchall()  # noqa: S608
            finally:
                source.close()
            if rows:
                with self._lock:
                    self._db.execute("BEGIN")
                    self._db.executemany(_INSERT, rows)
                    self._db.execute("COMMIT")
            for suffix in ("", "-wal", "-shm", "-journal"):
                other.with_name(other.name + suffix).unlink(missing_ok=True)
            if self.fsync:
                fsync_path(other.parent, directory=True)
            return len(rows)
        finally:
            other.with_name(other.name + ".lock").unlink(missing_ok=True)
            os.close(lock_fd)

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the releasing thread) whenever an event becomes publishable."""
        self._listeners.append(listener)

    def add(self, event: InstanceEvent, staged: Path | None = None) -> int:
        """Commit ``event`` durably; it stays in flight (unpublished) until :meth:`release`.

        ``staged``: where the event's file is until it is renamed to ``event.stored_path``.

        Group commit: the adds of every thread waiting at the same moment share one transaction, so one
        disk flush makes all of them durable (the receive rate with fsync approaches the rate without).
        """
        row = (event.study_uid, event.sop_instance_uid, event.stored_path, event.sha256, encode_instance_event(event))
        waiting = _Waiting(row, None if staged is None else str(staged))
        with self._group:
            self._queue.append(waiting)
            while not waiting.done:
                if self._committing:
                    self._group.wait()
                    continue
                self._committing, batch, self._queue = True, self._queue, []
                self._group.release()
                try:
                    self._commit_group(batch)
                finally:
                    self._group.acquire()
                    self._committing = False
                    self._group.notify_all()
        if waiting.error is not None:
            raise waiting.error
        return waiting.row_id

    def _commit_group(self, batch: list[_Waiting]) -> None:
        now = time.time()
        with self._lock:
            try:
                grouped = len(batch) > 1  # a lone statement is its own transaction: no BEGIN and COMMIT to run
                if grouped:
                    self._db.execute("BEGIN")
                for item in batch:
                    item.row_id = int(self._db.execute(_INSERT, (*item.row, now, item.staged_path)).lastrowid or 0)
                if grouped:
                    self._db.execute("COMMIT")
                self._in_flight.update(item.row_id for item in batch)
            except (sqlite3.Error, OSError) as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                for item in batch:
                    item.error = exc
            finally:
                for item in batch:
                    item.done = True

    def add_record(self, study_uid: str, value: bytes) -> int:
        """Commit a record that is no instance (no file): published after the study's earlier events."""
        with self._lock:
            cursor = self._db.execute(_INSERT, (study_uid, "", "", "", value, time.time(), None))
            row_id = int(cursor.lastrowid or 0)
        for listener in self._listeners:
            listener()
        return row_id

    def release(self, row_id: int) -> None:
        """The event's file is in place: let the publisher have it."""
        with self._lock:
            self._in_flight.discard(row_id)
        for listener in self._listeners:
            listener()

    def rewrite(self, row_id: int, event: InstanceEvent) -> None:
        """Replace the event of a row still in flight."""
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET value = ?, sha256 = ? WHERE id = ?",
                (encode_instance_event(event), event.sha256, row_id),
            )

    def discard(self, row_id: int) -> None:
        """The file could not be placed: the event must never be published (nor hold back its study's others)."""
        with self._lock:
            self._in_flight.discard(row_id)
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            except sqlite3.Error as exc:
                self._abandoned.add(row_id)
                log.warning("outbox row %d of a file never placed not deleted yet (%s): set aside", row_id, exc)

    def pending(self, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` publishable events in commit order.

        A study whose oldest unpublished event is still in flight is skipped entirely for this round, so
        every study's events go out in the order they were received.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, study_uid, value, created FROM outbox ORDER BY id LIMIT ?",
                (limit + len(self._in_flight) + len(self._abandoned),),
            ).fetchall()
            in_flight, abandoned = set(self._in_flight), set(self._abandoned)
        blocked: set[str] = set()
        entries: list[OutboxEntry] = []
        for row_id, study_uid, value, created in rows:
            if row_id in abandoned:
                continue
            if row_id in in_flight or study_uid in blocked:
                blocked.add(study_uid)
                continue
            entries.append(OutboxEntry(row_id, study_uid.encode("ascii"), bytes(value), created))
            if len(entries) >= limit:
                break
        return entries

    def confirm(self, row_ids: list[int]) -> None:
        """The broker has these events (acks=all): forget them."""
        if not row_ids:
            return
        with self._lock:
            # No flush of its own: a confirmation lost in a power cut only publishes the events again
            # (duplicates are allowed), and the next add's flush makes it durable anyway. A flush here
            # would hold the lock, and every association's add, for a disk round trip.
            if self.fsync:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                done = [*row_ids, *self._abandoned]
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id in done])
                self._db.execute("COMMIT")
                self._abandoned.clear()
            finally:
                if self.fsync:
                    self._db.execute("PRAGMA synchronous=FULL")

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def quarantine(self, row_id: int, reason: str) -> None:
        """Move a row the broker refused for good out of the way of the rows after it."""
        with self._lock:
            move_to_quarantine(self._db, row_id, reason)

    def quarantine_depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])

    def recover(self, settle: Callable[[Path, Path | None, str], bool]) -> tuple[int, int]:
        """At start-up: keep the rows whose file ``settle`` finds in place, drop the others. Returns (kept, dropped).

        ``settle(stored, staged, sha256)``: :meth:`scp.storage.InstanceStore.settle`. Of the rows of one
        target, the newest whose file can be put in place wins (rolled forward if need be); the rows with
        its bytes are kept, the others dropped (replaced, or never placed: their sender got no success).
        """
        with self._lock:
            rows = self._db.execute("SELECT id, stored_path, staged_path, sha256 FROM outbox ORDER BY id").fetchall()
        by_target: dict[str, list[tuple[int, str | None, str]]] = {}
        for row_id, path, staged, sha256 in rows:
            if path:  # rows without a file (commitment records) are kept as they are
                by_target.setdefault(path, []).append((row_id, staged, sha256))
        dropped: list[int] = []
        for path, versions in by_target.items():
            placed = next(
                (sha256 for _, staged, sha256 in reversed(versions) if settle(Path(path), _path(staged), sha256)),
                None,
            )
            dropped.extend(row_id for row_id, _, sha256 in versions if sha256 != placed)
        if dropped:
            with self._lock:
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id in dropped])
        return len(rows) - len(dropped), len(dropped)


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


# --- The quarantine, also for `studystream receiver quarantine` (another process: no outbox lock) ---


def move_to_quarantine(db: sqlite3.Connection, row_id: int, reason: str) -> None:
    db.execute("BEGIN")
    db.execute(
        f"INSERT INTO quarantine (id, {_COLUMNS}, reason, quarantined_at) "  # noqa: S608 - constant columns
        f"SELECT id, {_COLUMNS}, ?, ? FROM outbox WHERE id = ?",
        (reason[:500], time.time(), row_id),
    )
    db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
    db.execute("COMMIT")


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    _create_tables(db)
    return db


def _create_tables(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an outbox of an earlier version up to this schema."""
    db.execute(_SCHEMA)
    db.execute(_QUARANTINE_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if "staged_path" not in columns:
        db.execute("ALTER TABLE outbox ADD COLUMN staged_path TEXT")


def list_quarantine(path: Path) -> list[QuarantinedRow]:
    db = _open(path)
    try:
        rows = db.execute(
            "SELECT id, study_uid, sop_instance_uid, length(value), reason, quarantined_at FROM quarantine ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [QuarantinedRow(*row) for row in rows]


def retry_quarantine(path: Path, row_ids: list[int] | None) -> int:
    """Move quarantined rows (all when ``row_ids`` is None) back to the outbox; the publisher sends them again."""
    db = _open(path)
    try:
        chosen = [r.id for r in list_quarantine(path)] if row_ids is None else row_ids
        moved = 0
        db.execute("BEGIN")
        for row_id in chosen:
            cursor = db.execute(
                f"INSERT INTO outbox ({_COLUMNS}) SELECT {_COLUMNS} FROM quarantine WHERE id = ?",  # noqa: S608
                (row_id,),
            )
            if cursor.rowcount:
                db.execute("DELETE FROM quarantine WHERE id = ?", (row_id,))
                moved += 1
        db.execute("COMMIT")
    finally:
        db.close()
    return moved
