"""The private attributes of Faust and rocksdict the adapters use, pinned on the installed versions:
an upgrade that renames one fails here, not in production."""

from __future__ import annotations

import inspect
from pathlib import Path

import faust
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from agents import consumer as consumer_view


def test_the_consumer_internals_the_watchdog_reads_exist(tmp_path: Path) -> None:
    app = faust.App("pin-consumer", broker="kafka://localhost:1", store="memory://", datadir=str(tmp_path))
    consumer = app.consumer  # built lazily, no connection
    tp = TP("t", 0)
    assert consumer_view.committed_offset(consumer, tp) is None
    assert consumer_view.is_paused(consumer, tp) is False
    assert consumer_view.is_active(consumer, tp) is False
    for name in ("_committed_offset", "_paused_partitions", "_active_partitions", "_unacked_messages"):
        assert hasattr(consumer, name), name


def test_the_rocksdict_store_internals_the_table_store_uses_exist() -> None:
    for name in ("_db_for_partition", "offset_key", "persisted_offset", "apply_changelog_batch"):
        assert hasattr(RocksDBStore, name), name
    assert "self._dbs" in inspect.getsource(RocksDBStore.__init__)  # the open partition databases, by partition
    assert RocksDBStore.offset_key == b"__faust\0offset__"
