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


def test_faust_still_acknowledges_the_records_its_stream_skips_which_is_why_the_delivery_gate_exists() -> None:
    # Stream._py_aiter: a record read while flow control is suspended or from an older fetch generation
    # becomes ``skipped_value`` and is acknowledged in the ``finally`` block. Should this change, the
    # gate (agents/delivery.py) still holds, but its module doc needs a look.
    source = inspect.getsource(faust.streams.Stream._py_aiter)
    assert "message.generation_id != self.app.consumer_generation_id" in source
    assert "do_ack or value is skipped_value" in source


def test_every_acknowledgement_passes_through_the_consumer_ack_the_gate_intercepts(tmp_path: Path) -> None:
    app = faust.App("pin-ack", broker="kafka://localhost:1", store="memory://", datadir=str(tmp_path))
    consumer = app.consumer
    refused: list[int] = []

    def refuse(message: object) -> bool:
        refused.append(getattr(message, "offset", -1))
        return False

    consumer_view.intercept_acks(consumer, refuse)
    message = faust.types.tuples.ConsumerMessage("t", 0, 7, 0.0, 0, [], b"k", b"v", None)
    assert message.ack(consumer) is False  # Message.ack -> on_final_ack -> Consumer.ack
    assert refused == [7] and message.acked is False
