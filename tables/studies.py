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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import faust

from app.settings import Settings
from domain import study as domain

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

    def header(self, study_uid: str) -> domain.StudyHeader | None:
        raw = self.headers.get(domain.study_key(study_uid))
        return domain.decode_header(raw) if raw is not None else None

    def series_info(self, study_uid: str, series_uid: str) -> domain.SeriesInfo | None:
        raw = self.series.get(domain.child_key(study_uid, series_uid))
        return domain.decode_series(raw) if raw is not None else None

    def instance_info(self, study_uid: str, sop_uid: str) -> domain.InstanceInfo | None:
        raw = self.instances.get(domain.child_key(study_uid, sop_uid))
        return domain.decode_instance(raw) if raw is not None else None

    def pending_study_uids(self) -> Iterator[str]:
        """Studies with an open revision on the partitions this worker actively owns (not standbys)."""
        for key in self.pending.keys():
            yield key.decode("ascii")

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

    def put_update(self, update: domain.StudyUpdate) -> None:
        """Write what :func:`domain.study.apply_instance` changed; reassign, never mutate in place."""
        self.put_study(
            update.header,
            [update.instance] if update.instance is not None else [],
            [update.series] if update.series is not None else [],
            opened_revision=update.opened_revision,
        )

    def put_study(
        self,
        header: domain.StudyHeader,
        instances: Iterable[domain.InstanceInfo],
        series: Iterable[domain.SeriesInfo],
        *,
        opened_revision: bool,
    ) -> None:
        """Write a study's new instance and series rows, then its header (once for a whole batch).

        Instance rows go first: a crash between the writes leaves rows the header does not count yet,
        and the ready record is built from the rows, so no instance is lost.
        """
        uid = header.study.uid
        for instance in instances:
            self.instances[domain.child_key(uid, instance.uid)] = domain.encode_instance(instance)
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
