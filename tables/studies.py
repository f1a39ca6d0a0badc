"""The aggregator's Faust tables: study state split so one new instance writes a few small values.

=================  ===================  ==========================================================
table              key                  value
=================  ===================  ==========================================================
study-headers      ``<study>``          :class:`domain.study.StudyHeader` (JSON, ~1 KB)
study-series       ``<study>|<series>`` :class:`domain.study.SeriesInfo`, written when it changes
study-instances    ``<study>|<sop>``    :class:`domain.study.InstanceInfo`, the de-duplication key
study-pending      ``<study>``          ``b"1"`` while a revision is open: what the timer scans
=================  ===================  ==========================================================

Partitioning: Faust stores (and changelogs) a table write in the partition of the event being
processed, not by hashing the table key, and restores each changelog partition into the same
partition's RocksDB. So ``<study>|<sop>`` rows live on the study's partition although their key
bytes would hash elsewhere. Every write therefore happens in the aggregator agent while it handles a
message keyed by that study (imaging.raw or the check topic, co-partitioned). Reading one study's
children is a RocksDB prefix scan of that partition's database (:meth:`StudyTables.children`).

Hot path (issue 4): the aggregator reads rows of the partition it is handling straight from that
partition's RocksDB (:meth:`StudyTables.read`), and writes instance rows, one per new instance, with
:meth:`StudyTables.put_instances`: one RocksDB write batch per partition and one changelog record per
row handed to the producer directly. Through ``Table.__setitem__`` each row cost a FutureMessage, a
trip through Faust's producer buffer and a RocksDB write of the persisted offset (a quarter of the
worker's CPU). The records are the same (key, value, partition) Faust would send, so recovery,
standbys and the commit (Faust flushes the producer before committing offsets) are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import faust
from faust.types import TP
from rocksdict import WriteBatch

from app.settings import Settings
from domain import study as domain

log = logging.getLogger(__name__)

PENDING_MARK = b"1"


def _rocksdb_options(settings: Settings) -> dict[str, Any]:
    # Faust's defaults (2 GiB cache, 64 MiB write buffers) apply per partition database: 4 tables x 8
    # partitions would reserve gigabytes. A fresh dict per table: the store pops keys from it.
    return {
        "write_buffer_size": settings.aggregator_rocksdb_write_buffer_bytes,
        "block_cache_size": settings.aggregator_rocksdb_block_cache_bytes,
        "block_cache_compressed_size": settings.aggregator_rocksdb_block_cache_bytes,
        "driver": "rocksdict",
    }


class StudyTables:
    """The four tables, declared once on the app, with typed accessors."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self._crashing: set[asyncio.Future[None]] = set()

        def table(name: str, help_text: str) -> faust.Table:
            return app.Table(
                name,
                partitions=settings.topic_partitions,
                key_type=bytes,  # bytes types make Faust use the raw codec: values are domain-encoded JSON
                value_type=bytes,
                options=_rocksdb_options(settings),
                help=help_text,
            )

        self.headers = table("study-headers", "One header per study: attributes, counts, clocks, status, revision.")
        self.series = table("study-series", "Series attributes keyed by study|series.")
        self.instances = table("study-instances", "Instances keyed by study|sop: de-duplication and the ready list.")
        self.pending = table("study-pending", "Studies with an open revision, scanned by the completeness timer.")

    def changelog_topic_names(self) -> list[str]:
        return [t.changelog_topic.get_topic_name() for t in (self.headers, self.series, self.instances, self.pending)]

    # --- reads (inside or outside the agent) ---

    def header(self, study_uid: str, partition: int | None = None) -> domain.StudyHeader | None:
        raw = self.read(self.headers, domain.study_key(study_uid), partition)
        return domain.decode_header(raw) if raw is not None else None

    def series_info(self, study_uid: str, series_uid: str, partition: int | None = None) -> domain.SeriesInfo | None:
        raw = self.read(self.series, domain.child_key(study_uid, series_uid), partition)
        return domain.decode_series(raw) if raw is not None else None

    def instance_info(self, study_uid: str, sop_uid: str, partition: int | None = None) -> domain.InstanceInfo | None:
        raw = self.read(self.instances, domain.child_key(study_uid, sop_uid), partition)
        return domain.decode_instance(raw) if raw is not None else None

    @staticmethod
    def read(table: faust.Table, key: bytes, partition: int | None) -> bytes | None:
        """A row of ``partition`` (the study's), or through Faust's ``Table.get`` when it is not given.

        With a partition this is what ``Table.get`` does under an event of that partition, without
        Faust's layers and the KeyError of every miss (each new instance is a miss).
        """
        if partition is None:
            return table.get(key)
        return table.data._db_for_partition(partition).get(key)

    def pending_header(self, study_uid: str, partition: int) -> domain.StudyHeader | None:
        """The header of a study :meth:`pending_studies` listed, or None once its partition is closed.

        For the timer, which runs beside the agent: a partition revoked meanwhile must not be reopened.
        """
        db = self.headers.data._dbs.get(partition)
        raw = db.get(domain.study_key(study_uid)) if db is not None else None
        return domain.decode_header(raw) if raw is not None else None

    def pending_studies(self) -> Iterator[tuple[str, int]]:
        """(study, partition) of the studies with an open revision on the partitions this worker actively
        owns (not standbys): what ``self.pending.keys()`` lists, with the partition, so the completeness
        timer reads each header straight from its partition (a tenth of the CPU with many small studies).
        """
        store = self.pending.data
        actives = self.app.assignor.assigned_actives()
        topic = self.pending.changelog_topic.get_topic_name()
        for partition, db in list(store._dbs.items()):
            if TP(topic, partition) in actives:
                for key in db.keys():
                    if key != store.offset_key:
                        yield key.decode("ascii"), partition

    def study_series(self, study_uid: str, partition: int) -> list[domain.SeriesInfo]:
        return [domain.decode_series(v) for v in self.children(self.series, partition, study_uid)]

    def study_instances(self, study_uid: str, partition: int) -> Iterator[domain.InstanceInfo]:
        return (domain.decode_instance(v) for v in self.children(self.instances, partition, study_uid))

    @staticmethod
    def children(table: faust.Table, partition: int, study_uid: str) -> Iterator[bytes]:
        """Values of ``<study>|*`` rows: a prefix scan of the partition's RocksDB (keys are sorted bytes).

        Faust's Table has no range read; this uses the rocksdict store's per-partition database.
        """
        prefix = domain.child_prefix(study_uid)
        db = table.data._db_for_partition(partition)
        for key, value in db.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield value

    # --- writes (only inside the aggregator agent, on the study's partition) ---

    async def put_instances(self, partition: int, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """Write instance rows (key, encoded value) of ``partition``: their changelog records, then RocksDB.

        Like ``Table.__setitem__`` under an event of that partition, minus its per-row overhead (see the
        module doc). The records are in the producer before this returns, so the offsets of the batch
        that produced them are committed only after the broker acknowledged them. Changelog first: if
        the worker dies in between, the rows are missing locally and the batch, processed again, writes
        them again (Faust's order, RocksDB first, would skip them as duplicates, never changelogged).
        """
        if not rows:
            return
        topic = self.instances.changelog_topic.get_topic_name()
        producer = self.app.producer
        delivered = None
        for key, value in rows:
            delivered = await producer.send(topic, key, value, partition, None, None)
        if delivered is not None:
            delivered.add_done_callback(self._on_delivered)
        batch = WriteBatch(raw_mode=True)
        for key, value in rows:
            batch.put(key, value)
        self.instances.data._db_for_partition(partition).write(batch)

    def _on_delivered(self, delivered: asyncio.Future[Any]) -> None:
        """Record the changelog offset written up to, as Faust does per record: recovery starts after it."""
        if delivered.cancelled() or delivered.exception() is not None:
            # The rows are lost unless their batch is processed again: stop the worker rather than let it
            # commit on (Faust's own changelog path only logs this). Already stopping: nothing to add.
            error = RuntimeError("changelog send cancelled") if delivered.cancelled() else delivered.exception()
            log.error("study-instances changelog record not delivered: %r", error)
            if not self.app.should_stop:
                self._crashing.add(asyncio.ensure_future(self.app.crash(error)))
            return
        metadata = delivered.result()
        self.instances.data.set_persisted_offset(TP(metadata.topic, metadata.partition), metadata.offset)

    def put_study(
        self,
        header: domain.StudyHeader,
        series: Iterable[domain.SeriesInfo],
        *,
        opened_revision: bool,
    ) -> None:
        """Write a study's new series rows, then its header (once for a whole batch), under its event.

        Instance rows (:meth:`put_instances`) go first: a crash between the writes leaves rows the
        header does not count yet, and the ready record is built from the rows, so no instance is lost.
        """
        uid = header.study.uid
        for item in series:
            self.series[domain.child_key(uid, item.uid)] = domain.encode_series(item)
        self.headers[domain.study_key(uid)] = domain.encode_header(header)
        if opened_revision:
            self.pending[domain.study_key(uid)] = PENDING_MARK

    def put_header(self, header: domain.StudyHeader) -> None:
        self.headers[domain.study_key(header.study.uid)] = domain.encode_header(header)
        if header.status is not domain.StudyStatus.RECEIVING:
            self.close_pending(header.study.uid)

    def close_pending(self, study_uid: str) -> None:
        key = domain.study_key(study_uid)
        if key in self.pending:
            del self.pending[key]
