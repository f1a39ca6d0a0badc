"""The aggregator's Faust tables: study state split so one new instance writes a few small values.

=================  ===================  ==========================================================
table              key                  value
=================  ===================  ==========================================================
study-headers      ``<study>``          :class:`domain.study_state.StudyHeader` (JSON, ~1 KB)
study-series       ``<study>|<series>`` :class:`domain.study_state.SeriesInfo`, written when it changes
study-instances    ``<study>|<sop>``    :class:`domain.study_state.InstanceInfo`, the de-duplication key
study-pending      ``<study>``          ``b"1"`` while a revision is open or sealed: what the timer scans
=================  ===================  ==========================================================

Partitioning: every row lives on its study's partition (the partition of imaging.raw carrying the
study), although ``<study>|<sop>`` key bytes would hash elsewhere; Faust restores each changelog
partition into the same partition's RocksDB. Every write happens in the aggregator agent while it
handles a message of that study, through :class:`tables.store.TableStore` (changelog acknowledged,
then RocksDB). Reading one study's children is a prefix scan of that partition's database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import faust

from app.settings import Settings
from domain import study_state as state
from tables.store import TableStore, Write

PENDING_MARK = b"1"


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    # Faust's defaults (2 GiB cache, 64 MiB write buffers) apply per partition database: 4 tables x 8
    # partitions would reserve gigabytes. A fresh dict per table: the store pops keys from it.
    return {
        "write_buffer_size": settings.aggregator_rocksdb_write_buffer_bytes,
        "block_cache_size": settings.aggregator_rocksdb_block_cache_bytes,
        "block_cache_compressed_size": settings.aggregator_rocksdb_block_cache_bytes,
        "driver": "rocksdict",
    }


def declare_table(app: faust.App, settings: Settings, name: str, help_text: str) -> faust.Table:
    return app.Table(
        name,
        partitions=settings.topic_partitions,
        key_type=bytes,  # bytes types make Faust use the raw codec: values are domain-encoded JSON
        value_type=bytes,
        options=rocksdb_options(settings),
        help=help_text,
    )


class StudyTables:
    """The four tables, declared once on the app, with typed accessors and write builders."""

    def __init__(self, app: faust.App, settings: Settings, store: TableStore) -> None:
        self.store = store
        self.headers = declare_table(
            app, settings, "study-headers", "One header per study: attributes, counts, clocks, status, revision."
        )
        self.series = declare_table(app, settings, "study-series", "Series attributes keyed by study|series.")
        self.instances = declare_table(
            app, settings, "study-instances", "Instances keyed by study|sop: de-duplication and the ready list."
        )
        self.pending = declare_table(
            app, settings, "study-pending", "Studies with an open or sealed revision, scanned by the timer."
        )

    @property
    def all(self) -> tuple[faust.Table, ...]:
        return (self.headers, self.series, self.instances, self.pending)

    def changelog_topic_names(self) -> list[str]:
        return [t.changelog_topic.get_topic_name() for t in self.all]

    # --- reads (the study's partition) ---

    def header(self, study_uid: str, partition: int) -> state.StudyHeader | None:
        raw = self.store.get(self.headers, partition, state.study_key(study_uid))
        return state.decode_header(raw) if raw is not None else None

    def series_info(self, study_uid: str, series_uid: str, partition: int) -> state.SeriesInfo | None:
        raw = self.store.get(self.series, partition, state.child_key(study_uid, series_uid))
        return state.decode_series(raw) if raw is not None else None

    def instance_info(self, study_uid: str, sop_uid: str, partition: int) -> state.InstanceInfo | None:
        raw = self.store.get(self.instances, partition, state.child_key(study_uid, sop_uid))
        return state.decode_instance(raw) if raw is not None else None

    def pending_header(self, study_uid: str, partition: int) -> state.StudyHeader | None:
        """The header of a study :meth:`pending_studies` listed, or None once its partition is closed.

        For the timer, which runs beside the agent: a partition revoked meanwhile must not be reopened.
        """
        raw = self.store.get_if_open(self.headers, partition, state.study_key(study_uid))
        return state.decode_header(raw) if raw is not None else None

    def pending_studies(self) -> Iterator[tuple[str, int]]:
        """(study, partition) of the studies with an open or sealed revision on the partitions this worker
        actively owns (not standbys), so the timer reads each header straight from its partition."""
        for key, partition in self.store.owned_keys(self.pending):
            uid = state.study_uid_of_key(key)
            if uid is not None:
                yield uid, partition

    def study_series(self, study_uid: str, partition: int) -> list[state.SeriesInfo]:
        prefix = state.child_prefix(study_uid)
        return [state.decode_series(v) for _, v in self.store.scan_prefix(self.series, partition, prefix)]

    def study_instances(self, study_uid: str, partition: int) -> Iterator[state.InstanceInfo]:
        prefix = state.child_prefix(study_uid)
        return (state.decode_instance(v) for _, v in self.store.scan_prefix(self.instances, partition, prefix))

    def local_headers(self) -> Iterator[bytes]:
        """Raw headers of this worker's active partitions (for the web view)."""
        for _, raw, _ in self.store.owned_items(self.headers):
            if raw is not None:
                yield raw

    # --- writes: built here, written by the aggregator in one acknowledged batch ---

    def instance_writes(self, study_uid: str, partition: int, instances: Iterable[state.InstanceInfo]) -> list[Write]:
        return [
            Write(self.instances, partition, state.child_key(study_uid, i.uid), state.encode_instance(i))
            for i in instances
        ]

    def study_writes(
        self, header: state.StudyHeader, series: Iterable[state.SeriesInfo], *, pending: bool | None
    ) -> list[Write]:
        """A study's series rows, then its header, then its pending mark (``None``: leave it as it is)."""
        uid, partition = header.study.uid, header.partition
        writes = [Write(self.series, partition, state.child_key(uid, s.uid), state.encode_series(s)) for s in series]
        writes.append(Write(self.headers, partition, state.study_key(uid), state.encode_header(header)))
        if pending is not None:
            writes.append(Write(self.pending, partition, state.study_key(uid), PENDING_MARK if pending else None))
        return writes

    def header_writes(self, header: state.StudyHeader) -> list[Write]:
        """The header, and the pending mark its status calls for (open or sealed: pending)."""
        still_pending = header.status in (state.StudyStatus.RECEIVING, state.StudyStatus.SEALED)
        return self.study_writes(header, (), pending=still_pending)

    def unpending_writes(self, study_uid: str, partition: int) -> list[Write]:
        return [Write(self.pending, partition, state.study_key(study_uid), None)]
