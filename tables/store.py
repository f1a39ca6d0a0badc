"""The table store: Faust tables on rocksdict, written so that the changelog always rebuilds what RocksDB holds.

Faust's own ``Table.__setitem__`` writes RocksDB first and queues the changelog record afterwards: a
worker killed in between keeps rows its changelog never got, and the next owner restoring from the
changelog (standby takeover, scale-out, a lost data directory) lacks them. Here a write is one batch:

1. every row's changelog record is handed to the producer,
2. the broker acknowledges all of them (acks=all),
3. only then are the rows written to RocksDB, in one write batch per table partition together with
   the changelog offset written up to (Faust's persisted offset: recovery reads on from there).

A worker killed before 3 restarts without the rows locally, and Faust's recovery reads them from the
changelog (whatever of them the broker had taken). RocksDB therefore never holds a row the changelog
lacks; the records that were in flight are replayed, and the domain's offsets make that replay exact.

This module is the only one that knows rocksdict's and Faust's store internals (``_db_for_partition``,
``_dbs``, ``offset_key``); ``tests/tables`` pins them on the versions in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP
from rocksdict import WriteBatch

from domain.errors import InfrastructureError

log = logging.getLogger(f"studystream.{__name__}")

# Testing: where a worker may be made to die (os._exit) inside a write, see Settings.aggregator_fault_point.
FAULT_AFTER_CHANGELOG_SEND = "after_changelog_send"
FAULT_AFTER_CHANGELOG_ACK = "after_changelog_ack"
FAULT_EXIT_STATUS = 70


@dataclass(frozen=True, slots=True)
class Write:
    """One row of one table partition: ``value`` None deletes it."""

    table: faust.Table
    partition: int
    key: bytes
    value: bytes | None


class StoreError(InfrastructureError):
    """RocksDB or the changelog refused a write: the worker stops without committing what it was handling."""


def _store(table: faust.Table) -> Any:
    return table.data


class TableStore:
    """Reads and acknowledged writes of Faust tables declared with ``key_type=bytes, value_type=bytes``."""

    def __init__(self, app: faust.App, fault_point: str = "", fault_after_writes: int = 1) -> None:
        self.app = app
        self.fault_point = fault_point
        self.fault_after_writes = fault_after_writes
        self.writes = 0

    # --- reads ---

    def get(self, table: faust.Table, partition: int, key: bytes) -> bytes | None:
        """A row of ``partition``; without Faust's layers (and the KeyError of every miss)."""
        return _store(table)._db_for_partition(partition).get(key)

    def get_if_open(self, table: faust.Table, partition: int, key: bytes) -> bytes | None:
        """Like :meth:`get`, but ``None`` for a partition this worker does not hold open (never reopening it)."""
        db = _store(table)._dbs.get(partition)
        return db.get(key) if db is not None else None

    def scan_prefix(self, table: faust.Table, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Rows of ``partition`` whose key starts with ``prefix``, in key order (RocksDB keys are sorted bytes)."""
        db = _store(table)._db_for_partition(partition)
        for key, value in db.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    def owned_keys(self, table: faust.Table) -> Iterator[tuple[bytes, int]]:
        """(key, partition) of every row on the partitions this worker actively owns (not its standbys)."""
        for key, _, partition in self.owned_items(table, values=False):
            yield key, partition

    def owned_items(self, table: faust.Table, *, values: bool = True) -> Iterator[tuple[bytes, bytes | None, int]]:
        """(key, value, partition) of every row on the partitions this worker actively owns."""
        store = _store(table)
        actives = self.app.assignor.assigned_actives()
        topic = table.changelog_topic.get_topic_name()
        for partition, db in list(store._dbs.items()):
            if TP(topic, partition) not in actives:
                continue
            if values:
                for key, value in db.items():
                    if key != store.offset_key:
                        yield key, value, partition
            else:
                for key in db.keys():
                    if key != store.offset_key:
                        yield key, None, partition

    def owned_partitions(self, table: faust.Table) -> list[int]:
        topic = table.changelog_topic.get_topic_name()
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic)

    # --- writes ---

    async def write(self, writes: Sequence[Write]) -> None:
        """Write ``writes`` durably: changelog records acknowledged first, then RocksDB (see the module doc)."""
        if not writes:
            return
        producer = self.app.producer
        self.writes += 1
        try:
            pending = [
                await producer.send(w.table.changelog_topic.get_topic_name(), w.key, w.value, w.partition, None, None)
                for w in writes
            ]
            self._maybe_fault(FAULT_AFTER_CHANGELOG_SEND)
            delivered = await asyncio.gather(*pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StoreError(f"changelog records not acknowledged: {type(exc).__name__}: {exc}") from exc
        self._maybe_fault(FAULT_AFTER_CHANGELOG_ACK)
        batches: dict[tuple[int, int], tuple[faust.Table, WriteBatch]] = {}
        offsets: defaultdict[tuple[int, int], int] = defaultdict(lambda: -1)
        for write, metadata in zip(writes, delivered, strict=True):
            slot = (id(write.table), write.partition)
            if slot not in batches:
                batches[slot] = (write.table, WriteBatch(raw_mode=True))
            batch = batches[slot][1]
            if write.value is None:
                batch.delete(write.key)
            else:
                batch.put(write.key, write.value)
            offsets[slot] = max(offsets[slot], metadata.offset)
        try:
            for slot, (table, batch) in batches.items():
                store = _store(table)
                # Faust's persisted offset, in the same atomic batch: recovery reads the changelog from there.
                batch.put(store.offset_key, str(offsets[slot]).encode())
                store._db_for_partition(slot[1]).write(batch)
        except Exception as exc:
            raise StoreError(f"RocksDB write failed: {type(exc).__name__}: {exc}") from exc

    def _maybe_fault(self, point: str) -> None:
        if self.fault_point == point and self.writes >= self.fault_after_writes:
            log.error("fault injection: exiting at %s", point)
            logging.shutdown()
            os._exit(FAULT_EXIT_STATUS)
