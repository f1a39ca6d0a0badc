"""Roll-forward placement: success before the target directory's fsync, and what a power cut leaves behind.

A SIGKILL keeps the page cache, so it cannot show what a power cut loses. These tests build the state a
cut can leave by hand (the rename undone: the bytes under the staged name only, the row durable) and
check that recovery finishes the placement, and that the owed directory fsync is paid before publishing.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scp.storage
from app.settings import Settings
from scp.metrics import ReceiverMetrics
from scp.outbox import Outbox
from scp.publisher import Publisher
from scp.storage import InstanceStore, file_sha256
from tests.conftest import free_port, unique_uid, wait_for
from tests.scp.conftest import make_dataset, read_events, storescu, write_dataset
from tests.scp.test_publisher import ScriptedProducer
from tests.scp.test_units import _event, file_sha256_of


@pytest.fixture
def synced_dirs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every directory scp.storage fsyncs, in order."""
    calls: list[Path] = []
    real = scp.storage.fsync_path

    def recording(path: Path, directory: bool = False) -> None:
        if directory:
            calls.append(Path(path))
        real(path, directory)

    monkeypatch.setattr(scp.storage, "fsync_path", recording)
    return calls


def _settled_spare(store: InstanceStore, data: bytes) -> Path:
    """A staged file taken from the spares created ahead (their directory entry fsynced), holding ``data``."""
    fd, first = store.new_staged_file()  # created now; the spares follow in the background
    os.close(fd)
    first.unlink()
    wait_for(lambda: len(store._spares) == 4, 10, what="spares created ahead")
    fd, staged = store.new_staged_file()
    os.write(fd, data)
    os.close(fd)
    return staged


def test_a_settled_spare_is_placed_without_its_directory_fsync_which_is_paid_once_later(
    tmp_path: Path, synced_dirs: list[Path]
) -> None:
    store = InstanceStore(tmp_path / "store", fsync=True)
    store.prepare()
    a = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    b = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.6")
    a.parent.mkdir(parents=True)
    staged_a, staged_b = _settled_spare(store, b"a"), _settled_spare(store, b"b")
    assert store.incoming in synced_dirs  # the spares' own names were made durable when they were created
    synced_dirs.clear()

    store.commit(staged_a, a, file_sha256_of(b"a", tmp_path))
    store.commit(staged_b, b, file_sha256_of(b"b", tmp_path))
    assert a.read_bytes() == b"a" and b.read_bytes() == b"b"
    assert a.parent not in synced_dirs  # owed, not paid, before the response

    store.sync_placed()
    assert synced_dirs.count(a.parent) == 1  # one fsync for both files of the series
    synced_dirs.clear()
    store.sync_placed()
    # Nothing owed any more (spares refilled meanwhile in the background fsync only their own directory).
    assert [directory for directory in synced_dirs if directory != store.incoming] == []
    store.close()


def test_a_file_created_on_demand_is_placed_with_its_directory_fsync(tmp_path: Path, synced_dirs: list[Path]) -> None:
    store = InstanceStore(tmp_path / "store", fsync=True)
    store.prepare()
    target = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    target.parent.mkdir(parents=True)
    store.commit(store.stage_bytes(b"x"), target, file_sha256_of(b"x", tmp_path))  # its name was never fsynced
    assert target.parent in synced_dirs
    store.close()


def test_a_failed_directory_fsync_stays_owed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = InstanceStore(tmp_path / "store", fsync=True)
    store.prepare()
    target = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    target.parent.mkdir(parents=True)
    store.commit(_settled_spare(store, b"x"), target, file_sha256_of(b"x", tmp_path))

    def failing(path: Path, directory: bool = False) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(scp.storage, "fsync_path", failing)
    with pytest.raises(OSError):
        store.sync_placed()
    assert store._unsynced_dirs == {target.parent}
    monkeypatch.undo()
    store.sync_placed()
    assert store._unsynced_dirs == set()
    store.close()


def _power_cut_state(tmp_path: Path, rows: list[tuple[bytes, bool]], on_disk: bytes | None) -> tuple[Path, Path, Path]:
    """An outbox whose rows (bytes, staged file survived) all place one SOP Instance; ``on_disk`` is what the
    target holds after the cut (None: nothing). Returns (outbox path, store root, target)."""
    root = tmp_path / "store"
    store = InstanceStore(root, fsync=True)
    store.prepare()
    target = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    target.parent.mkdir(parents=True)
    if on_disk is not None:
        target.write_bytes(on_disk)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for n, (data, survived) in enumerate(rows):
        staged = store.incoming / f"1-{n}.s.dcm"
        if survived:
            staged.write_bytes(data)
        row_id = outbox.add(_event("1.2.3", "1.2.3.4.5", target, file_sha256_of(data, tmp_path)), staged=staged)
        outbox.release(row_id)
    outbox.close()
    store.close()
    return tmp_path / "outbox.sqlite", root, target


def _recover(outbox_file: Path, root: Path) -> tuple[tuple[int, int], list[str], InstanceStore]:
    store = InstanceStore(root, fsync=True)
    outbox = Outbox(outbox_file)
    counts = outbox.recover(store.settle)  # before prepare(), as the receiver does
    store.prepare()
    shas = [row[0] for row in outbox._db.execute("SELECT sha256 FROM outbox ORDER BY id")]
    outbox.close()
    return counts, shas, store


def test_recovery_finishes_a_rename_the_power_cut_lost(tmp_path: Path) -> None:
    outbox_file, root, target = _power_cut_state(tmp_path, [(b"new", True)], on_disk=None)
    (kept, dropped), _, store = _recover(outbox_file, root)
    assert (kept, dropped) == (1, 0)
    assert target.read_bytes() == b"new"
    assert list(store.incoming.iterdir()) == []  # the staged file became the target
    assert target.parent in store._unsynced_dirs  # and its directory is owed an fsync before publishing
    store.close()


def test_recovery_finishes_a_lost_replacement(tmp_path: Path) -> None:
    outbox_file, root, target = _power_cut_state(tmp_path, [(b"second version", True)], on_disk=b"first")
    assert _recover(outbox_file, root)[0] == (1, 0)
    assert target.read_bytes() == b"second version"


def test_a_duplicate_after_a_lost_rename_keeps_both_rows(tmp_path: Path) -> None:
    # Row 1's rename was lost; row 2 (identical bytes) was a duplicate, its staged file deleted.
    outbox_file, root, target = _power_cut_state(tmp_path, [(b"same", True), (b"same", False)], on_disk=None)
    assert _recover(outbox_file, root)[0] == (2, 0)
    assert target.read_bytes() == b"same"


def test_an_older_staged_file_never_overwrites_a_newer_placed_version(tmp_path: Path) -> None:
    outbox_file, root, target = _power_cut_state(tmp_path, [(b"old", True), (b"new", False)], on_disk=b"new")
    (kept, dropped), shas, _ = _recover(outbox_file, root)
    assert (kept, dropped) == (1, 1)
    assert target.read_bytes() == b"new"
    assert shas == [file_sha256_of(b"new", tmp_path)]


def test_a_row_whose_bytes_survived_nowhere_is_dropped(tmp_path: Path) -> None:
    outbox_file, root, target = _power_cut_state(tmp_path, [(b"lost", False)], on_disk=None)
    assert _recover(outbox_file, root)[0] == (0, 1)
    assert not target.exists()


def test_a_staged_file_with_other_bytes_is_not_rolled_forward(tmp_path: Path) -> None:
    outbox_file, root, target = _power_cut_state(tmp_path, [(b"good", True)], on_disk=None)
    (root / ".incoming" / "0" / "1-0.s.dcm").write_bytes(b"torn")
    assert _recover(outbox_file, root)[0] == (0, 1)
    assert not target.exists()


def test_an_outbox_of_the_earlier_schema_is_migrated_and_adopted(tmp_path: Path) -> None:
    old = tmp_path / "receiver-outbox-3.sqlite"
    db = sqlite3.connect(old)
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, "
        "sop_instance_uid TEXT NOT NULL, stored_path TEXT NOT NULL, sha256 TEXT NOT NULL, "
        "value BLOB NOT NULL, created REAL NOT NULL)"
    )
    db.execute("INSERT INTO outbox VALUES (1, '1.2', '1.2.1', '/x.dcm', 'ab', x'00', 0)")
    db.commit()
    db.close()

    outbox = Outbox(tmp_path / "receiver-outbox.sqlite")
    assert outbox.adopt(old) == 1
    outbox.release(outbox.add(_event("1.3", "1.3.1", tmp_path / "y.dcm", "cd"), staged=tmp_path / "s.dcm"))
    assert [entry.key for entry in outbox.pending(10)] == [b"1.2", b"1.3"]
    outbox.close()
    reopened_old_schema = Outbox(old)  # a file left with the old schema opens too
    assert reopened_old_schema.depth() == 0
    reopened_old_schema.close()


async def test_the_publisher_sends_nothing_until_the_owed_fsyncs_are_paid(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", fsync=False)
    outbox.add_record("1.2", b"event")
    attempts: list[int] = []

    def before_publish() -> None:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise OSError(5, "I/O error")

    publisher = Publisher(Settings(receiver_publish_timeout=2.0), outbox, ReceiverMetrics(), before_publish)
    producer = ScriptedProducer({})
    with pytest.raises(OSError):
        await publisher._drain_once(producer)  # type: ignore[arg-type]
    assert producer.sent == [] and outbox.depth() == 1
    assert await publisher._drain_once(producer) == 1  # type: ignore[arg-type]
    assert producer.sent == [b"event"] and outbox.depth() == 0
    outbox.close()


def test_a_receiver_restarted_after_a_power_cut_lost_its_renames_publishes_every_instance(
    receiver_factory, kafka: Settings, tmp_path: Path
) -> None:
    # Broker away: the acknowledged events stay in the outbox with both of their files' names.
    nowhere = f"kafka://127.0.0.1:{free_port()}"
    receiver = receiver_factory(broker_url=nowhere).start()
    study, series = unique_uid(), unique_uid()
    files = [write_dataset(make_dataset(study, series, instance_number=n), tmp_path / "sent") for n in range(1, 9)]
    assert storescu(receiver.port, *files).returncode == 0
    receiver.kill9()

    outbox = sqlite3.connect(receiver.root / "state" / "receiver-outbox.sqlite")
    rows = outbox.execute("SELECT stored_path, staged_path FROM outbox").fetchall()
    outbox.close()
    rolled_back = [(Path(stored), Path(staged)) for stored, staged in rows if staged.endswith(".s.dcm")]
    assert rolled_back, "no instance was placed from a spare: roll-forward placement not exercised"
    for stored, staged in rolled_back:  # what a power cut before the directory fsync may leave
        os.replace(stored, staged)

    receiver.broker_url = kafka.broker_url
    receiver.start()
    events = read_events(kafka, receiver.topic, expected=len(files))
    assert len({value["sop_instance_uid"] for _, value in events}) == len(files)
    for _, value in events:  # every announced file is in place with the bytes its event names
        assert file_sha256(Path(value["stored_path"])) == value["sha256"]
    wait_for(lambda: receiver.health()["outbox_depth"] == 0, 10, what="outbox drained")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from([b"v1", b"v2", b"v3"]), st.booleans()), min_size=1, max_size=4),
    on_disk=st.sampled_from([None, b"v1", b"v2", b"v3", b"unrelated"]),
)
def test_recovery_keeps_the_newest_version_whose_bytes_survived_and_only_its_rows(
    rows: list[tuple[bytes, bool]], on_disk: bytes | None
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        tmp_path = Path(directory)
        outbox_file, root, target = _power_cut_state(tmp_path, rows, on_disk)
        (kept, dropped), shas, store = _recover(outbox_file, root)
        store.close()
        winner = next((data for data, survived in reversed(rows) if survived or data == on_disk), None)
        if winner is None:
            assert kept == 0 and dropped == len(rows)
            assert (target.read_bytes() if target.exists() else None) == on_disk  # nothing invented
        else:
            assert target.read_bytes() == winner
            assert kept == sum(data == winner for data, _ in rows) and kept + dropped == len(rows)
            assert set(shas) == {file_sha256_of(winner, tmp_path)}
